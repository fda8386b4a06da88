"""The whole demo DAG on a tiny config, through the real Snakefile and CLI."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from diffinv.io.store import get_provenance, open_zarr

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def snakemake(workdir: Path, *args: str, extra_config: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    configs = [str(ROOT / "tests/integration/tiny.yaml")] + ([str(extra_config)] if extra_config else [])
    cmd = [
        str(BIN / "snakemake"),
        "-s",
        str(ROOT / "Snakefile"),
        "-d",
        str(workdir),
        "--cores",
        "2",
        "--workflow-profile",
        str(ROOT / "workflow/profiles/default"),
        *args,
        "--configfile",
        *configs,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


@pytest.fixture(scope="module")
def run(demo_run):
    """The session's tiny demo run (tests/integration/conftest.py), shared with the report test."""
    return demo_run


def test_dag_writes_posteriors_following_the_zarr_contract(run):
    for method in ("dpmpp_2m-dds", "ddim-dps"):
        ds = open_zarr(run / f"results/mri/tiny/4x/{method}/posterior.zarr")
        assert (
            ds["samples"].dims == ("case", "sample", "y", "x")
            and ds.sizes["sample"] == 4
            and ds.sizes["case"] == 2
        )
        for var in (
            "mean",
            "std",
            "truth",
            "mask",
            "zero_filled",
            "no_prior",
            "cs",
            "hallucination_score",
            "relative_residual",
        ):
            assert var in ds, var
        assert ds["y"].attrs["units"] == "pixel" and "long_name" in ds["std"].attrs
        prov = get_provenance(ds)
        assert prov["config"]["mri"]["sampling"]["steps"] == 4 and "dataset" not in prov["config"]["mri"]
        assert (ds["nfe"].values == 4).all() and (ds["wall_time_s"].values > 0).all()
        assert prov["precision"] == "fp32" and prov["dtype"] == "float32"
        assert (
            prov["method"]["solver"] == method.split("-")[0]
            and prov["device"] == "cpu"
            and prov["git_commit"]
        )
        figures = sorted((run / f"results/mri/tiny/4x/{method}/figures").glob("*.png"))
        assert len(figures) == 2
    summary = pd.read_csv(run / "results/mri/tiny/summary.csv")
    # tiny data are multi-coil: no-prior differs from zero-filled and keeps its row
    assert set(summary["reconstruction"]) == {"posterior_mean", "zero_filled", "no_prior", "cs"}
    assert summary["psnr"].notna().all() and (summary["cases"] == 2).all()
    posterior = summary[summary["reconstruction"] == "posterior_mean"].set_index("method")
    for part in ("", "complex_", "object_", "background_"):
        for level in (50, 90, 95):
            assert posterior[f"coverage_{part}{level}"].between(0, 1).all(), (part, level)
    assert posterior["support_fraction"].between(0, 1).all() and (posterior["crps"] > 0).all()
    assert (posterior["spread_skill"] > 0).all()


