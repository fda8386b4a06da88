"""Atmospheric super-resolution on real ERA5: UK 2 m temperature, March 2019, 4x (issue 13).

Data: ``era5-2mt-2019-03-uk.grib`` (744 hourly 0.25° fields, 33x49; path in ``--grib``).
The prior trains on the first three weeks minus their last day (times 0-479); that last
day (480-503, every 6th hour: 4 fields) is the validation set on which γ, the DDIM η, the
step count and DPS's ζ are chosen (lowest CRPS); the test week (504-743) is super-resolved
every 12th hour (00 and 12 UTC: 20 fields, to keep CPU time sane on a shared machine) from
its 4x block-averaged field plus stations sampled from the truth at 12 fixed random sites,
3 of them held out. Every number printed here is measured by this run.

    OMP_NUM_THREADS=1 python benchmarks/atmos_uk.py train      # the prior (<= 8 min, one core)
    OMP_NUM_THREADS=1 python benchmarks/atmos_uk.py tune       # guidance settings on the validation day
    OMP_NUM_THREADS=1 python benchmarks/atmos_uk.py test       # the test week: all methods + baselines
    OMP_NUM_THREADS=1 python benchmarks/atmos_uk.py spread     # raw sampler settings' spread, validation day
    OMP_NUM_THREADS=1 python benchmarks/atmos_uk.py calibrate  # inflation + conformal: validation -> test
    OMP_NUM_THREADS=1 python benchmarks/atmos_uk.py diagnose   # spread diagnostics of those stores

``spread`` screens :data:`SPREAD_CANDIDATES` (``--only NAME ...``, ``--stride H``) on the validation
day into ``spread.csv``; ``calibrate`` fits the ensemble calibration of
:mod:`diffinv.stages.atmos.calibrate` on all 24 validation-day fields and applies it to the test
week's ``sda`` and ``coarse_only`` stores (``calibration.csv``, ``*_calibrated/``).

Outputs under ``benchmarks/out/atmos_uk/``: ``prior/``, ``tune.csv``, ``<method>/posterior.zarr``,
``metrics.csv`` (per method), ``summary.csv``, ``spread.csv``, ``calibration.csv``, figures.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffinv.config import validate_config

sys.path.insert(0, str(Path(__file__).parent))
from _common import write_csv  # noqa: E402

OUT = Path(__file__).parent / "out" / "atmos_uk"
GRIB = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "era5" / "era5-2mt-2019-03-uk.grib"

ATMOS: dict[str, Any] = {
    "enabled": True,
    "dataset": "uk",
    "data": {"variables": ["t2m"], "levels": None, "train": [0, 480], "eval": [504, 744], "eval_stride": 12},
    "prior": {
        "network": {"widths": [16, 32], "layers_per_block": 1, "norm_groups": 8},
        "clip": None,
        "train": {
            "steps": 1400,
            "batch_size": 16,
            "lr": 0.002,
            "warmup": 50,
            "prediction": "v",
            "flips": False,
        },
    },
    "observations": {
        "coarse": {"factor": 4, "noise_std": 0.02, "weight": 1.0},
        "stations": {"n_random": 12, "held_out": 3, "noise_std": 0.05, "weight": 1.0},
    },
    "sampling": {
        "samples": 8,
        "batch_size": 8,
        "steps": 10,
        "methods": [
            {
                "name": "sda",
                "solver": "ddim",
                "guidance": "gaussian_score",
                "guidance_options": {"gamma": 0.01},
            },
        ],
    },
}
VALIDATION = [480, 504]


def config(atmos: dict[str, Any]) -> dict[str, Any]:
    """A validated full config around the ``atmos`` section."""
    return validate_config({"seed": 0, "atmos": atmos}, "benchmarks/atmos_uk.py")


def train(grib: Path) -> None:
    """Train the prior (skipped when present) and print its wall time."""
    from diffinv.stages.atmos.run import train as train_atmos

    out = OUT / "prior"
    if (out / "model.safetensors").exists():
        print(f"prior exists: {out}")
        return
    start = time.perf_counter()
    train_atmos(argparse.Namespace(data=str(grib), output=str(out), quiet=True), config(ATMOS), "cpu")
    wall = time.perf_counter() - start
    info = json.loads((out / "config.json").read_text())["training"]
    print(f"prior trained in {wall:.0f} s ({info['steps']} steps, final loss {info['final_loss_ema']:.4f})")


def run_method(name: str, atmos: dict[str, Any], method: dict[str, Any], grib: Path) -> Path:
    """Sample one method into ``OUT/name/posterior.zarr`` (replaced if present)."""
    from diffinv.stages import verb_config
    from diffinv.stages.atmos.run import sample

    atmos = copy.deepcopy(atmos)
    atmos["sampling"]["methods"] = [{**method, "name": method.get("name", "m")}]
    cfg = verb_config(config(atmos), "atmos", "sample", atmos["sampling"]["methods"][0]["name"])
    out = OUT / name / "posterior.zarr"
    if out.exists():
        shutil.rmtree(out)
    args = argparse.Namespace(
        data=str(grib), prior=str(OUT / "prior"), method=method["name"], output=str(out)
    )
    sample(args, cfg, "cpu")
    return out


def posterior_row(store: Path) -> dict[str, Any]:
    """The pooled posterior scores of a store (t2m), with NFE, time and χ²/dof."""
    from diffinv.stages.atmos.evaluate import evaluate_store

    t = evaluate_store(store)
    post = t[(t.scope == "field") & (t.estimate == "posterior")].iloc[0]
    keep = (
        "rmse",
        "crps",
        "spread_skill",
        "cov90",
        "nfe",
        "wall_time_s_per_field",
        "chi2_dof_coarse",
        "chi2_dof_stations",
    )
    bicubic = t[(t.scope == "field") & (t.estimate == "bicubic")].iloc[0]
    return {**{k: float(post[k]) for k in keep}, "rmse_bicubic": float(bicubic["rmse"])}


TUNE_GRID = {"gamma": [0.03, 0.1, 0.3], "eta": [0.0, 1.0], "steps": [10, 20]}
ZETAS = (1.0, 3.0, 10.0)
NFE_SWEEP = (5, 10, 20, 40)


def _show(row: dict[str, Any]) -> None:
    print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)


def tune(grib: Path) -> dict[str, Any]:
    """Guidance settings (γ, DDIM η, steps) with the lowest CRPS on the validation day; DPS ζ likewise
    (at the chosen η and steps)."""
    val = copy.deepcopy(ATMOS)
    val["data"].update(eval=VALIDATION, eval_stride=6)
    rows = []
    for steps in TUNE_GRID["steps"]:
        for gamma in TUNE_GRID["gamma"]:
            for eta in TUNE_GRID["eta"]:
                method = {
                    "name": "sda",
                    "solver": "ddim",
                    "solver_options": {"eta": eta},
                    "guidance": "gaussian_score",
                    "guidance_options": {"gamma": gamma},
                    "steps": steps,
                }
                store = run_method("tune/sda", val, method, grib)
                row = {"method": "sda", "steps": steps, "gamma": gamma, "eta": eta, "zeta": float("nan")}
                rows.append({**row, **posterior_row(store)})
                _show(rows[-1])
    best = min(rows, key=lambda r: r["crps"])
    for zeta in ZETAS:
        method = {
            "name": "dps",
            "solver": "ddim",
            "solver_options": {"eta": best["eta"]},
            "guidance": "dps",
            "guidance_options": {"zeta": zeta, "alpha_power": 1.0},
            "steps": best["steps"],
        }
        store = run_method("tune/dps", val, method, grib)
        row = {
            "method": "dps",
            "steps": best["steps"],
            "gamma": float("nan"),
            "eta": best["eta"],
            "zeta": zeta,
        }
        rows.append({**row, **posterior_row(store)})
        _show(rows[-1])
    write_csv(OUT / "tune.csv", rows)
    best_dps = min((r for r in rows if r["method"] == "dps"), key=lambda r: r["crps"])
    chosen = {"gamma": best["gamma"], "eta": best["eta"], "steps": best["steps"], "zeta": best_dps["zeta"]}
    (OUT / "tuned.json").write_text(json.dumps(chosen))
    print(f"chosen on the validation day (lowest CRPS): {chosen}; bicubic RMSE {rows[0]['rmse_bicubic']:.4f}")
    return chosen


def _sda(gamma: float, solver: str = "ddim", steps: int = 20, **solver_options: float) -> dict[str, Any]:
    """An SDA-score method entry (coarse + stations)."""
    return {
        "name": "sda",
        "solver": solver,
        "solver_options": solver_options,
        "guidance": "gaussian_score",
        "guidance_options": {"gamma": gamma},
        "steps": steps,
    }


def _mmps(
    cg_steps: int, solver: str = "ddim", steps: int = 20, name: str = "sda", **extra: Any
) -> dict[str, Any]:
    """An MMPS method entry (Rozet et al. 2024: Tweedie-covariance likelihood, CG solve)."""
    entry = {"name": name, "solver": solver, "guidance": "mmps", "guidance_options": {"cg_steps": cg_steps}}
    return {**entry, "steps": steps, **extra}


#: Raw sampler settings screened for ensemble spread on the validation day (issue 13): name ->
#: (method entry, likelihood weight of both modalities; weight w acts as noise variance σ²/w).
SPREAD_CANDIDATES: dict[str, tuple[dict[str, Any], float]] = {
    "ddim_eta0_g0.03_s20": (_sda(0.03, eta=0.0), 1.0),
    "ddim_eta0_g0.03_s40": (_sda(0.03, steps=40, eta=0.0), 1.0),
    "ddim_eta0.5_g0.03_s20": (_sda(0.03, eta=0.5), 1.0),
    "ddim_eta0.5_g0.1_s20": (_sda(0.1, eta=0.5), 1.0),
    "ddpm_g0.03_s40": (_sda(0.03, "ddpm", 40), 1.0),
    "ddpm_g0.1_s40": (_sda(0.1, "ddpm", 40), 1.0),
    "diffpir_z0.3_g0.03_s20": (_sda(0.03, "diffpir", zeta=0.3), 1.0),
    "diffpir_z1_g0.1_s20": (_sda(0.1, "diffpir", zeta=1.0), 1.0),
    "ddim_eta0_g0.03_s20_w0.25": (_sda(0.03, eta=0.0), 0.25),
    "ddim_eta0_g0.03_s20_w0.06": (_sda(0.03, eta=0.0), 0.0625),
    "ddim_eta0_g0.01_s40": (_sda(0.01, steps=40, eta=0.0), 1.0),
    "mmps_cg3_ddim_eta0_s20": (_mmps(3), 1.0),
    "mmps_cg5_ddim_eta0_s20": (_mmps(5), 1.0),
    "mmps_cg3_ddim_eta0_s40": (_mmps(3, steps=40), 1.0),
    "mmps_cg3_ddim_eta0_s40_coarse": (_mmps(3, steps=40, name="coarse_only", modalities=["coarse"]), 1.0),
    "ddim_eta0.25_g0.03_s20": (_sda(0.03, eta=0.25), 1.0),
    "ddim_eta0.5_g0.05_s20": (_sda(0.05, eta=0.5), 1.0),
    "ddim_eta0.5_g0.03_s40": (_sda(0.03, steps=40, eta=0.5), 1.0),
    "mmps_cg3_ddpm_s20": (_mmps(3, "ddpm"), 1.0),
}


def spread(grib: Path, names: list[str], stride: int, test_week: bool = False) -> None:
    """Raw sampler settings of :data:`SPREAD_CANDIDATES` (``names``: a subset) on the validation day
    every ``stride`` hours; rows merged by name into ``spread.csv`` (RMSE, CRPS, spread-skill, ...).

    ``test_week``: run settings already chosen on the validation day on the test week instead
    (``spread_test.csv``, reporting only), and calibrate each on its validation store of ``stride``.
    """
    import pandas as pd

    from diffinv.stages.atmos.calibrate import calibrate_stores
    from diffinv.stages.atmos.evaluate import distance_table

    unknown = sorted(set(names) - set(SPREAD_CANDIDATES))
    if unknown or (test_week and not names):
        sys.exit(f"name candidates among {sorted(SPREAD_CANDIDATES)} (unknown: {unknown})")
    path = OUT / ("spread_test.csv" if test_week else "spread.csv")
    rows = {}
    if path.exists():
        rows = {(r["name"], int(r["stride"])): r for r in pd.read_csv(path).to_dict("records")}
    for name in names or list(SPREAD_CANDIDATES):
        method, weight = SPREAD_CANDIDATES[name]
        val = copy.deepcopy(ATMOS)
        if not test_week:
            val["data"].update(eval=VALIDATION, eval_stride=stride)
        for modality in ("coarse", "stations"):
            val["observations"][modality]["weight"] = weight
        start = time.perf_counter()
        validation = OUT / "spread" / f"{name}_stride{stride}" / "posterior.zarr"
        store = run_method(
            f"spread/{name}_test" if test_week else f"spread/{name}_stride{stride}", val, method, grib
        )
        row = {"name": name, "stride": stride, "weight": weight, **posterior_row(store)}
        row["wall_s"] = time.perf_counter() - start
        if test_week:
            out = OUT / "spread" / f"{name}_test_calibrated"
            table = calibrate_stores(validation, store, out / "posterior.zarr", out / "calibration.csv")
            cal = table[table.ensemble == "calibrated"].iloc[0]
            keep = ("inflation", "crps", "spread_skill", "cov90", "coverage_conformal")
            row.update({f"calibrated_{k}": float(cal[k]) for k in keep})
            near = distance_table(store)
            row["rmse_within_50km"] = float(
                near[(near.lower_km == 0) & (near.estimate == "posterior")]["rmse"].iloc[0]
            )
        rows[(name, stride)] = row
        _show(row)
        pd.DataFrame(list(rows.values())).to_csv(path, index=False)  # rows may differ in columns


def calibration(grib: Path) -> None:
    """Ensemble calibration (``diffinv.stages.atmos.calibrate``): spread inflation k and conformal
    90 % intervals fitted on the validation day (every hour: 24 fields, the tuned SDA and
    coarse-only methods), applied to the test-week stores of ``test``; raw and calibrated scores
    printed and written to ``calibration.csv``."""
    from diffinv.stages.atmos.calibrate import calibrate_stores
    from diffinv.stages.atmos.evaluate import distance_table, evaluate

    tuned = json.loads((OUT / "tuned.json").read_text())
    sda = _sda(tuned["gamma"], steps=tuned["steps"], eta=tuned["eta"])
    val = copy.deepcopy(ATMOS)
    val["data"].update(eval=VALIDATION, eval_stride=1)
    tables = []
    for name, extra in (("sda", {}), ("coarse_only", {"modalities": ["coarse"]})):
        test_store = OUT / name / "posterior.zarr"
        if not test_store.exists():
            sys.exit(f"{test_store} is missing: run 'python benchmarks/atmos_uk.py test' first")
        cal_store = run_method(f"calibration/{name}", val, {**sda, **extra, "name": name}, grib)
        out = OUT / f"{name}_calibrated" / "posterior.zarr"
        table = calibrate_stores(cal_store, test_store, out, OUT / f"{name}_calibrated" / "calibration.csv")
        near = distance_table(out)
        near = near[(near.lower_km == 0) & (near.estimate == "posterior")].iloc[0]
        tables.append(table.assign(run=name, rmse_within_50km=float(near["rmse"])))
    rows = [r for t in tables for r in t.to_dict("records")]
    write_csv(OUT / "calibration.csv", rows)
    stores = [OUT / f"{name}_calibrated" / "posterior.zarr" for name in ("sda", "coarse_only")]
    evaluate(stores, OUT / "metrics_calibrated.csv", OUT / "figures")
    for r in rows:
        print(
            f"  {r['run']:12s} {r['ensemble']:10s} RMSE {r['rmse']:.3f} K, CRPS {r['crps']:.3f} K, "
            f"spread-skill {r['spread_skill']:.3f}, 90 % member-interval coverage {r['cov90']:.3f}, "
            f"conformal 90 % coverage {r['coverage_conformal']:.3f} (width {r['width_conformal']:.3f} K), "
            f"k {r['inflation']:.3f}",
            flush=True,
        )


def diagnose() -> None:
    """Diagnostics of the spread (no sampling): the 90 % member-interval coverage of a calibrated
    8-member Gaussian ensemble; k of the validation stores with a bootstrap over their fields; per
    store, spread-skill without the 1 % widest pixels and spread against RMSE by spread quintile."""
    from diffinv.stages.atmos.calibrate import inflation_factor
    from diffinv.stages.atmos.evaluate import open_store, stacked
    from diffinv.stages.atmos.metrics import binned_spread_skill
    from diffinv.uncertainty import interval_coverage

    rng = np.random.default_rng(0)
    centre = rng.standard_normal(400_000)
    members = centre + rng.standard_normal((8, centre.size))
    cover = interval_coverage(members, centre + rng.standard_normal(centre.size), (0.9,))[0.9]
    print(f"calibrated 8-member Gaussian ensemble: 90 % member-interval coverage {cover:.3f}")

    def load(store: Path) -> tuple[np.ndarray, np.ndarray]:
        ds = open_store(store)
        return stacked(ds)[:, :, 0].astype(np.float64), stacked(ds, "_truth")[:, 0].astype(np.float64)

    for name in ("sda", "coarse_only"):
        m, t = load(OUT / "calibration" / name / "posterior.zarr")
        boot = [inflation_factor(m[i], t[i], axis=1) for i in rng.integers(0, len(t), (2000, len(t)))]
        lo, hi = np.percentile(boot, [5, 95])
        print(
            f"{name}: k {inflation_factor(m, t, axis=1):.3f} on {len(t)} validation fields, "
            f"bootstrap over the fields 5-95 % {lo:.3f}-{hi:.3f}"
        )
    stores = {
        "sda (validation day)": OUT / "calibration" / "sda" / "posterior.zarr",
        "sda (test week)": OUT / "sda" / "posterior.zarr",
        "mmps (test week)": OUT / "spread" / "mmps_cg3_ddim_eta0_s40_test" / "posterior.zarr",
    }
    for name, store in stores.items():
        m, t = load(store)
        spread, error = m.std(1, ddof=1), m.mean(1) - t
        narrow = spread <= np.quantile(spread, 0.99)
        ssr = np.sqrt(9 / 8 * np.mean(spread[narrow] ** 2) / np.mean(error[narrow] ** 2))
        print(f"{name}: spread-skill without the 1 % widest pixels {ssr:.3f}; by spread quintile:")
        print(binned_spread_skill(spread, error, bins=5, members=8).round(3).to_string(index=False))


def summary_row(name: str, store: Path, steps: int, samples: int) -> dict[str, Any]:
    """Headline scores of one test-week store (t2m, K)."""
    from diffinv.stages.atmos.evaluate import distance_table, evaluate_store

    t = evaluate_store(store)
    field, held = (
        t[t.scope == "field"].set_index("estimate"),
        t[t.scope == "held_out_stations"].set_index("estimate"),
    )
    d = distance_table(store)
    near = d[(d.lower_km == 0) & (d.estimate == "posterior")].iloc[0]
    return {
        "run": name,
        "modalities": t.modalities.iloc[0],
        "steps": steps,
        "members": samples,
        **posterior_row(store),
        "rmse_bicubic": float(field.loc["bicubic", "rmse"]),
        "rmse_conservative": float(field.loc["conservative", "rmse"]),
        "crps_bicubic": float(field.loc["bicubic", "crps"]),
        "rmse_within_50km": float(near["rmse"]),
        "points_within_50km": int(near["count"]),
        "rmse_held_out_stations": float(held.loc["posterior", "rmse"]),
        "rmse_held_out_stations_bicubic": float(held.loc["bicubic", "rmse"]),
    }


def members_subset(store: Path, m: int) -> dict[str, Any]:
    """Scores of the first ``m`` members of a store (ensemble size without resampling)."""
    from diffinv.stages.atmos.evaluate import _pool, open_store, stacked
    from diffinv.stages.atmos.metrics import field_metrics

    ds = open_store(store)
    members = np.moveaxis(stacked(ds), 1, 0)[:m]
    row = field_metrics(_pool(members), _pool(stacked(ds, "_truth")), ["t2m"]).iloc[0]
    keep = ("rmse", "crps", "spread_skill", "cov90")
    return {"run": f"sda_first{m}members", "members": m, **{k: float(row[k]) for k in keep}}


def test(grib: Path) -> None:
    """The test week: SDA (coarse + stations), coarse-only, stations-only, DPS, and SDA at other
    step counts and ensemble sizes; headline figures printed and written to ``summary.csv``."""
    from diffinv.stages.atmos.evaluate import evaluate

    tuned = json.loads((OUT / "tuned.json").read_text())
    sda = _sda(tuned["gamma"], steps=tuned["steps"], eta=tuned["eta"])
    dps = {
        "solver": "ddim",
        "solver_options": {"eta": tuned["eta"]},
        "guidance": "dps",
        "guidance_options": {"zeta": tuned["zeta"], "alpha_power": 1.0},
    }
    steps, members = tuned["steps"], ATMOS["sampling"]["samples"]
    dps["steps"] = steps
    runs = [
        ("sda", {**sda, "name": "sda"}, steps, members),
        ("coarse_only", {**sda, "name": "coarse_only", "modalities": ["coarse"]}, steps, members),
        ("stations_only", {**sda, "name": "stations_only", "modalities": ["stations"]}, steps, members),
        ("dps", {**dps, "name": "dps"}, steps, members),
    ]
    runs += [
        (f"sda_steps{n}", {**sda, "name": f"sda_steps{n}", "steps": n}, n, members)
        for n in NFE_SWEEP
        if n != steps
    ]
    rows, stores = [], []
    for name, method, n_steps, n_members in runs:
        store = run_method(name, ATMOS, method, grib)
        stores.append(store)
        rows.append(summary_row(name, store, n_steps, n_members))
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rows[-1].items()}, flush=True)
    rows.append(members_subset(stores[0], 4))
    print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rows[-1].items()}, flush=True)
    write_csv(OUT / "summary.csv", rows)
    evaluate(stores[:4], OUT / "metrics.csv", OUT / "figures")
    by = {r["run"]: r for r in rows}
    s, c = by["sda"], by["coarse_only"]
    print(f"test week, {s['members']} members, {s['steps']} DDIM steps, tuned {tuned}:")
    print(
        f"  RMSE posterior mean {s['rmse']:.3f} K vs bicubic {s['rmse_bicubic']:.3f} K: "
        f"{100 * (1 - s['rmse'] / s['rmse_bicubic']):.1f} % lower (target >= 20 %)"
    )
    print(f"  spread-skill {s['spread_skill']:.3f} (target 0.8-1.2); 90 % coverage {s['cov90']:.3f}")
    print(f"  CRPS {s['crps']:.3f} K vs coarse-only posterior {c['crps']:.3f} K")
    print(
        f"  RMSE within 50 km of the conditioning stations: {s['rmse_within_50km']:.3f} K with stations, "
        f"{c['rmse_within_50km']:.3f} K without ({s['points_within_50km']} grid points x times)"
    )
    print(
        f"  held-out stations RMSE {s['rmse_held_out_stations']:.3f} K "
        f"(bicubic {s['rmse_held_out_stations_bicubic']:.3f} K)"
    )
    print(
        f"  time per field {s['wall_time_s_per_field']:.1f} s on one CPU core ({s['nfe']:.0f} NFE per member)"
    )


def main() -> None:
    torch.set_num_threads(1)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("phase", choices=["train", "tune", "spread", "test", "calibrate", "diagnose"])
    p.add_argument("--grib", type=Path, default=GRIB)
    p.add_argument("--only", nargs="*", default=[], help="spread: candidates to run (default: all)")
    p.add_argument("--stride", type=int, default=6, help="spread: validation-day stride in hours")
    p.add_argument("--test-week", action="store_true", help="spread: run chosen candidates on the test week")
    args = p.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.phase == "train":
        train(args.grib)
    elif args.phase == "tune":
        tune(args.grib)
    elif args.phase == "spread":
        spread(args.grib, args.only, args.stride, args.test_week)
    elif args.phase == "test":
        test(args.grib)
    elif args.phase == "calibrate":
        calibration(args.grib)
    else:
        diagnose()


if __name__ == "__main__":
    main()
