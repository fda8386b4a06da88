"""Figures of the atmospheric stage: maps, rank histogram, spread-skill and power spectra."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.ticker import NullFormatter

from diffinv.errors import ConfigError
from diffinv.operators.atmos import coarse_edges
from diffinv.plotstyle import ERROR_CMAP, FIELD_CMAP, PANEL_TITLE_SIZE, plt
from diffinv.stages.atmos.metrics import binned_spread_skill

#: Colour map of signed errors (mean − truth), on a scale symmetric about 0.
SIGNED_CMAP = "RdBu_r"


def infer_factor(fine: tuple[int, int], coarse: tuple[int, int]) -> int:
    """The one coarse-graining factor f with ⌈H/f⌉, ⌈W/f⌉ = ``coarse``; ConfigError if none or several."""
    found = [
        f
        for f in range(1, max(fine) + 1)
        if (math.ceil(fine[0] / f), math.ceil(fine[1] / f)) == tuple(coarse)
    ]
    if len(found) != 1:
        raise ConfigError(
            f"plot_maps: a {fine[0]}x{fine[1]} field and a {coarse[0]}x{coarse[1]} coarse field fit factors "
            f"{found or 'none'} (fix: pass factor=)"
        )
    return found[0]


def _stations(ax, lat: np.ndarray, lon: np.ndarray, held_out: np.ndarray | None) -> None:
    held = np.zeros(len(lat), bool) if held_out is None else np.asarray(held_out, bool)
    ax.scatter(
        lon[~held], lat[~held], s=14, marker="^", c="k", edgecolors="w", linewidths=0.5, label="assimilated"
    )
    if held.any():
        ax.scatter(
            lon[held], lat[held], s=16, marker="o", facecolors="none", edgecolors="r", label="held out"
        )


def plot_maps(
    lat: np.ndarray,
    lon: np.ndarray,
    truth: np.ndarray,
    coarse: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    stations_lat: np.ndarray,
    stations_lon: np.ndarray,
    held_out: np.ndarray | None,
    title: str,
    path: Path,
    units: str = "",
    factor: int | None = None,
) -> Path:
    """One row of maps of one channel: truth, coarse input, posterior mean, std, mean − truth.

    The coarse input is drawn on its own blocks (:func:`diffinv.operators.atmos.coarse_edges`;
    ``factor`` is inferred from the shapes when only one fits). Truth, coarse and mean share
    one colour scale, std has its own (from 0) and the error a scale symmetric about 0.
    Stations are marked on every panel (triangles; ``held_out`` (S,) booleans as red circles).
    """
    lat, lon = np.asarray(lat, float), np.asarray(lon, float)
    f = infer_factor(truth.shape, coarse.shape) if factor is None else factor
    err = mean - truth
    lo = float(min(np.nanmin(truth), np.nanmin(coarse), np.nanmin(mean)))
    hi = float(max(np.nanmax(truth), np.nanmax(coarse), np.nanmax(mean)))
    emax = max(float(np.nanquantile(np.abs(err), 0.995)), 1e-12)
    aspect = 1 / max(math.cos(math.radians(float(np.mean(lat)))), 0.1)  # degrees of longitude shrink
    height = 1.9 * aspect * np.ptp(lat) / max(np.ptp(lon), 1e-12)
    fig, axes = plt.subplots(1, 5, figsize=(10.9, min(max(height, 1.2), 4.0) + 0.8), squeeze=False)
    ax = axes[0]
    field = {"vmin": lo, "vmax": hi, "cmap": FIELD_CMAP}
    shown = ax[0].pcolormesh(lon, lat, truth, shading="nearest", **field)
    ax[1].pcolormesh(coarse_edges(lon, f), coarse_edges(lat, f), coarse, shading="flat", **field)
    ax[2].pcolormesh(lon, lat, mean, shading="nearest", **field)
    spread = ax[3].pcolormesh(lon, lat, std, shading="nearest", cmap=ERROR_CMAP, vmin=0)
    signed = ax[4].pcolormesh(lon, lat, err, shading="nearest", cmap=SIGNED_CMAP, vmin=-emax, vmax=emax)
    names = ("truth", f"coarse input (×{f})", "posterior mean", "posterior std", "mean − truth")
    s_lat, s_lon = np.asarray(stations_lat, float), np.asarray(stations_lon, float)
    for a, name in zip(ax, names):
        _stations(a, s_lat, s_lon, held_out)
        a.set_title(name, fontsize=PANEL_TITLE_SIZE)
        a.set_aspect(aspect)
        a.set_xlabel("longitude (°)")
    ax[0].set_ylabel("latitude (°)")
    ax[0].legend(loc="lower left", fontsize=6, framealpha=0.7)
    suffix = f" ({units})" if units else ""
    fig.colorbar(shown, ax=list(ax[:3]), fraction=0.03, pad=0.01, label=f"value{suffix}")
    fig.colorbar(spread, ax=ax[3], fraction=0.05, pad=0.01, label=f"std{suffix}")
    fig.colorbar(signed, ax=ax[4], fraction=0.05, pad=0.01, label=f"error{suffix}")
    fig.suptitle(title)
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_rank_histogram(counts: np.ndarray, title: str, path: Path) -> Path:
    """Relative frequency of the truth's rank among M members (M + 1 bars) and the flat 1/(M + 1)."""
    c = np.asarray(counts, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(4.0, 2.8))
    ax.bar(np.arange(c.size), c / max(c.sum(), 1.0), width=0.9, color="C0")
    ax.axhline(1 / c.size, color="k", linestyle="--", label="calibrated (flat)")
    ax.set_xlabel("rank of the truth among the members")
    ax.set_ylabel("frequency")
    ax.legend()
    ax.set_title(title)
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_spread_skill(
    spread: np.ndarray,
    rmse: np.ndarray,
    path: Path,
    bins: int = 10,
    members: int | None = None,
    title: str = "spread-skill",
    units: str = "",
) -> Path:
    """Binned spread against RMSE with the identity line (:func:`binned_spread_skill`).

    ``spread`` is the per-point ensemble std and ``rmse`` the per-point error of the
    ensemble mean (its RMS per bin is the bin's RMSE); ``members`` applies the
    finite-ensemble correction to the spread.
    """
    table = binned_spread_skill(spread, rmse, bins, members)
    top = float(np.nanmax(table[["spread", "rmse"]].to_numpy())) * 1.05 if len(table) else 1.0
    fig, ax = plt.subplots(figsize=(3.6, 3.3))
    ax.plot([0, top], [0, top], color="k", linestyle="--", linewidth=1, label="calibrated")
    ax.plot(table["spread"], table["rmse"], marker="o", label="equal-count bins of spread")
    suffix = f" ({units})" if units else ""
    ax.set_xlabel(f"spread{' (corrected)' if members else ''}{suffix}")
    ax.set_ylabel(f"RMSE of the mean{suffix}")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.legend()
    ax.set_title(title)
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_spectra(
    k: np.ndarray,
    spectra: Mapping[str, np.ndarray],
    path: Path,
    title: str = "power spectrum",
    k_units: str = "cycles per km",
) -> Path:
    """Log-log power spectra (:func:`~diffinv.stages.atmos.metrics.radial_power_spectrum`), one
    line per entry of ``spectra`` (the truth first, drawn in black); zero bins are left out."""
    k = np.asarray(k, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(4.4, 3.3))
    for i, (name, power) in enumerate(spectra.items()):
        p = np.asarray(power, dtype=np.float64)
        keep = (k > 0) & (p > 0)
        ax.loglog(
            k[keep], p[keep], label=name, color="k" if i == 0 else f"C{i - 1}", linewidth=1.5 if i == 0 else 1
        )
    ax.xaxis.set_minor_formatter(NullFormatter())  # decade labels only: minor ones overlap
    ax.set_xlabel(f"wavenumber ({k_units})")
    ax.set_ylabel("power (variance per bin)")
    ax.grid(True, which="both")
    ax.legend()
    ax.set_title(title)
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
