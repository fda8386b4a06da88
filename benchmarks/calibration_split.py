"""How the choice of calibration slices moves split-conformal coverage (docs/uncertainty.md).

Pools the evaluation and calibration slices of a finished demo run (one method, per
acceleration), then recalibrates under three splits of that pool into calibration and
evaluation halves: by volume (one volume calibrates, the other is evaluated, both ways),
alternating slices (both ways), and ``--splits`` random halves. Prints and writes the
calibrated coverage and width of the central interval at ``--level`` on the evaluated half.

    PYTHONPATH=src python benchmarks/calibration_split.py --root DEMO_CLONE
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from _common import write_csv

from diffinv.calibration import calibrate, central_interval, coverage_and_width
from diffinv.io.store import open_zarr
from diffinv.uncertainty import as_channels


def pooled(run: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(samples as channels, truth as channels, case labels) of both stores of ``run``, in store order."""
    stores = [open_zarr(run / name) for name in ("posterior.zarr", "calibration_samples.zarr")]
    labels = [str(c) for ds in stores for c in ds["case"].values]
    order = sorted(
        range(len(labels)), key=lambda i: (labels[i].rsplit(":", 1)[0], int(labels[i].rsplit(":", 1)[1]))
    )
    samples = np.concatenate([as_channels(ds["samples"].values) for ds in stores])[order]
    truth = np.concatenate([as_channels(ds["truth"].values) for ds in stores])[order]
    return samples, truth, [labels[i] for i in order]


def row(samples, truth, cal, ev, level: float) -> dict[str, float]:
    rec = calibrate(samples[cal], truth[cal], level)
    raw, raw_width = coverage_and_width(*central_interval(samples[ev], level), truth[ev])
    covered, width = coverage_and_width(*rec.bounds(samples[ev]), truth[ev])
    return {
        "lambda": rec.lam,
        "coverage_raw": raw,
        "coverage": covered,
        "width_raw": raw_width,
        "width": width,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, required=True, help="clone whose demo has run (results/mri/...)")
    p.add_argument("--dataset", default="demo")
    p.add_argument("--method", default="dpmpp_2m-dds")
    p.add_argument("--accelerations", type=int, nargs="+", default=[4, 8])
    p.add_argument("--level", type=float, default=0.9)
    p.add_argument("--splits", type=int, default=200, help="random halves")
    args = p.parse_args()
    rows = []
    for acc in args.accelerations:
        samples, truth, labels = pooled(
            args.root / "results" / "mri" / args.dataset / f"{acc}x" / args.method
        )
        volumes = [label.rsplit(":", 1)[0] for label in labels]
        names = sorted(set(volumes))
        idx = np.arange(len(labels))
        splits = {
            f"volume {b} calibrates {a}": (idx[np.isin(volumes, b)], idx[np.isin(volumes, a)])
            for a, b in ((names[0], names[-1]), (names[-1], names[0]))
        }
        splits |= {
            "odd slices calibrate even": (idx[1::2], idx[::2]),
            "even calibrate odd": (idx[::2], idx[1::2]),
        }
        for name, (cal, ev) in splits.items():
            rows.append({"acceleration": acc, "split": name, **row(samples, truth, cal, ev, args.level)})
        rng = np.random.default_rng(0)
        half = len(labels) // 2
        draws = [
            row(samples, truth, *np.split(rng.permutation(len(labels)), [half]), args.level)
            for _ in range(args.splits)
        ]
        covered = np.array([d["coverage"] for d in draws])
        rows.append(
            {
                "acceleration": acc,
                "split": f"random halves ({args.splits}): mean, sd {covered.std():.3f}, "
                f"in [0.88, 0.92] {np.mean((covered >= 0.88) & (covered <= 0.92)):.2f}",
                **{k: float(np.mean([d[k] for d in draws])) for k in draws[0]},
            }
        )
    print(pd.DataFrame(rows).to_string(index=False, float_format="%.3f"))
    out = Path(__file__).parent / "out" / "calibration_split.csv"
    write_csv(out, rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
