"""Evaluation of 3D MRI stores: PSNR/SSIM of magnitudes per axial, coronal and sagittal view.

Per view, the metrics are those of the 3D CT stage (:func:`diffinv.stages.ct3d.evaluate.view_metrics`:
means over the slices along that axis that hold some of the object, data range of the reference
volume) on the magnitude images |truth| and |estimate|.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from diffinv.errors import InputError
from diffinv.io.store import atomic_path, open_zarr
from diffinv.stages.ct3d.evaluate import view_rows

RECONSTRUCTIONS = {"posterior_mean": "mean", "zero_filled": "zero_filled", "tv": "tv"}


def evaluate_store(store: Path) -> pd.DataFrame:
    """One row per (volume, reconstruction, view); posterior rows add cost and spread diagnostics."""
    ds = open_zarr(store)
    if ds.attrs.get("stage") != "mri3d":
        raise InputError(store, "not an mri3d store", "pass a store written by 'diffinv sample mri3d'")
    rows = []
    for i, volume in enumerate(ds["volume"].values):
        v = ds.isel(volume=i).load()
        ref = np.abs(v["truth"].values).astype(np.float64)
        err = np.abs(v["mean"].values) - ref
        diagnostics = {
            "samples": int(v.sizes["sample"]),
            "rmse": float(np.sqrt((err**2).mean())),
            "mean_std": float(v["std"].values.mean()),
            "relative_residual": float(v["relative_residual"].mean()),
            "nfe": float(v["nfe"]),
            "slice_evaluations": float(v["slice_evaluations"]),
            "wall_time_s": float(v["wall_time_s"]),
            "acquired_fraction": float(v["mask"].values.mean()),
        }
        labels = {
            "volume": str(volume),
            "acceleration": int(ds.attrs["acceleration"]),
            "method": ds.attrs["method"],
        }
        estimates = {r: np.abs(v[var].values).astype(np.float64) for r, var in RECONSTRUCTIONS.items()}
        rows += view_rows(labels, ref, estimates, diagnostics)
    return pd.DataFrame(rows)


def volume_figures(store: Path, folder: Path) -> list[Path]:
    """A PNG per volume: central axial, coronal and sagittal magnitude slices, error and std."""
    from diffinv.stages.ct3d.figures import volume_figures_of

    names = (("reference", "truth"), ("zero-filled", "zero_filled"), ("TV", "tv"), ("posterior mean", "mean"))

    def panels(v: xr.Dataset) -> dict[str, np.ndarray]:
        return {name: np.abs(v[var].values) for name, var in names}

    def title(ds: xr.Dataset, v: xr.Dataset) -> str:
        method, samples = ds.attrs["method"], v.sizes["sample"]
        return f"{v['volume'].values}  {ds.attrs['acceleration']}x  {method}  ({samples} samples)"

    return volume_figures_of(store, folder, panels, title, units="a.u.", quantity="magnitude")


def evaluate(stores: Sequence[Path], metrics_csv: Path, figures: Path | None = None) -> pd.DataFrame:
    """Metrics of several mri3d stores into one CSV, and optionally figures."""
    from diffinv.stages.evaluate import evaluate_stores

    return evaluate_stores(stores, metrics_csv, figures, evaluate_store, volume_figures)


def summarise(metrics: Sequence[Path], out_csv: Path) -> pd.DataFrame:
    """Mean metrics per (acceleration, method, reconstruction, view) over volumes; the zero-filled and TV
    baselines depend on the acceleration only and are listed once (method ``-``)."""
    table = pd.concat([pd.read_csv(m) for m in metrics], ignore_index=True)
    table.loc[table["reconstruction"] != "posterior_mean", "method"] = "-"
    keys = ["acceleration", "method", "reconstruction", "view"]
    table = table.drop_duplicates(subset=["volume", *keys])
    numeric = [c for c in table.columns if c not in ("volume", *keys)]
    summary = table.groupby(keys, as_index=False, sort=False)[numeric].mean()
    summary.insert(len(keys), "volumes", table.groupby(keys, sort=False).size().values)
    with atomic_path(out_csv) as tmp:
        summary.to_csv(tmp, index=False, float_format="%.4g")
    return summary
