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

Outputs under ``benchmarks/out/atmos_uk/``: ``prior/``, ``tune.csv``, ``<method>/posterior.zarr``,
``metrics.csv`` (per method), ``summary.csv``, figures.
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
    sda = {
        "solver": "ddim",
        "solver_options": {"eta": tuned["eta"]},
        "guidance": "gaussian_score",
        "guidance_options": {"gamma": tuned["gamma"]},
    }
    dps = {
        "solver": "ddim",
        "solver_options": {"eta": tuned["eta"]},
        "guidance": "dps",
        "guidance_options": {"zeta": tuned["zeta"], "alpha_power": 1.0},
    }
    steps, members = tuned["steps"], ATMOS["sampling"]["samples"]
    sda["steps"] = dps["steps"] = steps
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
    p.add_argument("phase", choices=["train", "tune", "test"])
    p.add_argument("--grib", type=Path, default=GRIB)
    args = p.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.phase == "train":
        train(args.grib)
    elif args.phase == "tune":
        tune(args.grib)
    else:
        test(args.grib)


if __name__ == "__main__":
    main()
