"""Ensemble calibration of atmos posteriors: spread inflation and split-conformal intervals (issue 13).

Both are fitted on CALIBRATION times disjoint from the evaluated ones, per channel:

- Spread inflation: each member's deviation from the ensemble mean is scaled by
  k = 1 / SSR, with SSR = √((M+1)/M)·spread/RMSE the finite-ensemble spread-skill ratio
  (Fortin et al. 2014, Eq. 14; :func:`diffinv.uncertainty.spread_skill`) of the calibration
  times: x_j ← x̄ + k (x_j − x̄). The ensemble mean, hence its RMSE, is unchanged, and the
  corrected SSR of the calibration times becomes exactly 1 (spread scales by k, the error
  does not). This is the multiplicative variance inflation of ensemble data assimilation
  (Anderson & Anderson 1999) fitted to the spread-skill identity.
- Per-pixel intervals at a level (90 %): split conformal calibration of the central
  member interval of the inflated ensemble (``scaled`` score |y − m|/h, Angelopoulos et al.
  2022), by :func:`diffinv.calibration.calibrate` and :meth:`Calibration.bounds`; its
  marginal-coverage guarantee and its limits are stated in :mod:`diffinv.calibration`.

:func:`calibrate_stores` is the store adapter (``diffinv atmos-calibrate``): it writes the
evaluation store with inflated members, their std and the conformal bounds, and a CSV of raw
against calibrated scores.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from diffinv.calibration import Calibration, calibrate, coverage_and_width
from diffinv.errors import ConfigError, InputError
from diffinv.io.store import atomic_path, get_provenance, provenance, set_provenance, write_zarr
from diffinv.stages.atmos.evaluate import _pool, channels, open_store, stacked
from diffinv.stages.atmos.metrics import field_metrics
from diffinv.uncertainty import spread_skill


def inflation_factor(members: np.ndarray, truth: np.ndarray, axis: int = 0) -> float:
    """k = 1 / SSR of ``members`` (member axis ``axis``) against ``truth``: the factor on the
    deviations from the ensemble mean that makes the corrected spread-skill ratio 1 (Fortin et al.
    2014). Refused for an ensemble without spread or an exact mean (k undefined)."""
    ssr = spread_skill(np.asarray(members, dtype=np.float64), np.asarray(truth, dtype=np.float64), axis)
    if not np.isfinite(ssr) or ssr <= 0 or ssr > 1e12:
        raise ConfigError(
            f"atmos calibration: spread-skill ratio {ssr} on the calibration times "
            "(fix: calibrate on ensembles with spread and an imperfect mean)"
        )
    return 1.0 / ssr


def inflate(members: np.ndarray, k: float, axis: int = 0) -> np.ndarray:
    """x̄ + k (x_j − x̄) along the member axis: spread × k, ensemble mean unchanged."""
    m = np.asarray(members, dtype=np.float64)
    mean = m.mean(axis=axis, keepdims=True)
    return mean + k * (m - mean)


@dataclass(frozen=True)
class ChannelCalibration:
    """One channel's calibration: inflation factor k and the conformal record of the inflated
    ensemble's central interval."""

    channel: str
    inflation: float
    conformal: Calibration

    def apply(self, members: np.ndarray, axis: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(inflated members, conformal lower, conformal upper) of ``members`` (time, member, ...)."""
        inflated = inflate(members, self.inflation, axis)
        lo, hi = self.conformal.bounds(inflated, axis)
        return inflated, lo, hi

    def as_dict(self) -> dict[str, Any]:
        """The record as JSON-ready values."""
        return {"channel": self.channel, "inflation": self.inflation, "conformal": self.conformal.as_dict()}


def fit(
    members: np.ndarray,
    truth: np.ndarray,
    names: Sequence[str],
    level: float = 0.9,
    times: Sequence[str] = (),
) -> list[ChannelCalibration]:
    """Per channel: k on the calibration ``members`` (T, M, C, H, W) against ``truth`` (T, C, H, W),
    then the conformal λ of the inflated members (``times`` label the calibration cases)."""
    m, t = np.asarray(members, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    if m.ndim != 5 or t.shape != (m.shape[0], *m.shape[2:]) or len(names) != m.shape[2]:
        raise ConfigError(
            f"atmos calibration: members {m.shape}, truth {t.shape} and {len(names)} names must be "
            "(T, M, C, H, W), (T, C, H, W) and one name per channel"
        )
    out = []
    for c, name in enumerate(names):
        k = inflation_factor(m[:, :, c], t[:, c], axis=1)
        record = calibrate(inflate(m[:, :, c], k, 1), t[:, c], level, "scaled", axis=1, cases=times)
        out.append(ChannelCalibration(str(name), k, record))
    return out


def _times(ds: xr.Dataset) -> list[str]:
    """The store's times as ISO strings (the case labels)."""
    return [str(v) for v in np.datetime_as_string(ds["time"].values, unit="s")]


def _check_pair(cal: xr.Dataset, ev: xr.Dataset, calibration: Path, evaluation: Path) -> None:
    """Refuse calibration and evaluation stores that share a time, differ in channels or in
    ensemble size (the central member interval and k depend on M)."""
    shared = sorted(set(_times(cal)) & set(_times(ev)))
    if shared:
        raise InputError(
            calibration,
            f"shares {len(shared)} time(s) with {evaluation} (e.g. {shared[0]})",
            "calibrate on times disjoint from the evaluated ones (e.g. the validation day)",
        )
    if channels(cal) != channels(ev):
        raise InputError(calibration, f"its channels differ from {evaluation}'s", "use stores of one prior")
    if cal.sizes["member"] != ev.sizes["member"]:
        raise InputError(
            calibration,
            f"{cal.sizes['member']} members against {ev.sizes['member']} in {evaluation}",
            "sample both with the same atmos.sampling.samples",
        )


def _scores(members: np.ndarray, truth: np.ndarray, names: Sequence[str]) -> pd.DataFrame:
    """:func:`field_metrics` of (T, M, C, H, W) members pooled over times."""
    return field_metrics(_pool(np.moveaxis(members, 1, 0)), _pool(truth), names)


def calibrate_stores(
    calibration: Path, evaluation: Path, out_store: Path, out_csv: Path, level: float = 0.9
) -> pd.DataFrame:
    """``diffinv atmos-calibrate``: fit on the ``calibration`` store's times, apply to ``evaluation``.

    Writes ``out_store``: the evaluation store with inflated members and their std (mean, truth,
    baselines and stations unchanged), ``VAR_lower`` / ``VAR_upper`` (conformal interval at
    ``level``), method ``<method>_calibrated`` and the calibration record (attribute
    ``calibration``); ``out_csv``: per channel, the raw and calibrated RMSE, CRPS, spread,
    spread-skill and coverage of the central member interval at 90 %, the conformal interval's
    coverage and mean width, k and λ. Returns the table.
    """
    cal, ev = open_store(calibration), open_store(evaluation)
    _check_pair(cal, ev, calibration, evaluation)
    ch = channels(ev)
    names = [c.name for c in ch]
    records = fit(stacked(cal), stacked(cal, "_truth"), names, level, _times(cal))
    raw, truth = stacked(ev).astype(np.float64), stacked(ev, "_truth").astype(np.float64)
    calibrated = np.empty_like(raw)
    out = ev.copy(deep=True)
    rows = []
    for c, (channel, rec) in enumerate(zip(ch, records)):
        inflated, lo, hi = rec.apply(raw[:, :, c])
        calibrated[:, :, c] = inflated
        cov, width = coverage_and_width(lo, hi, truth[:, c])
        rows.append({"coverage_conformal": cov, "width_conformal": width})
        where = {"level": channel.level} if channel.level is not None else {}
        dtype = ev[channel.variable].dtype
        out[channel.variable].loc[where] = inflated.astype(dtype)
        out[f"{channel.variable}_std"].loc[where] = inflated.std(axis=1, ddof=1).astype(dtype)
        for name, bound in (("lower", lo), ("upper", hi)):
            var = f"{channel.variable}_{name}"
            if var not in out:
                out[var] = xr.zeros_like(ev[f"{channel.variable}_truth"])
                out[var].attrs = {
                    **ev[channel.variable].attrs,
                    "long_name": f"conformal {round(100 * level)} % interval ({name}), inflated ensemble",
                }
            out[var].loc[where] = bound.astype(out[var].dtype)
    before, after = _scores(raw, truth, names), _scores(calibrated, truth, names)
    table = pd.concat(
        [
            before.assign(ensemble="raw", coverage_conformal=np.nan, width_conformal=np.nan),
            after.assign(ensemble="calibrated", **pd.DataFrame(rows)),
        ],
        ignore_index=True,
    )
    table["inflation"] = [r.inflation for r in records] * 2
    table["conformal_lambda"] = [r.conformal.lam for r in records] * 2
    table["level"] = level
    table["calibration_times"] = cal.sizes["time"]
    table["evaluation_times"] = ev.sizes["time"]
    table.insert(0, "method", ev.attrs["method"])
    record = {
        "level": level,
        "channels": [r.as_dict() for r in records],
        "calibration_store": str(calibration),
        "evaluation_store": str(evaluation),
    }
    out.attrs.update(method=f"{ev.attrs['method']}_calibrated", calibration=json.dumps(record))
    prov = provenance(step="atmos-calibrate", record=record, evaluation_provenance=get_provenance(ev))
    write_zarr(set_provenance(out, prov), out_store)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    return table
