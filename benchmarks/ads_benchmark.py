"""ADS benchmark: ADS against each fixed mask per acceleration, and time per slice on CPU
(and on CUDA when available), on the demo data and prior or your own.

Runs the ADS stage's library call (``run_ads``) exactly as the pipeline does, per device
and acceleration, and prints mean PSNR / SSIM / NMSE per strategy, the SSIM gain of ADS
over the best fixed mask, the wall time per slice and the NFE per posterior sample
(denoiser evaluations per particle row; ADS: acquisition pass + final sampling). Writes
``benchmarks/out/ads_benchmark.csv`` and ``.png``.

    PYTHONPATH=src python benchmarks/ads_benchmark.py [--config config/config.yaml]
        [--prior results/mri/demo/prior] [--data results/mri/demo/data/eval.zarr]
        [--train results/mri/demo/data/train.zarr] [--accelerations 4 8] [--devices cpu cuda]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import write_csv

from diffinv.config import load_config
from diffinv.diffusion.networks import load_denoiser
from diffinv.plotstyle import plt  # Agg backend and the project's figure defaults
from diffinv.stages.ads.acquisition import ads_inputs, ads_metrics, run_ads

OUT = Path(__file__).parent / "out"


def bench(cfg: dict[str, Any], args: argparse.Namespace, device: str) -> list[dict[str, Any]]:
    """Mean metrics, wall time per slice and NFE per posterior sample of every strategy at every
    acceleration on ``device``."""
    prior = load_denoiser(args.prior, device)
    cases, train, method, sampling = ads_inputs(cfg, args.data, args.train, args.cases)
    rows = []
    for acc in args.accelerations:
        start = time.perf_counter()
        ds = run_ads(
            cases,
            train,
            prior,
            acc,
            method,
            sampling,
            cfg["ads"],
            cfg["mri"]["data"]["center_fraction"],
            cfg["seed"],
            device,
            {},
        )
        total = time.perf_counter() - start
        metrics = ads_metrics(ds)
        for s, strategy in enumerate(ds["strategy"].values):
            per = [r for r in metrics if r["strategy"] == strategy]
            rows.append(
                {
                    "device": device,
                    "acceleration": acc,
                    "lines": int(ds.attrs["lines"]),
                    "strategy": str(strategy),
                    "cases": len(cases),
                    **{k: float(np.mean([r[k] for r in per])) for k in ("psnr", "ssim", "nmse")},
                    "time_per_slice_s": float(ds["wall_time_s"].values[s].mean()),
                    "nfe_per_sample": float(ds["nfe"].values[s].mean()),
                    "greedy_search_s": float(ds.attrs["greedy_search_s"]),
                    "stage_total_s": total,
                }
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=Path("config/config.yaml"))
    ap.add_argument("--prior", type=Path, default=Path("results/mri/demo/prior"))
    ap.add_argument("--data", type=Path, default=Path("results/mri/demo/data/eval.zarr"))
    ap.add_argument("--train", type=Path, default=Path("results/mri/demo/data/train.zarr"))
    ap.add_argument(
        "--accelerations", type=int, nargs="+", default=None, help="default: the config's ads.accelerations"
    )
    ap.add_argument("--cases", type=int, default=None, help="default: the config's ads.cases")
    ap.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when available")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    args.accelerations = args.accelerations or cfg["ads"]["accelerations"]
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    rows = [r for d in devices for r in bench(cfg, args, d)]

    print(
        f"\n{'device':<6} {'acc':>3} {'strategy':<17} {'PSNR':>6} {'SSIM':>6} {'NMSE':>7} "
        f"{'s/slice':>8} {'NFE/sample':>10}"
    )
    for r in rows:
        print(
            f"{r['device']:<6} {r['acceleration']:>3} {r['strategy']:<17} {r['psnr']:6.2f} "
            f"{r['ssim']:6.4f} {r['nmse']:7.4f} {r['time_per_slice_s']:8.2f} {r['nfe_per_sample']:10.0f}"
        )
    for device, acc in dict.fromkeys((r["device"], r["acceleration"]) for r in rows):
        group = [r for r in rows if r["device"] == device and r["acceleration"] == acc]
        ads = next(r for r in group if r["strategy"] == "ads")
        best = max((r for r in group if r["strategy"] != "ads"), key=lambda r: r["ssim"])
        print(
            f"{device} {acc}x: ADS SSIM {ads['ssim']:.4f} vs best fixed ({best['strategy']}) "
            f"{best['ssim']:.4f}: gain {ads['ssim'] - best['ssim']:+.4f}"
        )

    write_csv(OUT / "ads_benchmark.csv", rows)
    groups = list(dict.fromkeys((r["device"], r["acceleration"]) for r in rows))
    fig, axes = plt.subplots(1, len(groups), figsize=(4 * len(groups), 3.4), squeeze=False)
    for ax, (device, acc) in zip(axes[0], groups):
        group = [r for r in rows if r["device"] == device and r["acceleration"] == acc]
        ax.bar(
            [r["strategy"] for r in group],
            [r["ssim"] for r in group],
            color=["C3" if r["strategy"] == "ads" else "C0" for r in group],
        )
        ax.set_ylim(min(r["ssim"] for r in group) - 0.05, max(r["ssim"] for r in group) + 0.02)
        ax.set_title(f"{acc}x ({device})")
        ax.tick_params(axis="x", rotation=45)
    axes[0][0].set_ylabel("mean SSIM of the posterior mean")
    fig.savefig(OUT / "ads_benchmark.png")
    print(f"\nwrote {OUT / 'ads_benchmark.csv'} and .png")


if __name__ == "__main__":
    main()
