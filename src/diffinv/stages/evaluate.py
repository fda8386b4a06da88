"""Evaluation of posterior stores: metrics CSV (per case and reconstruction) and figures."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from diffinv.errors import InputError
from diffinv.io.store import atomic_path, open_zarr
from diffinv.metrics import image_metrics
from diffinv.plots import plot_case
from diffinv.uncertainty import as_channels, coverage_breakdown, crps_ensemble, spread_skill

RECONSTRUCTIONS = {"posterior_mean": "mean", "zero_filled": "zero_filled", "no_prior": "no_prior", "cs": "cs"}
COVERAGE_LEVELS = (0.5, 0.9, 0.95)
COINCIDE_NOTE = "= no_prior (single coil: data consistency leaves A^H y unchanged)"
ZERO_FILLED_COINCIDING = "zero-filled (= no-prior data consistency, single coil)"


def baselines_coincide(ds: xr.Dataset, rtol: float = 1e-5) -> bool:
    """Whether the store's no-prior baseline equals zero-filled on every case.

    On single-coil Cartesian data AᴴA is a projection, so data-consistency CG started at
    Aᴴy does not move and the no-prior baseline is Aᴴy (up to rounding; the value clip
    could change that, hence the check on the data rather than on the operator). The two
    are then presented once, as zero-filled.
    """
    if "no_prior" not in ds or "zero_filled" not in ds:
        return False
    zf, npr = ds["zero_filled"].values, ds["no_prior"].values
    return bool(np.abs(npr - zf).max() <= rtol * max(float(np.abs(zf).max()), 1e-30))


def present_reconstructions(ds: xr.Dataset) -> dict[str, str]:
    """Reconstruction name -> store variable of the rows to report (coinciding baselines once)."""
    recons = {r: v for r, v in RECONSTRUCTIONS.items() if v in ds}
    if baselines_coincide(ds):
        recons.pop("no_prior")
    return recons


def uncertainty_metrics(samples: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Coverage breakdown, CRPS and spread-skill ratio of ONE case: ``samples`` (sample, ...).

    :func:`~diffinv.uncertainty.coverage_breakdown` at 50/90/95 % (magnitude: all pixels,
    object support, background; complex: real/imag channels) and the support fraction;
    ``crps`` (fair ensemble CRPS, mean over pixels and channels, data units) and
    ``spread_skill`` (√((M+1)/M)·spread/RMSE), both on the real and imaginary channels
    of complex images (on the values of real ones).
    """
    out = coverage_breakdown(samples, truth, COVERAGE_LEVELS)
    channels_s, channels_t = as_channels(samples), as_channels(truth)
    out["crps"] = float(crps_ensemble(channels_s, channels_t).mean())
    out["spread_skill"] = spread_skill(channels_s, channels_t)
    return out


def evaluate_store(store: Path) -> pd.DataFrame:
    """One row per (case, reconstruction): PSNR, SSIM, NMSE; posterior rows add coverage and diagnostics."""
    ds = open_zarr(store)
    if "truth" not in ds:
        raise InputError(
            store,
            "no 'truth' variable: metrics need fully sampled reference data",
            "evaluate stores made from train/val files",
        )
    rows = []
    recons = present_reconstructions(ds)
    coincide = "no_prior" not in recons and "no_prior" in ds
    for i, case in enumerate(ds["case"].values):
        sl = ds.isel(case=i).load()
        truth = np.abs(sl["truth"].values)
        for recon, var in recons.items():
            row = {
                "case": str(case),
                "method": ds.attrs["method"],
                "acceleration": int(ds.attrs["acceleration"]),
                "reconstruction": recon,
                "note": COINCIDE_NOTE if coincide and recon == "zero_filled" else "",
            }
            if recon == "cs":
                row["note"] = f"TV-SENSE, lambda={float(ds.attrs['cs_lambda']):.3g} (training slices)"
            row.update(image_metrics(truth, sl[var].values))
            if recon == "posterior_mean":
                row.update(uncertainty_metrics(sl["samples"].values, sl["truth"].values))
                row["samples"] = int(sl.sizes["sample"])
                row["hallucination_score"] = float(sl["hallucination_score"].mean())
                row["relative_residual"] = float(sl["relative_residual"].mean())
                row["mean_std"] = float(sl["std"].mean())
                row["rmse"] = float(np.sqrt(((np.abs(sl["mean"].values) - truth) ** 2).mean()))
            rows.append(row)
    return pd.DataFrame(rows)


