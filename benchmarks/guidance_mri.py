"""PSNR, SSIM and interval coverage of a few guidance/search methods on the demo MRI task.

Needs the demo prior (results/mri/demo/prior, made by the main demo run) and the ingested
eval store (results/mri/demo/data/eval.zarr); if the prior is absent the script says so and
exits 0. Writes benchmarks/out/guidance_mri.csv.
Run: PYTHONPATH=src python benchmarks/guidance_mri.py [--quick] [--root /path/to/project]
    [--prior DIR] [--data STORE] [--config YAML]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from _common import write_csv

from diffinv.config import load_config, method_name
from diffinv.diffusion.networks import load_denoiser
from diffinv.metrics import image_metrics
from diffinv.stages.core import Method
from diffinv.stages.mri.cases import load_cases
from diffinv.stages.mri.run import reconstruct
from diffinv.uncertainty import interval_coverage

OUT = Path(__file__).parent / "out"
METHODS = [
    {"solver": "dpmpp_2m", "guidance": "dds", "guidance_options": {"cg_steps": 5}},
    {
        "solver": "ddim",
        "solver_options": {"eta": 1.0},
        "guidance": "dds",
        "guidance_options": {"cg_steps": 5},
    },
    {"solver": "ddim", "guidance": "dps", "guidance_options": {"zeta": 1.0}},
    {"solver": "ddim", "guidance": "pigdm"},
    {"solver": "ddim", "guidance": "pigdm", "guidance_options": {"alpha_power": 1.0}},
    {"solver": "ddrm", "guidance": "ddrm"},
    {"solver": "diffpir", "guidance": "diffpir"},
    {
        "solver": "ddpm",
        "guidance": "dds",
        "guidance_options": {"cg_steps": 5},
        "search": "smc",
        "search_options": {"particles": 4},
    },
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--prior", type=Path, default=None, help="default: ROOT/results/mri/demo/prior")
    parser.add_argument(
        "--data", type=Path, default=None, help="default: ROOT/results/mri/demo/data/eval.zarr"
    )
    parser.add_argument("--config", type=Path, default=None, help="default: ROOT/config/config.yaml")
    parser.add_argument("--quick", action="store_true", help="2 cases, 8 samples, 4x only")
    parser.add_argument(
        "--only", nargs="+", default=None, help="run only the methods with these names (e.g. ddim-pigdm)"
    )
    args = parser.parse_args()
    prior_dir = args.prior or args.root / "results/mri/demo/prior"
    data = args.data or args.root / "results/mri/demo/data/eval.zarr"
    if not (prior_dir.is_dir() and data.exists()):
        print(
            f"skipped: the demo prior ({prior_dir}) or eval store ({data}) is absent; "
            "run the demo pipeline first"
        )
        return
    torch.set_num_threads(1)
    cfg = load_config(args.config or args.root / "config/config.yaml")
    mri = cfg["mri"]
    # the validated mri.sampling section (all keys, defaults filled), with the benchmark's sample counts
    sampling = {**mri["sampling"], "samples": 8 if args.quick else 32, "batch_size": 8 if args.quick else 32}
    prior = load_denoiser(prior_dir, "cpu")
    cases = load_cases(data, mri["data"]["center_fraction"], 2 if args.quick else mri["data"]["cases"])
    rows = []
    for acc in [4] if args.quick else sampling["accelerations"]:
        for method in METHODS:
            if args.only and method_name(method) not in args.only:
                continue
            start = time.perf_counter()
            ds = reconstruct(
                cases,
                prior,
                acc,
                Method.from_config(method),
                sampling,
                mri["data"]["center_fraction"],
                cfg["seed"],
                "cpu",
                {"step": "benchmark"},
            )
            mag, truth = np.abs(ds["samples"].values), np.abs(ds["truth"].values)
            metrics = [image_metrics(t, m) for t, m in zip(truth, np.abs(ds["mean"].values))]
            cover = [interval_coverage(mag[i], truth[i], levels=(0.9,))[0.9] for i in range(len(cases))]
            rows.append(
                dict(
                    method=method_name(method),
                    options=str(method.get("guidance_options", {})),
                    acceleration=acc,
                    psnr=np.mean([m["psnr"] for m in metrics]),
                    ssim=np.mean([m["ssim"] for m in metrics]),
                    coverage_90=float(np.mean(cover)),
                    seconds=round(time.perf_counter() - start, 1),
                )
            )
            print(rows[-1], flush=True)
    write_csv(OUT / "guidance_mri.csv", rows)


if __name__ == "__main__":
    main()
