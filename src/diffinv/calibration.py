"""Split conformal calibration of per-pixel posterior intervals (distribution-free).

The posterior samples of a stage give each pixel a central interval [lo, hi] at level
1 − α (empirical sample quantiles), its midpoint m and half-width h. Calibration widens or
narrows those intervals by one number λ chosen on CALIBRATION cases, disjoint from the
cases the intervals are evaluated on (Angelopoulos et al. 2022, "Image-to-image regression
with distribution-free uncertainty quantification"; Teneggi et al. 2023, K-RCPS):

- ``scaled``: score s = |y − m| / h with m = (lo + hi) / 2, h = (hi − lo) / 2; interval
  m ± λ·h (λ = 1: the raw interval). The midpoint, not the sample mean: a few outlying
  samples drag the mean out of a narrow interval and would give a pixel a huge score.
- ``cqr``: score s = max(lo − y, y − hi) (conformalised quantile regression, Romano et al.
  2019); interval [lo − λ, hi + λ] (λ may be negative: the intervals then shrink).

λ is the ⌈(n+1)(1−α)⌉-th smallest of the n calibration scores (n = calibration pixels:
cases × channels × pixels), i.e. their empirical quantile at level ⌈(n+1)(1−α)⌉/n
(infinite when that exceeds n: too few pixels for the level).

Guarantee (what is, and is not, promised). If the calibration pixels and an evaluation
pixel are exchangeable — e.g. the pixel is drawn at random from a case drawn from the same
population as the calibration cases, with the pixels of all cases treated as one
exchangeable pool — then, marginally over the calibration draw, the case and the pixel,
P(y ∈ C(x)) ≥ 1 − α, and P(y ∈ C(x)) ≤ 1 − α + 1/(n+1) when the scores have no ties. So
the expected fraction of evaluation pixels covered is at least 1 − α. It does NOT promise:
coverage on any one case (a case unlike the calibration cases can be covered far less),
coverage at any one pixel location (background and edges can be over- or under-covered
while the average is right), or that the realised fraction on a finite evaluation set is
within binomial error of 1 − α: pixels of one case are correlated, so the fraction
fluctuates by more than √(α(1−α)/N) over N pixels. Calibration on cases from another scan,
protocol or acceleration breaks exchangeability and with it the guarantee.

The core (:func:`calibrate`, :class:`Calibration`) works on real arrays (case, sample, ...);
:func:`as_channels` turns complex images into (real, imag) channels, which share one λ.
:func:`calibrate_stores` is the stage adapter (any store with ``samples`` and ``truth`` or
``reference``: MRI, 3D CT, ...).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diffinv.errors import InputError
from diffinv.uncertainty import as_channels

METHODS = ("scaled", "cqr")
#: Nominal levels of the coverage curve (raw and calibrated at each).
CURVE_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def central_interval(samples: np.ndarray, level: float, axis: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel central interval of the samples at ``level``: (lo, hi) sample quantiles."""
    lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2], axis=axis)
    return lo, hi


