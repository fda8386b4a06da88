"""Evaluation of fwd stores against the truth of demo data (never imported by training).

:func:`load_truth` is the only place the stage reads a store's ``truth`` variable. Metrics per
volume follow the ct3d stage (:func:`~diffinv.stages.ct3d.evaluate.view_metrics` on axial
slices: mean PSNR/SSIM over the slices holding the object, data range of the reference volume);
posterior rows add the shared uncertainty diagnostics
(:func:`~diffinv.stages.evaluate.uncertainty_metrics`, averaged over slices).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from diffinv.errors import InputError
from diffinv.io.store import open_zarr
from diffinv.stages.ct3d.evaluate import view_metrics
from diffinv.stages.evaluate import uncertainty_metrics
from diffinv.stages.fwd.data import TRUTH, case_rows

RECONSTRUCTIONS = {"posterior_mean": "mean", "fbp": "fbp"}


def has_truth(store: Path) -> bool:
    """Whether the projection store holds ground truth (demo data)."""
    return TRUTH in open_zarr(Path(store))


def load_truth(store: Path, case_ids: Sequence[str]) -> np.ndarray:
    """Ground-truth slices (n, ny, nx) float32 of ``case_ids``, in the store's attenuation units."""
    ds = open_zarr(Path(store))
    if TRUTH not in ds:
        raise InputError(store, "no 'truth' variable", "evaluate on a store with ground truth (demo data)")
    return np.asarray(ds[TRUTH].isel(projection=case_rows(case_ids)).values, np.float32)


def posterior_diagnostics(samples: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Means over slices of :func:`uncertainty_metrics` of ``samples`` (sample, z, y, x) against
    ``reference`` (z, y, x)."""
    per = [uncertainty_metrics(samples[:, k], reference[k]) for k in range(reference.shape[0])]
    return {key: float(np.nanmean([p[key] for p in per])) for key in per[0]}


def evaluate_store(store: Path) -> pd.DataFrame:
    """One row per (volume, reconstruction): axial PSNR/SSIM; posterior rows add diagnostics."""
    ds = open_zarr(store)
    if ds.attrs.get("stage") != "fwd":
        raise InputError(store, "not a fwd store", "pass a store written by 'diffinv sample fwd'")
    rows = []
    for i, volume in enumerate(ds["volume"].values):
        v = ds.isel(volume=i).load()
        ref = v["reference"].values.astype(np.float64)
        for recon, var in RECONSTRUCTIONS.items():
            row: dict[str, object] = {
                "volume": str(volume),
                "reconstruction": recon,
                "reference": str(v["reference"].attrs.get("long_name", "")),
                "context_views": len(ds.attrs["context_views"]),
                "target_views": len(ds.attrs["target_views"]),
                **view_metrics(ref, v[var].values.astype(np.float64), 0),
            }
            if recon == "posterior_mean":
                row.update(
                    posterior_diagnostics(v["samples"].values.astype(np.float64), ref),
                    samples=int(v.sizes["sample"]),
                    relative_residual=float(v["relative_residual"].mean()),
                    nfe=float(v["nfe"]),
                    wall_time_s=float(v["wall_time_s"]),
                )
            rows.append(row)
    return pd.DataFrame(rows)


def volume_figures(store: Path, folder: Path) -> list[Path]:
    """A PNG per volume: central orthogonal slices of reference, FBP, posterior mean, error and std."""
    from diffinv.stages.ct3d.figures import volume_figures_of

    def panels(v: xr.Dataset) -> dict[str, np.ndarray]:
        return {
            str(v["reference"].attrs.get("long_name", "reference")): v["reference"].values,
            "FBP (context views)": v["fbp"].values,
            "posterior mean": v["mean"].values,
        }

    def title(ds: xr.Dataset, v: xr.Dataset) -> str:
        views = len(ds.attrs["context_views"])
        return f"{v['volume'].values}  fwd, {views} context views ({v.sizes['sample']} samples)"

    return volume_figures_of(store, folder, panels, title)


def evaluate(stores: Sequence[Path], metrics_csv: Path, figures: Path | None = None) -> pd.DataFrame:
    """Metrics of fwd stores into one CSV, and optionally figures."""
    from diffinv.stages.evaluate import evaluate_stores

    return evaluate_stores(stores, metrics_csv, figures, evaluate_store, volume_figures)
