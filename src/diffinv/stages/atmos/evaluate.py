"""Evaluation of atmos stores: metrics per variable and level, held-out stations, error against
distance to the nearest conditioning station, power spectra and rank histograms.

Scores come from :mod:`diffinv.stages.atmos.metrics` (RMSE of the ensemble mean, fair CRPS,
spread-skill with the finite-ensemble correction, 90 % coverage), pooled over the store's
times. The bicubic and conservative baselines are scored as two-member ensembles of equal
members (spread 0, CRPS = MAE).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from diffinv.errors import InputError
from diffinv.io.store import atomic_path, open_zarr
from diffinv.operators.atmos import StationOperator, nearest_station_distance_km
from diffinv.stages.atmos.data import Channel
from diffinv.stages.atmos.metrics import (
    error_by_distance,
    field_metrics,
    radial_power_spectrum,
    station_metrics,
)

DISTANCE_EDGES_KM = (0.0, 50.0, 100.0, 200.0, np.inf)
BASELINES = ("bicubic", "conservative")


def channels(ds: xr.Dataset) -> list[Channel]:
    """The store's channels (variable, level)."""
    return [Channel(v, lev) for v, lev in json.loads(ds.attrs["channels"])]


def stacked(ds: xr.Dataset, suffix: str = "") -> np.ndarray:
    """(time, [member,] C, H, W) of the per-variable arrays ``VAR{suffix}``, one channel per level."""
    out = []
    for c in channels(ds):
        da = ds[f"{c.variable}{suffix}"]
        out.append(da.sel(level=c.level).values if c.level is not None else da.values)
    return np.stack(out, axis=-3)


def open_store(store: Path) -> xr.Dataset:
    """An atmos store, loaded; refused otherwise."""
    ds = open_zarr(store)
    if ds.attrs.get("stage") != "atmos":
        raise InputError(store, "not an atmos store", "pass a store written by 'diffinv sample atmos'")
    return ds.load()


def _pool(a: np.ndarray) -> np.ndarray:
    """(..., T, C, H, W) -> (..., C, T*H, W): times pooled into the grid rows."""
    a = np.moveaxis(a, -4, -3)  # (..., C, T, H, W)
    return a.reshape(*a.shape[:-3], a.shape[-3] * a.shape[-2], a.shape[-1])


def evaluate_store(store: Path) -> pd.DataFrame:
    """One row per (estimate, channel): posterior ensemble and baselines over all times, plus
    held-out station scores of the posterior and the baselines."""
    ds = open_store(store)
    ch = channels(ds)
    names = [c.name for c in ch]
    truth = stacked(ds, "_truth")  # (T, C, H, W)
    members = np.moveaxis(stacked(ds), 1, 0)  # (M, T, C, H, W)
    frames = [field_metrics(_pool(members), _pool(truth), names).assign(estimate="posterior")]
    for b in BASELINES:
        est = stacked(ds, f"_{b}")
        scores = field_metrics(_pool(np.stack([est, est])), _pool(truth), names).assign(estimate=b)
        scores[["spread", "spread_skill", "cov90"]] = np.nan  # a deterministic estimate has no spread
        frames.append(scores)
    table = pd.concat(frames, ignore_index=True)
    table["scope"] = "field"
    table = pd.concat([table, _held_out(ds, members, names)], ignore_index=True)
    table.insert(0, "method", ds.attrs["method"])
    table["modalities"] = ds.attrs["modalities"]
    table["members"] = members.shape[0]
    table["times"] = truth.shape[0]
    table["nfe"] = float(ds["nfe"].mean())
    table["wall_time_s_per_field"] = float(ds["wall_time_s"].mean())
    for m in ("coarse", "stations"):
        table[f"chi2_dof_{m}"] = float(ds[f"chi2_dof_{m}"].mean())
    return table