def test_calibration_stage_writes_calibrated_bounds_from_held_out_slices(run):
    """tiny.yaml: 4 validation slices, the first 2 evaluated, slices 2-3 calibrate dpmpp_2m-dds."""
    import numpy as np

    folder = run / "results/mri/tiny/4x/dpmpp_2m-dds"
    cal, ev = open_zarr(folder / "calibration_samples.zarr"), open_zarr(folder / "posterior.zarr")
    assert cal.sizes["case"] == 2 and not set(cal["case"].values) & set(ev["case"].values)
    assert "cs" not in cal and "truth" in cal
    out = open_zarr(folder / "calibrated.zarr")
    assert out["lower"].dims == ("case", "y", "x", "channel") and out.sizes["case"] == 2
    assert all(v in out for v in ("lower_raw", "upper_raw", "lower", "upper"))
    record = json.loads(out.attrs["calibration"])
    assert record["calibration_cases"] == 2 and record["calibration_pixels"] == 2 * 2 * 16 * 16
    assert record["level"] == 0.9 and record["cases"] == [str(c) for c in cal["case"].values]
    table = pd.read_csv(folder / "calibration.csv")
    primary = table[table["primary"]].iloc[0]
    assert primary["lambda"] == pytest.approx(record["lam"], rel=1e-5) and primary["level"] == 0.9
    truth = np.stack([ev["truth"].values.real, ev["truth"].values.imag], axis=-1)
    inside = (truth >= out["lower"].values) & (truth <= out["upper"].values)
    assert inside.mean() == pytest.approx(primary["coverage_calibrated"], abs=1e-6)
    assert (folder / "calibration.png").stat().st_size > 0
    assert not (run / "results/mri/tiny/4x/ddim-dps/calibration.csv").exists()
    summary = pd.read_csv(run / "results/mri/tiny/summary.csv")
    row = summary[(summary["method"] == "dpmpp_2m-dds") & (summary["reconstruction"] == "posterior_mean")]
    assert row["calibration_lambda"].iloc[0] == pytest.approx(primary["lambda"], rel=1e-3)
    assert row["coverage_complex_calibrated"].iloc[0] == pytest.approx(
        primary["coverage_calibrated"], abs=1e-3
    )
    # the raw channel coverage at the calibration level is the evaluation's coverage_complex_90
    assert row["coverage_complex_raw"].iloc[0] == pytest.approx(row["coverage_complex_90"].iloc[0], abs=1e-3)
    other = summary[summary["method"] == "ddim-dps"]
    assert other["calibration_lambda"].isna().all()
    assert (run / "results/mri/tiny/prior/loss.png").stat().st_size > 0
    ads = open_zarr(run / "results/ads/tiny/4x/ads.zarr")
    assert ads["samples"].dims == ("strategy", "case", "sample", "y", "x") and "acquisition_order" in ads
    assert set(pd.read_csv(run / "results/ads/tiny/summary.csv")["strategy"]) == {
        "ads",
        "random",
        "equispaced",
        "variable_density",
        "greedy",
    }
    assert len(list((run / "results/ads/tiny/4x/figures").glob("*.png"))) == 1
    for source in ("era5", "igra", "ct"):
        assert get_provenance(open_zarr(run / f"results/data/{source}.zarr"))
    # demo inputs: every ingested store says it holds synthetic data
    for store in [f"data/{s}.zarr" for s in ("era5", "igra", "ct")] + ["mri/tiny/data/eval.zarr"]:
        assert "SYNTHETIC" in open_zarr(run / "results" / store).attrs["comment"], store


def test_ct3d_stage_writes_volumes_with_baselines_metrics_and_figures(run):
    """Tiny CT store: 3 volumes of 4 slices, 2 train the prior, the third is reconstructed."""
    import numpy as np

    ct = open_zarr(run / "results/data/ct.zarr")
    for task, views in (("sv4", 4), ("la90", 6)):  # 12 views over 180 degrees: 6 inside 90
        for method in ("fast", "slicewise"):
            ds = open_zarr(run / f"results/ct3d/tiny/{task}/{method}/posterior.zarr")
            assert ds["samples"].dims == ("volume", "sample", "z", "y", "x")
            assert ds.sizes["volume"] == 1 and ds.sizes["sample"] == 2 and ds.sizes["z"] == 4
            assert ds.attrs["views"] == views and len(ds.attrs["angles_deg"]) == views
            np.testing.assert_array_equal(ds["reference"].values[0], ct["truth"].values[8:12])
            assert list(ds["z"].values) == [8, 9, 10, 11]
            assert ds["x"].attrs["units"] == "m" and ds["mean"].attrs["units"].startswith("1")
            assert float(ds["nfe"].values[0]) == 3.0
            assert get_provenance(ds)["method"]["guidance"] == ("admm_tv" if method == "fast" else "dds")
            own = task == "la90" and method == "fast"  # the task's override reaches its job alone
            start = {"t_start": 0.5, "init": "tv"} if own else {"t_start": None, "init": "zero"}
            assert json.loads(ds.attrs["sampling_grid"]) == {"steps": 3, "grid": "logsnr", **start}
            assert len(list((run / f"results/ct3d/tiny/{task}/{method}/figures").glob("*.png"))) == 1
    summary = pd.read_csv(run / "results/ct3d/tiny/summary.csv")
    assert set(summary["method"]) == {"fast", "slicewise", "-"}
    assert set(summary["view"]) == {"axial", "coronal", "sagittal"}
    assert len(summary) == 2 * (2 + 2) * 3  # tasks x (2 methods + FBP + TV) x views
    assert summary["psnr"].notna().all() and (summary["ssim"] <= 1).all()
    assert (run / "results/ct3d/tiny/summary.html").stat().st_size > 0