def _half_width(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(hi − lo)/2 floored at 1e-6 of its median (or 1e-30): a zero-spread pixel keeps a finite score."""
    h = (hi - lo) / 2
    positive = h[h > 0]
    floor = 1e-6 * float(np.median(positive)) if positive.size else 1e-30
    return np.maximum(h, max(floor, 1e-30))


def scores(samples: np.ndarray, truth: np.ndarray, level: float, method: str = "scaled", axis: int = 1):
    """Conformity scores of every pixel (larger: the truth is further outside the interval)."""
    if method not in METHODS:
        raise ValueError(f"calibration method {method!r}: use one of {', '.join(METHODS)}")
    lo, hi = central_interval(samples, level, axis)
    if method == "scaled":
        return np.abs(truth - (lo + hi) / 2) / _half_width(lo, hi)
    return np.maximum(lo - truth, truth - hi)


def conformal_quantile(values: np.ndarray, alpha: float) -> tuple[float, float]:
    """(λ, q): the ⌈(n+1)(1−α)⌉-th smallest of the n ``values`` and its level q = ⌈(n+1)(1−α)⌉/n.

    λ = +inf when ⌈(n+1)(1−α)⌉ > n (fewer than 1/α − 1 calibration pixels).
    """
    flat = np.asarray(values, dtype=np.float64).ravel()
    n = flat.size
    if n == 0:
        raise ValueError("no calibration scores")
    k = math.ceil((n + 1) * (1 - alpha) - 1e-12)
    if k > n:
        return math.inf, k / n
    return float(np.partition(flat, k - 1)[k - 1]), k / n


@dataclass(frozen=True)
class Calibration:
    """The calibration record: λ and what it was computed from."""

    method: str
    level: float
    lam: float
    quantile_level: float
    calibration_cases: int
    calibration_pixels: int
    cases: tuple[str, ...] = ()

    def bounds(self, samples: np.ndarray, axis: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated per-pixel interval (lo, hi) of ``samples`` (sample axis ``axis``)."""
        lo, hi = central_interval(samples, self.level, axis)
        if self.method == "scaled":
            centre, h = (lo + hi) / 2, _half_width(lo, hi)
            return centre - self.lam * h, centre + self.lam * h
        return lo - self.lam, hi + self.lam

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["cases"] = list(self.cases)
        return out


def calibrate(
    samples: np.ndarray,
    truth: np.ndarray,
    level: float = 0.9,
    method: str = "scaled",
    axis: int = 1,
    cases: Sequence[str] = (),
) -> Calibration:
    """λ from calibration cases only: ``samples`` (case, sample, ...) real, ``truth`` (case, ...).

    See the module docstring for the guarantee. ``cases`` labels the calibration cases
    (kept in the record).
    """
    if not 0 < level < 1:
        raise ValueError(f"calibration level {level}: must be in (0, 1)")
    s = scores(samples, truth, level, method, axis)
    lam, q = conformal_quantile(s, 1 - level)
    return Calibration(method, float(level), lam, q, int(samples.shape[0]), int(s.size), tuple(cases))


def coverage_and_width(lo: np.ndarray, hi: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Fraction of truth values inside [lo, hi] and the mean width hi − lo."""
    return float(((truth >= lo) & (truth <= hi)).mean()), float((hi - lo).mean())


def _truth_name(ds) -> str:
    for name in ("truth", "reference"):
        if name in ds:
            return name
    raise InputError(
        Path(ds.encoding.get("source", "store")),
        "no 'truth' or 'reference' variable: calibration needs reference data",
        "calibrate on stores made from files with fully sampled (reference) data",
    )


def calibrate_stores(
    calibration: Path,
    evaluation: Path,
    out_store: Path,
    out_csv: Path,
    figure: Path | None = None,
    level: float = 0.9,
    method: str = "scaled",
    curve_levels: Sequence[float] = CURVE_LEVELS,
):
    """Calibrate on the ``calibration`` store's cases, apply to the ``evaluation`` store's.

    Both stores hold ``samples`` (case, sample, ...) (complex: calibrated as real and
    imaginary channels sharing λ) and ``truth`` (or ``reference``). Refuses stores that
    share a case label. Writes ``out_store``: ``lower_raw``/``upper_raw`` (the central
    sample interval at ``level``) and ``lower``/``upper`` (calibrated), and the record
    (attribute ``calibration``, JSON); ``out_csv``: one row per nominal level of the
    coverage curve (``curve_levels`` and ``level``), raw against calibrated coverage and
    mean width on the evaluation cases, each with its own λ; ``figure``: coverage curve,
    rank histogram and error against predicted std, raw and calibrated.
    Returns (record at ``level``, table).
    """
    import pandas as pd
    import xarray as xr

    from diffinv.io.store import atomic_path, open_zarr, provenance, set_provenance, write_zarr

    cal_ds, ev_ds = open_zarr(calibration), open_zarr(evaluation)
    case_dim = cal_ds["samples"].dims[0]
    shared = sorted(set(map(str, cal_ds[case_dim].values)) & set(map(str, ev_ds[case_dim].values)))
    if shared:
        raise InputError(
            calibration,
            f"shares {len(shared)} case(s) with {evaluation} (e.g. {shared[0]}): calibration cases "
            "must be disjoint from evaluation cases",
            "calibrate on other slices (mri.calibration.cases)",
        )
    cal_s = as_channels(cal_ds["samples"].values)
    cal_t = as_channels(cal_ds[_truth_name(cal_ds)].values)
    ev_s = as_channels(ev_ds["samples"].values)
    ev_t = as_channels(ev_ds[_truth_name(ev_ds)].values)
    cal_cases = tuple(map(str, cal_ds[case_dim].values))
    rows, records = [], {}
    for lvl in sorted({*curve_levels, level}):
        rec = calibrate(cal_s, cal_t, lvl, method, cases=cal_cases)
        records[lvl] = rec
        raw = coverage_and_width(*central_interval(ev_s, lvl), ev_t)
        cal = coverage_and_width(*rec.bounds(ev_s), ev_t)
        rows.append(
            {
                "method": ev_ds.attrs.get("method", ""),
                "acceleration": ev_ds.attrs.get("acceleration", ""),
                "level": lvl,
                "primary": bool(np.isclose(lvl, level)),
                "calibration_method": method,
                "lambda": rec.lam,
                "quantile_level": rec.quantile_level,
                "calibration_cases": rec.calibration_cases,
                "calibration_pixels": rec.calibration_pixels,
                "evaluation_cases": int(ev_s.shape[0]),
                "coverage_raw": raw[0],
                "coverage_calibrated": cal[0],
                "width_raw": raw[1],
                "width_calibrated": cal[1],
            }
        )
    table = pd.DataFrame(rows)
    rec = records[level]
    lo_raw, hi_raw = central_interval(ev_s, level)
    lo, hi = rec.bounds(ev_s)
    dims = tuple(d for d in ev_ds["samples"].dims if d != "sample")
    if np.iscomplexobj(ev_ds["samples"].values):
        dims = (*dims, "channel")
    coords = {d: ev_ds[d].values for d in dims if d in ev_ds.coords}
    if "channel" in dims:
        coords["channel"] = ["real", "imag"]
    units = ev_ds["samples"].attrs.get("units", "a.u.")
    what = f"{round(100 * level)} % interval"
    out = xr.Dataset(
        {
            "lower_raw": (
                dims,
                lo_raw.astype(np.float32),
                {"long_name": f"raw {what}: lower sample quantile"},
            ),
            "upper_raw": (
                dims,
                hi_raw.astype(np.float32),
                {"long_name": f"raw {what}: upper sample quantile"},
            ),
            "lower": (dims, lo.astype(np.float32), {"long_name": f"conformally calibrated {what}: lower"}),
            "upper": (dims, hi.astype(np.float32), {"long_name": f"conformally calibrated {what}: upper"}),
        },
        coords=coords,
    )
    for v in out.data_vars:
        out[v].attrs["units"] = units
    out.attrs.update(
        calibration=json.dumps(
            {**rec.as_dict(), "calibration_store": str(calibration), "evaluation_store": str(evaluation)}
        ),
        method=str(ev_ds.attrs.get("method", "")),
        acceleration=ev_ds.attrs.get("acceleration", ""),
        guarantee="split conformal: marginal coverage >= level over pixels and cases, under "
        "exchangeability of calibration and evaluation pixels; not per case or per pixel",
    )
    record = {"step": "calibrate", "calibration": str(calibration), "evaluation": str(evaluation)}
    write_zarr(set_provenance(out, provenance(**record, record=rec.as_dict())), out_store)
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    if figure is not None:
        from diffinv.plots import plot_calibration

        what = [str(ev_ds.attrs.get(k, "")) for k in ("method", "task")]
        if ev_ds.attrs.get("acceleration"):
            what.append(f"{ev_ds.attrs['acceleration']}x")
        title = f"{' '.join(w for w in what if w)}: {method} calibration"
        with atomic_path(figure) as tmp:
            plot_calibration(table, ev_s, ev_t, rec, title, Path(tmp))
    return rec, table


def calibrate_from_arguments(args: Any, level: float, score: str) -> Calibration:
    """The ``calibrate`` verbs: :func:`calibrate_stores` on the paths of ``args`` (``calibration``,
    ``evaluation``, ``output``, ``table``, ``figure``); prints the coverage curve and λ."""
    rec, table = calibrate_stores(
        Path(args.calibration),
        Path(args.evaluation),
        Path(args.output),
        Path(args.table),
        Path(args.figure) if args.figure else None,
        level,
        score,
    )
    print(table.to_string(index=False))
    print(
        f"wrote {args.output}: lambda={rec.lam:.4g} at level {rec.level} from "
        f"{rec.calibration_cases} cases ({rec.calibration_pixels} pixel channels)"
    )
    return rec
