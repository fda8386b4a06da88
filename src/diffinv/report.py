"""Summary tables for the Snakemake report: a metrics CSV as a small standalone HTML page.

The report shows an ``.html`` item inline (in a frame when its row is opened), so a rule
that marks ``diffinv report-table``'s output with ``report(...)`` puts the numbers on the
report page instead of a CSV to download. Numbers are rounded for reading (:func:`cell`);
the CSV keeps full precision. A caption names the table; a footnote explains every
column it knows (:data:`COLUMNS`).
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from diffinv.errors import InputError
from diffinv.io.store import atomic_path

#: What each known summary column means (the table's footnote lists those present).
COLUMNS: dict[str, str] = {
    "method": "sampler and guidance, solver-guidance",
    "strategy": "k-space line selection: ads (active, entropy of the posterior particles) "
    "or a fixed mask at the same line budget",
    "acceleration": "k-space undersampling factor (columns in / columns acquired)",
    "lines": "k-space columns acquired",
    "reconstruction": "posterior_mean: mean of the posterior samples; zero_filled: inverse FFT "
    "of the measured k-space; no_prior: data consistency and value constraint iterated "
    "without a prior",
    "cases": "slices averaged",
    "samples": "posterior samples per slice",
    "psnr": "peak signal-to-noise ratio of the magnitude, dB (higher is better)",
    "ssim": "structural similarity of the magnitude, 0-1 (higher is better)",
    "nmse": "normalised mean squared error, ||x - truth||² / ||truth||² (lower is better)",
    "rmse": "root mean squared error of the posterior mean's magnitude, a.u.",
    "mean_std": "mean posterior standard deviation, a.u. (compare with rmse: calibrated ≈ rmse)",
    "coverage_50": "fraction of pixels whose true magnitude lies in the central 50 % interval of the "
    "sampled magnitudes, all pixels (calibrated ≈ 50 %; low by construction in the background, "
    "see coverage_background_*)",
    "coverage_90": "as coverage_50, for the central 90 % interval",
    "coverage_95": "as coverage_50, for the central 95 % interval",
    "coverage_complex_50": "complex image: per-pixel central 50 % intervals of the real and of the imaginary "
    "part, each against the truth's; the mean of the two channels' coverages (calibrated ≈ 50 %)",
    "coverage_complex_90": "as coverage_complex_50, for the central 90 % interval",
    "coverage_complex_95": "as coverage_complex_50, for the central 95 % interval",
    "coverage_object_50": "as coverage_50, inside the object support only (|truth| > 10 % of the slice's "
    "maximum)",
    "coverage_object_90": "as coverage_object_50, for the central 90 % interval",
    "coverage_object_95": "as coverage_object_50, for the central 95 % interval",
    "coverage_background_50": "as coverage_50, outside the object support: the true magnitude is ~0 "
    "while sampled magnitudes are > 0 (Rician floor), so magnitude intervals rarely cover it",
    "coverage_background_90": "as coverage_background_50, for the central 90 % interval",
    "coverage_background_95": "as coverage_background_50, for the central 95 % interval",
    "support_fraction": "fraction of pixels inside the object support",
    "crps": "continuous ranked probability score of the samples (fair ensemble estimator), per "
    "real/imaginary channel and pixel, a.u. (lower is better)",
    "spread_skill": "spread-skill ratio √((M+1)/M)·spread/RMSE on the real/imaginary channels "
    "(1: calibrated; < 1: samples too narrow)",
    "calibration_level": "nominal level of the conformally calibrated intervals",
    "calibration_method": "conformal score: scaled (midpoint ± λ·half-width of the central sample "
    "interval) or cqr ([lo − λ, hi + λ])",
    "calibration_lambda": "λ, the conformal quantile of the scores on held-out calibration slices",
    "calibration_cases": "held-out slices λ was chosen on (never evaluated)",
    "coverage_complex_raw": "coverage of the complex channels by the raw sample intervals at "
    "calibration_level, evaluation slices",
    "coverage_complex_calibrated": "the same for the calibrated intervals (guarantee: ≥ level marginally "
    "over pixels and slices, under exchangeability)",
    "raw_width": "mean width of the raw intervals at calibration_level, a.u.",
    "calibrated_width": "mean width of the calibrated intervals, a.u.",
    "hallucination_score": "mean hallucination score of the samples (lower is better)",
    "relative_residual": "relative data residual ||A x - y|| / ||y|| of the samples",
    "ssim_gain_of_ads_over_best_fixed": "SSIM of ADS minus that of the best fixed mask at "
    "that acceleration (positive: ADS wins)",
}

#: Decimal places of the columns read in a fixed unit; other numbers get 4 significant digits.
DECIMALS = {"psnr": 2, "ssim": 4, "ssim_gain_of_ads_over_best_fixed": 4}
PERCENT = ("coverage_",)

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 12px; color: #111; background: #fff; }
table { border-collapse: collapse; }
caption { text-align: left; font-weight: 600; margin-bottom: 6px; }
th, td { padding: 3px 8px; border-bottom: 1px solid #ddd; white-space: nowrap; }
th { background: #f3f4f6; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.group td { border-top: 2px solid #999; }
.notes { margin-top: 10px; font-size: 12px; color: #333; max-width: 60em; }
.notes dt { font-family: monospace; font-weight: 600; }
.notes dd { margin: 0 0 4px 1.5em; }
"""