def _held_out(ds: xr.Dataset, members: np.ndarray, names: Sequence[str]) -> pd.DataFrame:
    """Scores at the held-out stations against the truth interpolated there (one row per channel)."""
    held = np.flatnonzero(ds["held_out"].values == 1)
    if not held.size:
        return pd.DataFrame()
    op = StationOperator(
        ds["latitude"].values,
        ds["longitude"].values,
        ds["station_latitude"].values[held],
        ds["station_longitude"].values[held],
    )
    import torch

    m, t = members.shape[:2]
    flat = torch.from_numpy(members.reshape(m * t, *members.shape[2:]).astype(np.float64))
    values = op.interpolate(flat).numpy().reshape(m, t, len(held), -1)  # (M, T, S, C)
    truth = ds["station_truth"].values[:, held]  # (T, S, C)
    baselines = {
        b: op.interpolate(torch.from_numpy(stacked(ds, f"_{b}").astype(np.float64))).numpy()
        for b in BASELINES
    }
    rows = []
    for k, name in enumerate(names):
        post = values[..., k].reshape(m, -1, 1)
        rows.append(
            {"estimate": "posterior", "channel": name, **station_metrics(post, truth[..., k].reshape(-1, 1))}
        )
        for b, v in baselines.items():
            err = v[..., k] - truth[..., k]
            rows.append(
                {
                    "estimate": b,
                    "channel": name,
                    "rmse": float(np.sqrt(np.mean(err**2))),
                    "bias": float(err.mean()),
                }
            )
    return pd.DataFrame(rows).assign(scope="held_out_stations")


def distance_table(store: Path) -> pd.DataFrame:
    """RMSE of the posterior mean and the baselines per bin of distance to the nearest
    conditioning station (0-50, 50-100, 100-200, > 200 km), per channel."""
    ds = open_store(store)
    used = ds["held_out"].values == 0
    dist = nearest_station_distance_km(
        ds["latitude"].values,
        ds["longitude"].values,
        ds["station_latitude"].values[used],
        ds["station_longitude"].values[used],
    )
    truth = stacked(ds, "_truth")
    frames = []
    for est, values in (("posterior", stacked(ds, "_mean")), *((b, stacked(ds, f"_{b}")) for b in BASELINES)):
        for k, c in enumerate(channels(ds)):
            t = error_by_distance(values[:, k] - truth[:, k], dist, DISTANCE_EDGES_KM)
            frames.append(t.assign(method=ds.attrs["method"], estimate=est, channel=c.name))
    return pd.concat(frames, ignore_index=True)


def spectra_table(store: Path) -> pd.DataFrame:
    """Radial power spectra of truth, posterior samples, posterior mean and bicubic, per channel."""
    ds = open_store(store)
    dx = 111.2 * float(abs(ds["latitude"].values[1] - ds["latitude"].values[0]))
    frames = []
    samples = stacked(ds)
    for k, c in enumerate(channels(ds)):
        for est, values in (
            ("truth", stacked(ds, "_truth")[:, k]),
            ("posterior_sample", samples[:, :, k]),
            ("posterior_mean", stacked(ds, "_mean")[:, k]),
            ("bicubic", stacked(ds, "_bicubic")[:, k]),
        ):
            wavenumber, power = radial_power_spectrum(values, dx_km=dx)
            frames.append(
                pd.DataFrame(
                    {"wavenumber_per_km": wavenumber, "power": power, "estimate": est, "channel": c.name}
                )
            )
    return pd.concat(frames, ignore_index=True).assign(method=ds.attrs["method"])


def rank_histogram(store: Path) -> pd.DataFrame:
    """Counts of the truth's rank among the M members (M + 1 bins; ties split at random with a
    fixed seed), per channel, over every grid point and time."""
    ds = open_store(store)
    samples, truth = stacked(ds), stacked(ds, "_truth")  # (T, M, C, H, W), (T, C, H, W)
    rng = np.random.default_rng(0)
    below = (samples < truth[:, None]).sum(1)
    ties = (samples == truth[:, None]).sum(1)
    ranks = below + rng.integers(0, ties + 1)
    m = samples.shape[1]
    rows = []
    for k, c in enumerate(channels(ds)):
        counts = np.bincount(ranks[:, k].ravel(), minlength=m + 1)
        rows += [
            {"method": ds.attrs["method"], "channel": c.name, "rank": r, "count": int(n)}
            for r, n in enumerate(counts)
        ]
    return pd.DataFrame(rows)


