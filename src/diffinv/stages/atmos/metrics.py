"""Ensemble metrics of atmospheric super-resolution: fields, held-out stations, spectra, distance.

Standard ensemble scores (Fortin et al. 2014; Ferro 2014), as used for diffusion
downscaling (Chakraborty et al. 2025, arXiv 2506.22780; CorrDiff, Mardani et al. 2025):
ensemble-mean RMSE, MAE and bias, fair CRPS, spread, the finite-ensemble spread-skill
ratio, 90 % interval coverage, isotropic power spectra and error against the distance to
the nearest station. CRPS, spread-skill and coverage are those of :mod:`diffinv.uncertainty`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from diffinv.errors import ConfigError
from diffinv.uncertainty import crps_ensemble, interval_coverage, spread_skill

#: Columns of :func:`field_metrics` after ``channel``.
FIELD_COLUMNS = ("rmse", "mae", "bias", "crps", "spread", "spread_skill", "cov90")
#: Scores of :func:`station_metrics` (besides ``count``).
STATION_KEYS = ("rmse", "crps", "spread", "spread_skill", "bias")


def radial_power_spectrum(
    field: np.ndarray, dx_km: float | None = None, window: str | None = "hann"
) -> tuple[np.ndarray, np.ndarray]:
    """Isotropic power spectrum of the last two axes, averaged over the leading ones.

    Each (H, W) field has its mean removed and, by default, is tapered by a 2-D Hann
    window (outer product of ``np.hanning``): regional fields are not periodic, and the
    jump at the domain edge would otherwise leak a k⁻² tail over the steeper k⁻³ of
    synoptic-scale atmospheric spectra (Errico 1985), which is the part that tells sharp
    from blurred reconstructions. ``window=None`` skips the taper.

    Power is variance per wavenumber bin: |DFT/(HW)|² / mean(w²), summed over the modes
    whose |k| rounds to the bin, bins of width Δk = 1/(min(H, W)·dx), k = Δk, 2Δk, ...
    (the zero mode is left out; bins past the Nyquist 1/(2dx) hold the diagonal corner
    modes). Parseval: Σ power = Var(w·(f − f̄)) / mean(w²) per field, which is Var(f)
    without a window. ``dx_km`` is the grid spacing (one value for both axes); without it
    k is in cycles per grid cell, with it in cycles per km.
    """
    f = np.asarray(field, dtype=np.float64)
    if f.ndim < 2 or min(f.shape[-2:]) < 2:
        raise ConfigError(f"radial_power_spectrum: need fields of at least 2x2 points, got shape {f.shape}")
    if window not in ("hann", None):
        raise ConfigError(f"radial_power_spectrum: window {window!r} is not 'hann' or None")
    h, w = f.shape[-2:]
    g = f.reshape(-1, h, w)
    g = g - g.mean(axis=(-2, -1), keepdims=True)
    taper = np.outer(np.hanning(h), np.hanning(w)) if window == "hann" else np.ones((h, w))
    spec = np.abs(np.fft.fft2(g * taper) / (h * w)) ** 2 / np.mean(taper**2)
    d = 1.0 if dx_km is None else float(dx_km)
    ky, kx = np.fft.fftfreq(h, d), np.fft.fftfreq(w, d)
    dk = 1.0 / (min(h, w) * d)
    which = np.rint(np.hypot(ky[:, None], kx[None, :]) / dk).astype(int).ravel()
    power = np.bincount(which, weights=spec.mean(0).ravel())[1:]
    return dk * np.arange(1, len(power) + 1), power


def error_by_distance(error: np.ndarray, distance_km: np.ndarray, edges_km: Sequence[float]) -> pd.DataFrame:
    """RMSE of ``error`` (..., H, W) per bin [lower, upper) of distance (H, W) to the nearest station.

    Leading axes of ``error`` (times, channels) are pooled; NaN errors are left out.
    Columns: lower_km, upper_km, rmse (NaN for an empty bin), count.
    """
    edges = np.asarray(edges_km, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or not (np.diff(edges) > 0).all():
        raise ConfigError(f"error_by_distance: edges_km must increase strictly, got {list(edges)}")
    err = np.asarray(error, dtype=np.float64)
    dist = np.broadcast_to(np.asarray(distance_km, dtype=np.float64), err.shape)
    ok = np.isfinite(err)
    which = np.digitize(dist[ok], edges) - 1  # bin i holds edges[i] <= d < edges[i + 1]
    inside = (which >= 0) & (which < edges.size - 1)
    nb = edges.size - 1
    count = np.bincount(which[inside], minlength=nb)
    sq = np.bincount(which[inside], weights=err[ok][inside] ** 2, minlength=nb)
    with np.errstate(invalid="ignore", divide="ignore"):
        rmse = np.sqrt(sq / count)
    return pd.DataFrame({"lower_km": edges[:-1], "upper_km": edges[1:], "rmse": rmse, "count": count})


def _scores(samples: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """The :data:`FIELD_COLUMNS` of an ensemble (M, ...) against ``truth`` (...)."""
    err = samples.mean(0) - truth
    return {
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
        "bias": float(np.mean(err)),
        "crps": float(crps_ensemble(samples, truth).mean()),
        "spread": float(np.sqrt(samples.var(axis=0, ddof=1).mean())),
        "spread_skill": spread_skill(samples, truth),
        "cov90": interval_coverage(samples, truth, (0.9,))[0.9],
    }


def field_metrics(
    members: np.ndarray, truth: np.ndarray, names: Sequence[str], scales: Sequence[float] | None = None
) -> pd.DataFrame:
    """One row per channel: ensemble members (M, C, H, W) against the truth (C, H, W).

    Columns ``channel`` and :data:`FIELD_COLUMNS`: RMSE, MAE and bias of the ensemble
    mean, the mean fair CRPS (Ferro 2014), spread √(mean sample variance, ddof 1), the
    spread-skill ratio √((M+1)/M)·spread/RMSE (Fortin et al. 2014) and the coverage of
    the central 90 % sample interval, all in each channel's physical units. Channels
    differ in units (K, m s⁻¹, m² s⁻²), so there is no pooled row unless ``scales`` (one
    per channel, e.g. the per-variable std of the prior's normalisation) is given: then
    a row ``all`` scores every channel divided by its scale (dimensionless).
    """
    m = np.asarray(members, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    if m.ndim != 4 or t.shape != m.shape[1:] or m.shape[0] < 2:
        raise ConfigError(
            f"field_metrics: members {m.shape} and truth {t.shape} must be (M >= 2, C, H, W) and (C, H, W)"
        )
    if len(names) != m.shape[1]:
        raise ConfigError(f"field_metrics: {len(names)} names for {m.shape[1]} channels (fix: one name each)")
    rows = [{"channel": str(n), **_scores(m[:, c], t[c])} for c, n in enumerate(names)]
    if scales is not None:
        s = np.asarray(scales, dtype=np.float64)
        if s.shape != (m.shape[1],) or not (s > 0).all():
            raise ConfigError(f"field_metrics: scales need {m.shape[1]} values > 0, got {list(s)}")
        rows.append({"channel": "all", **_scores(m / s[:, None, None], t / s[:, None, None])})
    return pd.DataFrame(rows, columns=["channel", *FIELD_COLUMNS])


def station_metrics(member_values: np.ndarray, observed: np.ndarray) -> dict[str, float]:
    """Scores of ensemble values at held-out stations (M, S, K) against their soundings (S, K).

    Entries where the sounding or any member is NaN are left out. Returns rmse (ensemble
    mean), crps (mean fair CRPS), spread, spread_skill (as :func:`field_metrics`), bias
    and count (the entries scored); the scores are NaN when nothing is left.
    """
    m = np.asarray(member_values, dtype=np.float64)
    y = np.asarray(observed, dtype=np.float64)
    if m.ndim != 3 or y.shape != m.shape[1:] or m.shape[0] < 2:
        raise ConfigError(
            f"station_metrics: member_values {m.shape} and observed {y.shape} "
            "must be (M >= 2, S, K) and (S, K)"
        )
    valid = np.isfinite(y) & np.isfinite(m).all(0)
    count = int(valid.sum())
    if count == 0:
        return {**dict.fromkeys(STATION_KEYS, float("nan")), "count": 0.0}
    scores = _scores(m[:, valid], y[valid])
    return {**{k: scores[k] for k in STATION_KEYS}, "count": float(count)}


def binned_spread_skill(
    spread: np.ndarray, error: np.ndarray, bins: int = 10, members: int | None = None
) -> pd.DataFrame:
    """Spread against RMSE in equal-count bins of the predicted spread (calibration curve).

    ``spread`` is the per-point ensemble std (ddof 1) and ``error`` the per-point error of
    the ensemble mean, same shape; NaN pairs are left out. Per bin of spread quantiles:
    spread_lo, spread_hi (the bin's edges), spread = √(mean s²) — times √((M+1)/M) when
    ``members`` = M is given, the finite-ensemble correction of Fortin et al. 2014 — rmse
    = √(mean error²) and count. A calibrated ensemble lies on spread = rmse.
    """
    s = np.asarray(spread, dtype=np.float64).ravel()
    e = np.asarray(error, dtype=np.float64).ravel()
    if s.shape != e.shape or bins < 1:
        raise ConfigError(f"binned_spread_skill: {s.size} spreads for {e.size} errors, bins={bins}")
    ok = np.isfinite(s) & np.isfinite(e)
    s, e = s[ok], e[ok]
    edges = np.unique(np.quantile(s, np.linspace(0, 1, bins + 1))) if s.size else np.zeros(1)
    if edges.size < 2:  # a single spread value: one bin
        edges = np.r_[edges[:1], edges[:1]]
    nb = edges.size - 1
    which = np.clip(np.digitize(s, edges[1:-1], right=True), 0, nb - 1)
    count = np.bincount(which, minlength=nb)
    factor = 1.0 if members is None else (members + 1) / members
    with np.errstate(invalid="ignore", divide="ignore"):
        s_rms = np.sqrt(factor * np.bincount(which, weights=s**2, minlength=nb) / count)
        rmse = np.sqrt(np.bincount(which, weights=e**2, minlength=nb) / count)
    table = pd.DataFrame(
        {"spread_lo": edges[:-1], "spread_hi": edges[1:], "spread": s_rms, "rmse": rmse, "count": count}
    )
    return table[table["count"] > 0].reset_index(drop=True)