def cell(column: str, value: object) -> str:
    """``value`` of ``column`` as shown in the table: integers as they are, ``psnr`` to 0.01 dB,
    ``ssim`` to 4 decimals, coverages in percent to 0.1, other floats to 4 significant digits;
    missing as an en dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if column.startswith(PERCENT):
        return f"{100 * value:.1f} %"
    if column in DECIMALS:
        return f"{value:.{DECIMALS[column]}f}"
    return f"{value:.4g}"


def table_html(table: pd.DataFrame, title: str, notes: Mapping[str, str] | None = None) -> str:
    """``table`` as a standalone HTML page: caption ``title``, one row per CSV row (a rule
    between groups of the first column), and a footnote with the meaning of the columns."""
    notes = {**COLUMNS, **(notes or {})}
    first = table.columns[0] if len(table.columns) else None
    rows = []
    previous = None
    for record in table.to_dict("records"):
        group = record.get(first)
        cls = ' class="group"' if previous is not None and group != previous else ""
        previous = group
        cells = "".join(
            f'<td class="{"num" if isinstance(v, (int, float)) and not isinstance(v, bool) else "text"}"'
            f' data-column="{html.escape(str(c))}">{html.escape(cell(str(c), v))}</td>'
            for c, v in record.items()
        )
        rows.append(f"<tr{cls}>{cells}</tr>")
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    known = [c for c in table.columns if str(c) in notes]
    footnote = "".join(f"<dt>{html.escape(str(c))}</dt><dd>{html.escape(notes[str(c)])}</dd>" for c in known)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>\n"
        f'<table class="summary"><caption>{html.escape(title)}</caption>\n'
        f"<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody></table>\n"
        f'<dl class="notes">{footnote}</dl>\n'
        "<p class=\"notes\">Means over cases; '–': not defined for that row. "
        "Full precision in the CSV beside this table.</p>\n</body></html>\n"
    )


def write_table(csv: Path, out: Path, title: str) -> Path:
    """Read the summary ``csv`` and write its HTML table to ``out`` (atomically)."""
    try:
        table = pd.read_csv(csv)
    except (OSError, ValueError) as exc:
        raise InputError(
            csv, f"not a readable CSV ({exc})", "pass a summary CSV written by the pipeline"
        ) from exc
    with atomic_path(out) as tmp:
        Path(tmp).write_text(table_html(table, title), encoding="utf-8")
    return out