def evaluate(stores: Sequence[Path], metrics: Path, figures: Path | None = None) -> pd.DataFrame:
    """``diffinv atmos-evaluate``: metrics CSV of every store (and ``*_distance.csv``,
    ``*_spectra.csv``, ``*_rank.csv`` beside it); figures per store when ``figures`` is given."""
    table = pd.concat([evaluate_store(Path(s)) for s in stores], ignore_index=True)
    extra = {
        "distance": pd.concat([distance_table(Path(s)) for s in stores], ignore_index=True),
        "spectra": pd.concat([spectra_table(Path(s)) for s in stores], ignore_index=True),
        "rank": pd.concat([rank_histogram(Path(s)) for s in stores], ignore_index=True),
    }
    metrics.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(metrics) as tmp:
        table.to_csv(tmp, index=False)
    for name, frame in extra.items():
        with atomic_path(metrics.with_name(f"{metrics.stem}_{name}.csv")) as tmp:
            frame.to_csv(tmp, index=False)
    if figures is not None:
        figures.mkdir(parents=True, exist_ok=True)
        for s in stores:
            store_figures(open_store(Path(s)), extra, figures)
    return table


def store_figures(ds: xr.Dataset, extra: dict[str, pd.DataFrame], folder: Path) -> list[Path]:
    """Per channel: maps of the first time (truth, coarse, mean, std, error, stations), the rank
    histogram, the spread-skill curve and the spectra of the store's method."""
    from diffinv.stages.atmos.figures import plot_maps, plot_rank_histogram, plot_spectra, plot_spread_skill

    method = ds.attrs["method"]
    truth, mean, std = stacked(ds, "_truth"), stacked(ds, "_mean"), stacked(ds, "_std")
    coarse = stacked(ds, "_coarse")
    paths = []
    for k, c in enumerate(channels(ds)):
        units = str(ds[c.variable].attrs.get("units", ""))
        tag = f"{method}_{c.name}"
        paths.append(
            plot_maps(
                ds["latitude"].values,
                ds["longitude"].values,
                truth[0, k],
                coarse[0, k],
                mean[0, k],
                std[0, k],
                ds["station_latitude"].values,
                ds["station_longitude"].values,
                ds["held_out"].values == 1,
                f"{method} {c.name} {str(ds['time'].values[0])[:16]}",
                folder / f"{tag}_maps.png",
                units,
                int(ds.attrs["factor"]),
            )
        )
        rank = extra["rank"]
        counts = (
            rank[(rank.method == method) & (rank.channel == c.name)].sort_values("rank")["count"].to_numpy()
        )
        paths.append(plot_rank_histogram(counts, f"{method} {c.name}", folder / f"{tag}_rank.png"))
        paths.append(
            plot_spread_skill(
                std[:, k],
                mean[:, k] - truth[:, k],
                folder / f"{tag}_spread_skill.png",
                members=ds.sizes["member"],
                title=f"{method} {c.name}",
                units=units,
            )
        )
        sp = extra["spectra"]
        sp = sp[(sp.method == method) & (sp.channel == c.name)]
        curves = {e: g["power"].to_numpy() for e, g in sp.groupby("estimate", sort=False)}
        k_axis = sp[sp.estimate == "truth"]["wavenumber_per_km"].to_numpy()
        paths.append(plot_spectra(k_axis, curves, folder / f"{tag}_spectra.png", f"{method} {c.name}"))
    return paths


def summarise(metrics: Sequence[Path], out: Path) -> pd.DataFrame:
    """``diffinv atmos-summarise``: the metrics CSVs of every method in one table (field and
    held-out-station rows), written atomically to ``out``."""
    table = pd.concat([pd.read_csv(m) for m in metrics], ignore_index=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False)
    return table