def test_atmos_stage_writes_ensembles_baselines_metrics_and_figures(run):
    """Demo ERA5 store: t at 850 and 500 hPa, 2 evaluation times, 2 members, two methods."""
    import numpy as np

    for method, modalities in (("sda", "coarse,stations"), ("coarse_only", "coarse")):
        ds = open_zarr(run / f"results/atmos/tiny/{method}/posterior.zarr")
        assert ds["t"].dims == ("time", "member", "level", "latitude", "longitude")
        assert ds.sizes["time"] == 2 and ds.sizes["member"] == 2 and list(ds["level"].values) == [850, 500]
        np.testing.assert_allclose(ds["t_mean"].values, ds["t"].values.mean(1), rtol=1e-5)
        assert ds["t"].attrs["units"] == ds["t_truth"].attrs["units"] and ds.attrs["modalities"] == modalities
        assert int(ds["held_out"].sum()) == 2 and ds.sizes["station"] == 6
        assert get_provenance(ds)["config"]["atmos"]["sampling"]["steps"] == 2
        assert len(list((run / f"results/atmos/tiny/{method}/figures").glob("*maps.png"))) == 2
    # ensemble calibration at the odd times 13 and 15 (12 and 14 are evaluated)
    cal = open_zarr(run / "results/atmos/tiny/sda/calibration_samples.zarr")
    ev = open_zarr(run / "results/atmos/tiny/sda/posterior.zarr")
    assert list(cal["time"].values) == list(
        open_zarr(run / "results/data/era5.zarr")["time"].values[[13, 15]]
    )
    calibrated = open_zarr(run / "results/atmos/tiny/sda_calibrated/posterior.zarr")
    assert calibrated.attrs["method"] == "sda_calibrated" and list(calibrated["time"].values) == list(
        ev["time"].values
    )
    np.testing.assert_allclose(calibrated["t"].values.mean(1), ev["t_mean"].values, rtol=1e-5, atol=1e-4)
    table = pd.read_csv(run / "results/atmos/tiny/sda_calibrated/calibration.csv")
    assert set(table["ensemble"]) == {"raw", "calibrated"} and (table["calibration_times"] == 2).all()
    summary = pd.read_csv(run / "results/atmos/tiny/summary.csv")
    field = summary[summary["scope"] == "field"]
    assert set(field["method"]) == {"sda", "coarse_only", "sda_calibrated"}
    assert set(field["estimate"]) == {"posterior", "bicubic", "conservative"}
    assert field["rmse"].notna().all() and (field["rmse"] > 0).all()
    assert (run / "results/atmos/tiny/summary.html").stat().st_size > 0


def test_fwd_stage_samples_slices_from_a_model_trained_on_projections(run):
    """Tiny CT store: the model trains on the sinograms of 2 volumes, the third is sampled."""
    import numpy as np

    ct = open_zarr(run / "results/data/ct.zarr")
    ds = open_zarr(run / "results/fwd/tiny/posterior.zarr")
    assert ds["samples"].dims == ("volume", "sample", "z", "y", "x") and ds.sizes["sample"] == 2
    np.testing.assert_array_equal(ds["reference"].values[0], ct["truth"].values[8:12])
    np.testing.assert_allclose(ds["mean"].values, ds["samples"].values.mean(1), rtol=1e-5, atol=1e-7)
    assert len(ds.attrs["context_views"]) == 4 and float(ds["nfe"].values[0]) > 0
    assert get_provenance(ds)["config"]["fwd"]["sampling"]["steps"] == 3
    metrics = pd.read_csv(run / "results/fwd/tiny/metrics.csv")
    assert set(metrics["reconstruction"]) >= {"posterior_mean", "fbp"} and metrics["psnr"].notna().all()
    assert (run / "results/fwd/tiny/model/loss.png").stat().st_size > 0


def _scheduled(out: str) -> set[str]:
    """Rule names in the job-stats table of a dry run."""
    table = out.split("Job stats:", 1)[1] if "Job stats:" in out else ""
    return {m.group(1) for m in re.finditer(r"^(\w+)\s+\d+\s*$", table, re.M)} - {"total", "job"}


UPSTREAM = {
    "demo_mri",
    "ingest_mri",
    "demo_era5",
    "demo_igra",
    "demo_ct",
    "ingest_era5",
    "ingest_igra",
    "ingest_ct",
}


