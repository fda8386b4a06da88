"""Benchmark of the MRI posterior-sampling stage (issue 2).

1. Cost per NFE of guided sampling against a bare denoiser forward pass on the same batch
   (overhead ratio), for each guidance.
2. PSNR / SSIM / NMSE of the posterior mean against zero-filled and the no-prior baseline
   at each acceleration, with interval coverage.

Usage (after `make demo`):
    python benchmarks/mri_posterior.py --prior results/mri/demo/prior \
        --data results/mri/demo/data/eval.zarr [--quick]
Writes benchmarks/out/mri_posterior_{timing,quality}.csv and a PNG; prints tables.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from diffinv.config import validate_config
from diffinv.diffusion.networks import load_denoiser
from diffinv.guidance import make_guidance
from diffinv.io.store import write_zarr
from diffinv.operators.mri import sampling_mask
from diffinv.plots import plt
from diffinv.stages.core import Method
from diffinv.stages.evaluate import evaluate_store
from diffinv.stages.mri.cases import case_problem, load_cases
from diffinv.stages.mri.run import reconstruct

OUT = Path(__file__).resolve().parent / "out"


def time_per_nfe(prior, case, guidance: str, batch: int, repeats: int) -> tuple[float, float]:
    """Seconds per call of the bare denoiser and of the guided denoiser (median of repeats)."""
    width = case.kspace.shape[-1]
    problem = case_problem(case, sampling_mask("equispaced_fraction", width, 4, 0.08, seed=0), "cpu")
    y = problem.y.expand((batch,) + tuple(problem.y.shape[1:]))
    x = torch.randn((batch,) + problem.shape)
    t = torch.full((batch,), 0.5, dtype=torch.float64)
    guided = make_guidance(guidance, problem.operator, y)(prior)

    bare, guided_times = [], []
    with torch.no_grad():
        prior(x, t), guided(x, t)  # warm-up
        for _ in range(repeats):  # alternate, so that load from other processes hits both alike
            start = time.perf_counter()
            prior(x, t)
            bare.append(time.perf_counter() - start)
            start = time.perf_counter()
            guided(x, t)
            guided_times.append(time.perf_counter() - start)
    return float(np.median(bare)), float(np.median(guided_times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prior", default="results/mri/demo/prior")
    parser.add_argument("--data", default="results/mri/demo/data/eval.zarr")
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--quick", action="store_true", help="fewer cases, samples and repeats")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timing-only", action="store_true", help="skip the quality part")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    import yaml

    cfg = validate_config(yaml.safe_load(Path(args.config).read_text()), args.config)
    prior = load_denoiser(Path(args.prior))
    cases = load_cases(
        Path(args.data),
        cfg["mri"]["data"]["center_fraction"],
        2 if args.quick else cfg["mri"]["data"]["cases"],
    )

    rows = []
    batch = cfg["mri"]["sampling"]["batch_size"]
    for guidance in ("none", "dds", "dps"):
        bare, guided = time_per_nfe(prior, cases[0], guidance, batch, 5 if args.quick else 15)
        rows.append(
            {
                "guidance": guidance,
                "batch": batch,
                "denoiser_s": bare,
                "guided_s": guided,
                "overhead_ratio": guided / bare,
            }
        )
    timing = pd.DataFrame(rows)
    timing.to_csv(OUT / "mri_posterior_timing.csv", index=False, float_format="%.4g")
    print(timing.to_string(index=False))
    if args.timing_only:
        return

    # the validated mri.sampling section (all keys, defaults filled)
    sampling = {**cfg["mri"]["sampling"], **({"samples": 8} if args.quick else {})}
    quality = []
    for acc in cfg["mri"]["sampling"]["accelerations"]:
        for entry in cfg["mri"]["sampling"]["methods"]:
            method = Method.from_config(entry)
            ds = reconstruct(
                cases,
                prior,
                acc,
                method,
                sampling,
                cfg["mri"]["data"]["center_fraction"],
                cfg["seed"],
                "cpu",
                {"step": "benchmark"},
            )
            store = write_zarr(ds, OUT / f"mri_posterior_{acc}x_{method.name}.zarr")
            table = evaluate_store(store)
            quality.append(
                table.groupby(["method", "acceleration", "reconstruction"], as_index=False)[
                    ["psnr", "ssim", "nmse"] + [c for c in table.columns if c.startswith("coverage")]
                ].mean()
            )
    quality = pd.concat(quality, ignore_index=True)
    quality.to_csv(OUT / "mri_posterior_quality.csv", index=False, float_format="%.4g")
    print(quality.to_string(index=False))

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, metric in zip(axes, ("psnr", "ssim")):
        for recon, grp in quality.groupby(["method", "reconstruction"]):
            ax.plot(grp["acceleration"], grp[metric], "o-", label=" / ".join(recon))
        ax.set_xlabel("acceleration")
        ax.set_ylabel(metric.upper())
    axes[1].legend(fontsize=6)
    fig.savefig(OUT / "mri_posterior_quality.png")


if __name__ == "__main__":
    main()
