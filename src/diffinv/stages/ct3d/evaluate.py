"""Evaluation of 3D CT stores: PSNR/SSIM per axial, coronal and sagittal view, uncertainty
diagnostics, figures of three orthogonal views, and the summary over tasks and methods.

Per view, PSNR and SSIM are means over the 2D slices along that axis (axial: z, coronal: y,
sagittal: x), as DiffusionMBIR reports them (Chung et al. 2023, Tab. 1), with the data range
of the reference volume (max − min) for every slice, over the slices that hold some of the
object (reference above 1 % of that range somewhere in the slice). Slices of empty space
would otherwise dominate the mean: their PSNR (40–50 dB) measures only the residual
background and rewards any method that returns exact zeros there. ``psnr_all_slices`` keeps
the mean over every slice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from skimage.metrics import structural_similarity

from diffinv.errors import InputError
from diffinv.io.store import atomic_path, open_zarr
from diffinv.uncertainty import interval_coverage

VIEWS = {"axial": 0, "coronal": 1, "sagittal": 2}
RECONSTRUCTIONS = {"posterior_mean": "mean", "fbp": "fbp", "tv": "tv"}
COVERAGE_LEVELS = (0.5, 0.9, 0.95)


OBJECT_LEVEL = 0.01  # a slice holds the object where |reference - min| exceeds 1 % of the range


def view_metrics(reference: np.ndarray, estimate: np.ndarray, axis: int) -> dict[str, float]:
    """Mean PSNR and SSIM over the object's slices of (z, y, x) volumes along ``axis`` (module
    docstring), data range of the reference; ``psnr_all_slices`` over every slice."""
    rng = float(reference.max() - reference.min())
    ref, est = np.moveaxis(reference, axis, 0), np.moveaxis(estimate, axis, 0)
    mse = ((ref - est) ** 2).reshape(len(ref), -1).mean(1)
    psnr_all = 10 * np.log10(rng**2 / np.maximum(mse, 1e-30))
    holds = (np.abs(ref - reference.min()) > OBJECT_LEVEL * rng).reshape(len(ref), -1).any(1)
    if not holds.any():
        holds[:] = True
    ref, est, psnr = ref[holds], est[holds], psnr_all[holds]
    side = min(ref.shape[1:])
    if side < 3:
        raise InputError("volume", f"slices of {side} pixels are too small for SSIM", "use volumes >= 3")
    win = min(7, side if side % 2 else side - 1)  # skimage's default 7, odd and within the slice
    ssim = [structural_similarity(r, e, data_range=rng, win_size=win) for r, e in zip(ref, est)]
    return {
        "psnr": float(psnr.mean()),
        "ssim": float(np.mean(ssim)),
        "psnr_all_slices": float(psnr_all.mean()),
        "object_slices": int(holds.sum()),
    }


def evaluate_store(store: Path) -> pd.DataFrame:
    """One row per (volume, reconstruction, view); posterior rows add coverage and diagnostics."""
    ds = open_zarr(store)
    if ds.attrs.get("stage") != "ct3d":
        raise InputError(store, "not a ct3d store", "pass a store written by 'diffinv sample ct3d'")
    rows = []
    for i, volume in enumerate(ds["volume"].values):
        v = ds.isel(volume=i).load()
        ref = v["reference"].values.astype(np.float64)
        diagnostics: dict[str, float] = {}
        samples = v["samples"].values
        cover = interval_coverage(samples, ref, COVERAGE_LEVELS)
        diagnostics.update({f"coverage_{int(100 * k)}": c for k, c in cover.items()})
        err = v["mean"].values - ref
        rmse = float(np.sqrt((err**2).mean()))
        spread = float(np.sqrt((v["std"].values ** 2).mean()))
        m = samples.shape[0]
        diagnostics.update(
            samples=m,
            rmse=rmse,
            mean_std=float(v["std"].values.mean()),
            spread_skill=float(np.sqrt((m + 1) / m) * spread / max(rmse, 1e-30)),
            hallucination_score=float(v["hallucination_score"].mean()),
            relative_residual=float(v["relative_residual"].mean()),
            nfe=float(v["nfe"]),
            slice_evaluations=float(v["slice_evaluations"]),
            wall_time_s=float(v["wall_time_s"]),
        )
        labels = {
            "volume": str(volume),
            "task": ds.attrs["task"],
            "views": int(ds.attrs["views"]),
            "method": ds.attrs["method"],
        }
        estimates = {recon: v[var].values.astype(np.float64) for recon, var in RECONSTRUCTIONS.items()}
        rows += view_rows(labels, ref, estimates, diagnostics)
    return pd.DataFrame(rows)


def view_rows(
    labels: Mapping[str, object],
    reference: np.ndarray,
    estimates: Mapping[str, np.ndarray],
    diagnostics: Mapping[str, float],
) -> list[dict[str, object]]:
    """One metrics row per (reconstruction, view) of a volume; the ``posterior_mean`` rows add
    ``diagnostics``."""
    rows = []
    for recon, estimate in estimates.items():
        for view, axis in VIEWS.items():
            row = {**labels, "reconstruction": recon, "view": view, **view_metrics(reference, estimate, axis)}
            if recon == "posterior_mean":
                row.update(diagnostics)
            rows.append(row)
    return rows


def volume_figures(store: Path, folder: Path) -> list[Path]:
    """A PNG per volume: central axial, coronal and sagittal slices of every reconstruction, error and std."""
    from diffinv.stages.ct3d.figures import volume_figures_of

    def panels(v: xr.Dataset) -> dict[str, np.ndarray]:
        reference = "reference" if v.attrs["reference"] == "truth" else "dense FBP"
        return {
            reference: v["reference"].values,
            "FBP": v["fbp"].values,
            "TV": v["tv"].values,
            "posterior mean": v["mean"].values,
        }

    def title(ds: xr.Dataset, v: xr.Dataset) -> str:
        return (
            f"{v['volume'].values}  {ds.attrs['task']} ({ds.attrs['views']} views)  {ds.attrs['method']}  "
            f"({v.sizes['sample']} samples)"
        )

    return volume_figures_of(store, folder, panels, title)


def evaluate(stores: Sequence[Path], metrics_csv: Path, figures: Path | None = None) -> pd.DataFrame:
    """Metrics of several ct3d stores into one CSV, and optionally figures."""
    from diffinv.stages.evaluate import evaluate_stores

    return evaluate_stores(stores, metrics_csv, figures, evaluate_store, volume_figures)


def summarise(metrics: Sequence[Path], out_csv: Path) -> pd.DataFrame:
    """Mean metrics per (task, method, reconstruction, view) over volumes.

    The FBP and TV baselines depend on the task only; they are listed once per task (method ``-``).
    """
    table = pd.concat([pd.read_csv(m) for m in metrics], ignore_index=True)
    base = table["reconstruction"] != "posterior_mean"
    table.loc[base, "method"] = "-"
    keys = ["task", "views", "method", "reconstruction", "view"]
    table = table.drop_duplicates(subset=["volume", *keys])
    numeric = [c for c in table.columns if c not in ("volume", *keys)]
    summary = table.groupby(keys, as_index=False, sort=False)[numeric].mean()
    summary.insert(len(keys), "volumes", table.groupby(keys, sort=False).size().values)
    with atomic_path(out_csv) as tmp:
        summary.to_csv(tmp, index=False, float_format="%.4g")
    return summary