@pytest.mark.parametrize(
    "edit,reruns,spared",
    [
        (
            {"mri": {"sampling": {"steps": 5}}},
            {
                "sample_mri",
                "sample_calibration_mri",
                "calibrate_mri",
                "evaluate_mri",
                "summarise_mri",
                "ads_mri",
                "all",
            },
            UPSTREAM | {"train_prior_mri"},
        ),
        (
            {"mri": {"calibration": {"level": 0.8}}},
            {"calibrate_mri", "summarise_mri", "all"},
            UPSTREAM | {"train_prior_mri", "sample_mri", "sample_calibration_mri", "evaluate_mri", "ads_mri"},
        ),
        (
            {"ads": {"particles": 3}},
            {"ads_mri", "ads_evaluate", "ads_summary", "all"},
            UPSTREAM | {"train_prior_mri", "sample_mri", "evaluate_mri"},
        ),
        (
            {"mri": {"prior": {"train": {"steps": 21}}}},
            {"train_prior_mri", "sample_mri", "ads_mri", "all"},
            UPSTREAM | {"train_prior_ct3d", "sample_ct3d"},
        ),
        (
            {"ct3d": {"sampling": {"steps": 4}}},
            {"sample_ct3d", "evaluate_ct3d", "summarise_ct3d", "all"},
            UPSTREAM | {"train_prior_ct3d", "train_prior_mri", "sample_mri", "ads_mri"},
        ),
        (
            {"ct3d": {"prior": {"train": {"steps": 21}}}},
            {"train_prior_ct3d", "sample_ct3d", "all"},
            UPSTREAM | {"train_prior_mri", "sample_mri", "ads_mri"},
        ),
        (
            {
                "mri": {
                    "sampling": {
                        "methods": [
                            {"solver": "dpmpp_2m", "guidance": "dds"},
                            {"solver": "ddim", "guidance": "dps"},
                        ]
                    }
                }
            },
            {"sample_mri", "all"},
            UPSTREAM | {"train_prior_mri", "ads_mri"},
        ),
        (
            {"atmos": {"sampling": {"steps": 3}}},
            {"sample_atmos", "evaluate_atmos", "summarise_atmos", "all"},
            UPSTREAM | {"train_prior_atmos", "train_prior_mri", "sample_ct3d", "train_fwd", "sample_fwd"},
        ),
        (
            {"atmos": {"calibration": {"level": 0.8}}},
            {"calibrate_atmos", "summarise_atmos", "all"},
            UPSTREAM | {"train_prior_atmos", "sample_atmos", "train_prior_mri", "sample_ct3d", "sample_fwd"},
        ),
        (
            {"fwd": {"sampling": {"steps": 4}}},
            {"sample_fwd", "evaluate_fwd", "all"},
            UPSTREAM | {"train_fwd", "train_prior_ct3d", "sample_ct3d", "train_prior_atmos", "sample_atmos"},
        ),
    ],
    ids=[
        "sampling-key",
        "calibration-key",
        "ads-key",
        "prior-key",
        "ct3d-sampling-key",
        "ct3d-prior-key",
        "one-method",
        "atmos-sampling-key",
        "atmos-calibration-key",
        "fwd-sampling-key",
    ],
)
def test_an_edit_reruns_only_the_jobs_it_affects(run, tmp_path, edit, reruns, spared):
    """Each job's params hold only its config paths: an edit reschedules what depends on it."""
    override = tmp_path / "edit.yaml"
    override.write_text(json.dumps(edit))
    dry = snakemake(run, "--dry-run", extra_config=override)
    out = dry.stdout + dry.stderr
    assert dry.returncode == 0, out[-3000:]
    scheduled = _scheduled(out)
    assert reruns <= scheduled and not (spared & scheduled), scheduled


def test_rerun_reuses_everything_and_report_builds(run):
    again = snakemake(run, "--dry-run")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
    report = snakemake(run, "--report", str(run / "report.zip"))
    assert report.returncode == 0, report.stderr[-3000:]
    assert (run / "report.zip").stat().st_size > 10_000