def case_figures(store: Path, folder: Path) -> list[Path]:
    """A PNG per case: truth, zero-filled, no-prior, CS, posterior mean, |error|, std.

    Where no-prior equals zero-filled (single coil) one panel shows both, labelled so.
    """
    ds = open_zarr(store)
    folder.mkdir(parents=True, exist_ok=True)
    recons = present_reconstructions(ds)
    coincide = "no_prior" not in recons and "no_prior" in ds
    paths = []
    for i, case in enumerate(ds["case"].values):
        sl = ds.isel(case=i).load()
        panels = {"truth": sl["truth"].values} if "truth" in sl else {}
        panels[ZERO_FILLED_COINCIDING if coincide else "zero-filled"] = sl["zero_filled"].values
        if "no_prior" in recons:
            panels["no prior"] = sl["no_prior"].values
        if "cs" in recons:
            panels[f"CS (TV, λ={float(ds.attrs['cs_lambda']):.3g})"] = sl["cs"].values
        panels["posterior mean"] = sl["mean"].values
        title = f"{case}  {ds.attrs['method']}  {ds.attrs['acceleration']}x  ({sl.sizes['sample']} samples)"
        paths.append(plot_case(panels, sl["std"].values, title, folder / f"case{i:03d}.png"))
    return paths


def evaluate_stores(
    stores: Sequence[Path],
    metrics_csv: Path,
    figures: Path | None,
    metrics_of: Callable[[Path], pd.DataFrame],
    figures_of: Callable[[Path, Path], object],
) -> pd.DataFrame:
    """Every stage's evaluate step: ``metrics_of`` each store into one CSV (atomic), and optionally
    ``figures_of`` each store into the folder ``figures`` (atomic)."""
    table = pd.concat([metrics_of(s) for s in stores], ignore_index=True)
    with atomic_path(metrics_csv) as tmp:
        table.to_csv(tmp, index=False, float_format="%.5g")
    if figures is not None:
        with atomic_path(figures) as tmp:
            for s in stores:
                figures_of(s, tmp)
    return table


def evaluate(stores: Sequence[Path], metrics_csv: Path, figures: Path | None = None) -> pd.DataFrame:
    """Metrics of several MRI stores into one CSV, and optionally figures."""
    return evaluate_stores(stores, metrics_csv, figures, evaluate_store, case_figures)


#: Summary columns taken from a calibration CSV's primary row (``diffinv calibrate``).
CALIBRATION_COLUMNS = {
    "level": "calibration_level",
    "calibration_method": "calibration_method",
    "lambda": "calibration_lambda",
    "calibration_cases": "calibration_cases",
    "coverage_raw": "coverage_complex_raw",
    "coverage_calibrated": "coverage_complex_calibrated",
    "width_raw": "raw_width",
    "width_calibrated": "calibrated_width",
}


def calibration_summary(calibration: Sequence[Path]) -> pd.DataFrame:
    """One row per (method, acceleration) from calibration CSVs: the primary level's λ, coverage
    and mean interval width, raw and calibrated (named as in :data:`CALIBRATION_COLUMNS`)."""
    table = pd.concat([pd.read_csv(c) for c in calibration], ignore_index=True)
    table = table[table["primary"].astype(bool)]
    out = table[["method", "acceleration", *CALIBRATION_COLUMNS]].rename(columns=CALIBRATION_COLUMNS)
    out["reconstruction"] = "posterior_mean"
    return out


