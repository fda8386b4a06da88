"""The ct3d beamline workflow on a REAL raw scan, through the CLI: ingest -> train -> sample -> evaluate.

Diamond K11 DIAD k11-18014 (../shared/data/real/ct/httomo_k11_diad, see PROVENANCE.md): 3001
projections of 22 rows x 26 columns over 90..270 deg, 100 flats, 100 darks, no ground truth.
The config is config/examples/ct_beamline_diad.yaml, shrunk to a few training and sampling
steps. The values are checked against the NeXus file itself: angles, flat/dark-corrected line
integrals, and the dense-FBP reference recomputed with :func:`diffinv.operators.ct.fbp`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from diffinv.io.store import open_zarr
from diffinv.operators.ct import ParallelBeamCT, fbp

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config/examples/ct_beamline_diad.yaml"
pytestmark = pytest.mark.slow  # about 30-40 s on one core: four CLI processes

VIEWS = 8  # task sv8 of the example config
EVAL_ROWS = (11, 22)  # the evaluation volume: rows 11-21 (rows 0-10 train the prior)


@pytest.fixture(scope="module")
def nexus(real_data_root: Path) -> Path:
    path = real_data_root / "ct/httomo_k11_diad/k11-18014.nxs"
    if not path.is_file() or not (path.parent / "k11-18014").is_dir():
        pytest.skip(f"{path} (with its k11-18014/ folder of external links) not present")
    return path


def _cli(cwd: Path, *args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "diffinv", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"diffinv {' '.join(args)}:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def run(nexus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ingest -> train (20 steps) -> sample sv8 with admm_tv (4 steps, 2 samples) -> evaluate."""
    tmp = tmp_path_factory.mktemp("diad")
    cfg = yaml.safe_load(CONFIG.read_text())
    ct = cfg["ct3d"]
    assert ct["data"]["reference"] == "dense_fbp" and ct["data"]["train_on"] == "dense_fbp"
    ct["prior"]["network"]["widths"] = [8, 16]
    ct["prior"]["train"].update(steps=20, warmup=5)
    ct["sampling"].update(steps=4, samples=2, batch_size=2)
    ct["baselines"]["tv"]["lambdas"] = [0.1]  # the grid's choice on this scan (skip the search)
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    common = ("--config", "cfg.yaml", "--threads", "1")
    _cli(tmp, "ingest", "ct", str(nexus), "-o", "ct.zarr")
    _cli(tmp, "train", "ct3d", "--data", "ct.zarr", "-o", "prior", "--quiet", *common)
    job = ("--data", "ct.zarr", "--prior", "prior", "--task", "sv8", "--method", "admm_tv", "-o", "sv8.zarr")
    _cli(tmp, "sample", "ct3d", *job, *common)
    _cli(tmp, "ct3d-evaluate", "sv8.zarr", "--metrics", "sv8.csv", "--figures", "figures")
    return tmp


@pytest.fixture(scope="module")
def raw(nexus: Path) -> dict[str, np.ndarray]:
    """Projection angles (deg) and flat/dark-corrected line integrals straight from the NeXus file."""
    with h5py.File(nexus) as f:
        key = np.asarray(f["entry/instrument/imaging/image_key"])
        theta = np.asarray(f["entry/imaging/gts_theta_value"], np.float64)
        frames = np.asarray(f["entry/imaging/data"], np.float64)  # (frame, row, column)
    flat, dark = frames[key == 1].mean(0), frames[key == 2].mean(0)
    line = -np.log((frames[key == 0] - dark) / (flat - dark))  # (angle, row, column)
    return {"angles_deg": theta[key == 0], "sinogram": line.transpose(1, 0, 2)}  # (row, angle, column)


def test_store_holds_the_nexus_angles_and_line_integrals(run: Path, raw: dict[str, np.ndarray]) -> None:
    store = open_zarr(run / "ct.zarr")
    assert dict(store.sizes) == {"projection": 22, "angle": 3001, "detector": 26}
    np.testing.assert_allclose(np.degrees(store["angle"].values), raw["angles_deg"], rtol=0, atol=1e-9)
    assert 89.9 < raw["angles_deg"][0] < 90.1 and 269.9 < raw["angles_deg"][-1] < 270.1
    np.testing.assert_allclose(store["sinogram"].values, raw["sinogram"], rtol=0, atol=2e-5)
    assert store.attrs["detector_units"] == "pixel"


