"""Network precision: PSNR and SSIM of the posterior mean under bf16/fp16 autocast against fp32.

Runs the demo config's MRI methods through the stage (``reconstruct``) with
``sampling.precision`` fp32, bf16 and fp16 on the same prior, cases and seeds, and
reports per method and acceleration the mean PSNR/SSIM, their change against fp32, the
relative RMS difference of the samples and the wall time. Needs the demo prior and eval
store (made by ``make demo``); writes benchmarks/out/precision.csv.
Run: PYTHONPATH=src python benchmarks/precision.py [--root DIR] [--cases N] [--threads N]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from _common import write_csv

from diffinv.config import load_config
from diffinv.diffusion.networks import load_denoiser
from diffinv.metrics import image_metrics
from diffinv.stages.core import Method
from diffinv.stages.mri.cases import load_cases
from diffinv.stages.mri.run import reconstruct

OUT = Path(__file__).parent / "out"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--config", type=Path, default=None, help="default: ROOT/config/config.yaml")
    parser.add_argument("--cases", type=int, default=None, help="default: the config's mri.data.cases")
    parser.add_argument(
        "--precisions",
        nargs="+",
        default=["fp32", "bf16"],
        help="fp16 autocast is meant for GPUs: on a CPU it runs slower than fp32 (measured)",
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config or args.root / "config/config.yaml")
    mri = cfg["mri"]
    base = args.root / f"results/mri/{mri['dataset']}"
    if not (base / "prior/model.safetensors").exists():
        print(f"no prior under {base}/prior: run `make demo` first")
        return
    prior = load_denoiser(base / "prior", "cpu")
    fraction = mri["data"]["center_fraction"]
    cases = load_cases(base / "data/eval.zarr", fraction, args.cases or mri["data"]["cases"])
    truth = [np.abs((c.truth[0] + 1j * c.truth[1]).numpy()) * c.scale for c in cases]
    rows = []
    for entry in mri["sampling"]["methods"]:
        method = Method.from_config(entry)
        for acc in mri["sampling"]["accelerations"]:
            ref = None
            for precision in args.precisions:
                settings = {**mri["sampling"], "precision": precision}
                start = time.perf_counter()
                ds = reconstruct(cases, prior, acc, method, settings, fraction, cfg["seed"], "cpu", {})
                wall = time.perf_counter() - start
                mean = np.abs(ds["mean"].values)
                scores = [image_metrics(t, m) for t, m in zip(truth, mean)]
                samples = ds["samples"].values
                row = {
                    "method": method.name,
                    "acceleration": acc,
                    "precision": precision,
                    "psnr": float(np.mean([s["psnr"] for s in scores])),
                    "ssim": float(np.mean([s["ssim"] for s in scores])),
                    "wall_s": round(wall, 2),
                }
                if ref is None:
                    ref = (row, samples)
                row["dpsnr_vs_fp32"] = row["psnr"] - ref[0]["psnr"]
                row["dssim_vs_fp32"] = row["ssim"] - ref[0]["ssim"]
                row["sample_rel_diff"] = float(np.linalg.norm(samples - ref[1]) / np.linalg.norm(ref[1]))
                rows.append(row)
                print(
                    f"{method.name:24s} {acc}x {precision}: PSNR {row['psnr']:.3f} "
                    f"(Δ {row['dpsnr_vs_fp32']:+.3f} dB)  SSIM {row['ssim']:.4f} "
                    f"(Δ {row['dssim_vs_fp32']:+.4f})  samples rel. diff {row['sample_rel_diff']:.2e}  "
                    f"{wall:.1f} s",
                    flush=True,
                )
    write_csv(OUT / "precision.csv", rows)
    worst = max(abs(r["dpsnr_vs_fp32"]) for r in rows if r["precision"] == "bf16")
    print(f"largest |PSNR change| of bf16 against fp32: {worst:.3f} dB (target <= 0.05 dB)")


if __name__ == "__main__":
    main()