def summarise(metrics: Sequence[Path], out_csv: Path, calibration: Sequence[Path] = ()) -> pd.DataFrame:
    """Mean metrics per (method, acceleration, reconstruction) over cases, with each row's note
    (e.g. that zero-filled is also the no-prior baseline, or the CS weight); with
    ``calibration`` CSVs, the posterior rows of the calibrated methods gain the calibration
    columns (:func:`calibration_summary`), the other rows leave them empty."""
    table = pd.concat([pd.read_csv(m) for m in metrics], ignore_index=True)
    keys = ["method", "acceleration", "reconstruction"]
    numeric = [c for c in table.columns if c not in ("case", "note", *keys)]
    groups = table.groupby(keys)
    summary = table.groupby(keys, as_index=False)[numeric].mean()
    summary.insert(3, "cases", groups.size().values)
    if "note" in table:
        notes = groups["note"].agg(lambda v: "; ".join(sorted({str(n) for n in v.dropna() if str(n)})))
        summary["note"] = notes.values
    if calibration:
        summary = summary.merge(calibration_summary(calibration), on=keys, how="left")
    with atomic_path(out_csv) as tmp:
        summary.to_csv(tmp, index=False, float_format="%.4g")
    return summary


def evaluate_ads(store: Path, metrics_csv: Path, figures: Path) -> pd.DataFrame:
    """ADS store: per-case metrics of every strategy (CSV) and a figure per case."""
    from diffinv.plots import plot_ads_case
    from diffinv.stages.ads.acquisition import ads_metrics

    ds = open_zarr(store).load()
    if "truth" not in ds:
        raise InputError(
            store,
            "no 'truth' variable: metrics need fully sampled reference data",
            "run ADS on train/val files",
        )
    table = pd.DataFrame(ads_metrics(ds))
    with atomic_path(metrics_csv) as tmp:
        table.to_csv(tmp, index=False, float_format="%.5g")
    strategies = [str(s) for s in ds["strategy"].values]
    posterior = table[table["reconstruction"] == "posterior_mean"]
    with atomic_path(figures) as tmp:
        tmp.mkdir(parents=True)
        for c, case in enumerate(ds["case"].values):
            per_case = posterior[posterior["case"] == str(case)].set_index("strategy")["ssim"]
            best_baseline = per_case.drop("ads").idxmax()
            images = {
                "truth": ds["truth"].values[c],
                "ADS mean": ds["mean"].sel(strategy="ads").values[c],
                f"{best_baseline} mean": ds["mean"].sel(strategy=best_baseline).values[c],
            }
            if "cs" in ds:
                images[f"CS (TV, λ={float(ds.attrs['cs_lambda']):.3g}), ADS mask"] = (
                    ds["cs"].sel(strategy="ads").values[c]
                )
            masks = {s: ds["mask"].sel(strategy=s).values[c] for s in strategies}
            title = (
                f"{case}  ADS {ds.attrs['acceleration']}x ({ds.attrs['lines']} lines)  "
                f"SSIM ADS {per_case['ads']:.3f} vs {best_baseline} {per_case[best_baseline]:.3f}"
            )
            plot_ads_case(
                ds["entropy"].values[c],
                ds["acquisition_order"].values[c],
                masks,
                images,
                ds["std"].sel(strategy="ads").values[c],
                title,
                tmp / f"case{c:03d}.png",
            )
    return table


def summarise_ads(metrics: Sequence[Path], out_csv: Path) -> pd.DataFrame:
    """Mean metrics per (acceleration, strategy, reconstruction), with ADS's SSIM gain over the
    best fixed mask (posterior means; the CS rows compare the masks without a prior)."""
    table = pd.concat([pd.read_csv(m) for m in metrics], ignore_index=True)
    if "reconstruction" not in table:  # metrics written before the CS baseline
        table["reconstruction"] = "posterior_mean"
    summary = table.groupby(["acceleration", "lines", "strategy", "reconstruction"], as_index=False)[
        ["psnr", "ssim", "nmse"]
    ].mean()
    posterior = summary[summary["reconstruction"] == "posterior_mean"]
    best_fixed = posterior[posterior["strategy"] != "ads"].groupby("acceleration")["ssim"].max()
    ads_ssim = posterior[posterior["strategy"] == "ads"].set_index("acceleration")["ssim"]
    gain = summary["acceleration"].map(ads_ssim - best_fixed)
    summary["ssim_gain_of_ads_over_best_fixed"] = gain.where(summary["reconstruction"] == "posterior_mean")
    with atomic_path(out_csv) as tmp:
        summary.to_csv(tmp, index=False, float_format="%.4g")
    return summary