def test_lint_and_format_are_clean():
    lint = subprocess.run(
        [str(BIN / "snakemake"), "--lint", "-s", str(ROOT / "Snakefile"), "-d", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert lint.returncode == 0, lint.stdout[-3000:] + lint.stderr[-3000:]
    fmt = subprocess.run(
        [str(BIN / "snakefmt"), "--check", str(ROOT / "Snakefile"), str(ROOT / "workflow/rules")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert fmt.returncode == 0, fmt.stderr[-3000:]


def test_user_checkpoint_skips_training(run, tmp_path):
    """Pointing prior.checkpoint at a folder removes the training job from the DAG."""
    mine = shutil.copytree(run / "results/mri/tiny/prior", tmp_path / "my_checkpoint")
    override = tmp_path / "checkpoint.yaml"
    override.write_text(json.dumps({"mri": {"prior": {"checkpoint": str(mine)}}}))
    dry = snakemake(run, "--dry-run", "--forceall", extra_config=override)
    out = dry.stdout + dry.stderr
    assert dry.returncode == 0, out[-3000:]
    assert "train_prior_mri" not in out and "sample_mri" in out


def notebook_text(name: str, variable: str, value: Path) -> str:
    """The printed output of ``notebooks/{name}``, executed headless with ``variable=value`` set."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    os.environ[variable] = str(value)
    try:
        NotebookClient(
            nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}
        ).execute()
    finally:
        del os.environ[variable]
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def test_uncertainty_notebook_runs_headless_on_the_dag_output(run):
    text = notebook_text(
        "uncertainty.ipynb", "DIFFINV_POSTERIOR", run / "results/mri/tiny/4x/dpmpp_2m-dds/posterior.zarr"
    )
    assert "interval covers" in text and "RMSE / std ratio" in text
    # the notebook's coverage is the summary's (each case's intervals against its own truth)
    summary = pd.read_csv(run / "results/mri/tiny/summary.csv")
    row = summary[
        (summary["method"] == "dpmpp_2m-dds") & (summary["reconstruction"] == "posterior_mean")
    ].iloc[0]
    parts = {"magnitude": "", "object": "object_", "background": "background_", "complex": "complex_"}
    for part, column in parts.items():
        for level in (50, 90, 95):
            shown = float(re.search(rf"{part}: {level}% interval covers\s+([\d.]+)%", text).group(1))
            # printed to 0.01 percentage points, the summary to 4 significant digits
            expected = 100 * row[f"coverage_{column}{level}"]
            assert abs(shown - expected) < 0.011, (part, level, shown, expected)
    assert "calibration_lambda" in row and re.search(r"calibrated at 90%: lambda ([\d.]+)", text)
    shown = float(re.search(r"calibrated at 90%: lambda ([\d.]+)", text).group(1))
    assert shown == pytest.approx(row["calibration_lambda"], rel=5e-3)


def test_atmos_notebook_shows_the_stage_numbers_on_the_dag_output(run):
    """notebooks/atmos_ensemble.ipynb runs headless; its RMSE by distance to the nearest station is
    the stage's metrics_distance.csv, with and without stations."""
    text = notebook_text("atmos_ensemble.ipynb", "DIFFINV_ATMOS_RUN", run / "results/atmos/tiny")
    rows = re.findall(
        r"^\s*(with stations|coarse only)\s+(t\d+)\s+([\d.]+)\s+([\d.inf]+)\s+(\d+)\s+([\d.na]+)", text, re.M
    )
    assert len(rows) == 2 * 2 * 4, text[-3000:]  # ensembles x channels x distance bins
    for name, method in (("with stations", "sda"), ("coarse only", "coarse_only")):
        table = pd.read_csv(run / f"results/atmos/tiny/{method}/metrics_distance.csv")
        table = table[table["estimate"] == "posterior"]
        for ensemble, channel, lower, _, points, rmse in rows:
            if ensemble != name:
                continue
            expected = table[(table["channel"] == channel) & (table["lower_km"] == float(lower))].iloc[0]
            assert int(points) == expected["count"]
            if expected["count"]:
                assert float(rmse) == pytest.approx(expected["rmse"], abs=6e-5)  # printed to 4 decimals
    assert re.search(r"t850 within 50 km: spread [\d.na]+ with stations, [\d.na]+ without", text)


def test_bad_config_stops_the_workflow_with_the_key_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("mri:\n  sampling:\n    stepz: 3\n")
    dry = snakemake(tmp_path, "--dry-run", extra_config=bad)
    assert dry.returncode != 0
    assert (
        "mri.sampling: Additional properties are not allowed ('stepz' was unexpected)"
        in dry.stdout + dry.stderr
    )