def test_sparse_views_are_nexus_angles_evenly_over_the_scan(run: Path, raw: dict[str, np.ndarray]) -> None:
    ds = open_zarr(run / "sv8.zarr")
    picked = np.floor(np.arange(VIEWS) * 3001 / VIEWS).astype(int)  # every 375th view from the first
    assert ds.attrs["views"] == VIEWS
    np.testing.assert_allclose(ds.attrs["angles_deg"], raw["angles_deg"][picked], rtol=0, atol=1e-4)


def test_reference_is_the_fbp_of_all_views_and_fbp_of_the_task_its_views(
    run: Path, raw: dict[str, np.ndarray]
) -> None:
    ds = open_zarr(run / "sv8.zarr").isel(volume=0).load()
    sino = torch.from_numpy(raw["sinogram"][slice(*EVAL_ROWS)].astype(np.float32))
    angles = np.radians(raw["angles_deg"])

    def recon(views: np.ndarray) -> np.ndarray:
        # 26x26 grid of 1-pixel voxels, rotation axis at the detector centre, Shepp-Logan filter
        op = ParallelBeamCT((26, 26), angles[views], n_det=26, pixel_size=1.0, det_offset=0.0)
        return fbp(sino[:, views], op, "shepp-logan").numpy()

    dense = recon(np.arange(3001))
    scale = float(np.abs(dense).max())
    np.testing.assert_allclose(ds["reference"].values, dense, rtol=0, atol=1e-4 * scale)
    picked = np.floor(np.arange(VIEWS) * 3001 / VIEWS).astype(int)
    np.testing.assert_allclose(ds["fbp"].values, recon(picked), rtol=0, atol=1e-4 * scale)
    assert list(ds["z"].values) == list(range(*EVAL_ROWS))


def test_metrics_fbp_is_worse_than_the_reference_and_tv_beats_it(run: Path) -> None:
    m = pd.read_csv(run / "sv8.csv").set_index(["reconstruction", "view"])
    assert set(m.index.get_level_values("view")) == {"axial", "coronal", "sagittal"}
    for view in ("axial", "coronal", "sagittal"):
        psnr_fbp, psnr_tv = m.loc[("fbp", view), "psnr"], m.loc[("tv", view), "psnr"]
        assert np.isfinite(psnr_fbp) and psnr_fbp < 40  # 8 of 3001 views: measured about 12 dB
        assert psnr_tv > psnr_fbp + 3  # measured about 21 vs 12 dB
        assert np.isfinite(m.loc[("posterior_mean", view), "psnr"])
    # the CSV's axial PSNR is the mean over z of 10 log10(range^2 / MSE), range of the reference
    ds = open_zarr(run / "sv8.zarr").isel(volume=0).load()
    ref, est = ds["reference"].values.astype(np.float64), ds["fbp"].values.astype(np.float64)
    mse = ((ref - est) ** 2).mean(axis=(1, 2))
    psnr = np.mean(10 * np.log10((ref.max() - ref.min()) ** 2 / mse))
    assert abs(m.loc[("fbp", "axial"), "psnr"] - psnr) < 1e-3
    assert len(list((run / "figures").glob("*.png"))) == 1


def test_outputs_carry_cf_style_attributes(run: Path) -> None:
    ds = open_zarr(run / "sv8.zarr")
    assert ds.attrs["voxel_size"] == [1.0, 1.0, 1.0] and "pixel" in ds.attrs["voxel_size_units"]
    assert len(ds.attrs["angles_deg"]) == VIEWS and ds.attrs["reference"] == "dense_fbp"
    for var in ("samples", "mean", "std", "reference", "fbp", "tv"):
        assert ds[var].attrs["units"] == "pixel^-1" and ds[var].attrs["long_name"], var
    assert ds["x"].attrs["units"] == ds["y"].attrs["units"] == "pixel"
    assert ds.sizes["sample"] == 2 and ds["samples"].dims == ("volume", "sample", "z", "y", "x")
