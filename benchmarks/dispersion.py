"""Where the posterior spread is lost on the trained demo MRI prior (issue 15): sampler, guidance, prior.

Runs the MRI stage (``reconstruct``) on the demo prior and eval store with one method per row,
on the same cases, masks and seeds, and reports per acceleration: PSNR/SSIM of the posterior
mean (magnitude), NFE per sample (denoiser calls, population rows included) and wall time, raw
90 % coverage inside the object / in the background / of the complex channels
(:func:`diffinv.uncertainty.coverage_breakdown`), the spread-skill ratio and fair CRPS on the
channels, and the spread-skill ratio of the magnitude inside the object. The rows separate

- the sampler: DDS with dpmpp_2m (deterministic), DDIM η=0 (deterministic, first order) and
  DDIM η=1 (ancestral), at 20 and 50 steps;
- the guidance approximation: DDS, MMPS (1 and 3 CG steps) and DPS under the same solver;
- particle searches (SMC, MCGdiff) at a small population;

and a prior-misfit check: UNCONDITIONAL samples (guidance ``none``, no final data consistency)
against the training images, per pixel location (std over images of the real/imaginary
channels) and inside each image's own object support (std of the magnitude, support fraction).
``ideal90`` is the coverage of the central 90 % interval of M exchangeable draws from the
true posterior (Monte Carlo): the target a perfect sampler reaches with that many samples.
Aim (issue 15): object coverage 85-95 % at <= 2x the NFE of the best-PSNR method, PSNR within
0.5 dB of it (column ``aim``). Writes benchmarks/out/dispersion.csv (``--out``) and, beside it,
dispersion_prior.csv.
Run: PYTHONPATH=src python benchmarks/dispersion.py --root DIR [--cases 4] [--samples 16]
    [--accelerations 4 8] [--only LABEL ...] [--out CSV] [--threads 1] [--prior CHECKPOINT]
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
from diffinv.metrics import image_metrics
from diffinv.stages.core import Method
from diffinv.stages.mri.cases import load_cases, training_images
from diffinv.stages.mri.run import reconstruct
from diffinv.uncertainty import as_channels, coverage_breakdown, crps_ensemble, object_support, spread_skill

OUT = Path(__file__).parent / "out"
DDS = {"guidance": "dds", "guidance_options": {"cg_steps": 5}}
ETA1 = {"solver": "ddim", "solver_options": {"eta": 1.0}}
# label, cause probed, method entry, steps
METHODS: list[tuple[str, str, dict[str, Any], int]] = [
    ("dpmpp_2m+dds", "sampler", {"solver": "dpmpp_2m", **DDS}, 20),
    ("ddim(η=0)+dds", "sampler", {"solver": "ddim", **DDS}, 20),
    ("ddim(η=1)+dds", "sampler", {**ETA1, **DDS}, 20),
    ("dpmpp_2m+dds 50", "sampler", {"solver": "dpmpp_2m", **DDS}, 50),
    ("ddim(η=1)+dds 50", "sampler", {**ETA1, **DDS}, 50),
    ("ddim(η=1)+mmps cg1", "guidance", {**ETA1, "guidance": "mmps", "guidance_options": {"cg_steps": 1}}, 20),
    ("ddim(η=1)+mmps cg3", "guidance", {**ETA1, "guidance": "mmps", "guidance_options": {"cg_steps": 3}}, 20),
    (
        "dpmpp_2m+mmps cg1",
        "guidance",
        {"solver": "dpmpp_2m", "guidance": "mmps", "guidance_options": {"cg_steps": 1}},
        20,
    ),
    (
        "ddim(η=1)+dps",
        "guidance",
        {**ETA1, "guidance": "dps", "guidance_options": {"zeta": 10.0, "alpha_power": 1.0}},
        20,
    ),
    (
        "ddim(η=0)+dps",
        "guidance",
        {"solver": "ddim", "guidance": "dps", "guidance_options": {"zeta": 10.0, "alpha_power": 1.0}},
        20,
    ),
    (
        "ddpm+dds+smc(4)",
        "search",
        {"solver": "ddpm", **DDS, "search": "smc", "search_options": {"particles": 4}},
        20,
    ),
    (
        "ddpm+mcgdiff(4)",
        "search",
        {"solver": "ddpm", "guidance": "none", "search": "mcgdiff", "search_options": {"particles": 4}},
        20,
    ),
]
UNCONDITIONAL = [
    ("dpmpp_2m+none", {"solver": "dpmpp_2m", "guidance": "none"}),
    ("ddim(η=1)+none", {**ETA1, "guidance": "none"}),
]


def ideal_coverage(m: int, level: float = 0.9, trials: int = 200_000) -> float:
    """Coverage of the empirical central ``level`` interval of ``m`` draws for one more draw."""
    rng = np.random.default_rng(0)
    draws = rng.standard_normal((trials, m + 1))
    lo = np.quantile(draws[:, :m], (1 - level) / 2, axis=1)
    hi = np.quantile(draws[:, :m], (1 + level) / 2, axis=1)
    return float(((draws[:, m] >= lo) & (draws[:, m] <= hi)).mean())


def scores(ds: Any) -> dict[str, float]:
    """Case-averaged metrics of one posterior Dataset (samples and truth complex, data units)."""
    samples, truth = ds["samples"].values, ds["truth"].values
    per: list[dict[str, float]] = []
    for s, t in zip(samples, truth):
        support = object_support(t)
        mag_s, mag_t = np.abs(s), np.abs(t)
        cov = coverage_breakdown(s, t, levels=(0.9,), support=support)
        img = image_metrics(mag_t, np.abs(s.mean(0)))
        per.append(
            {
                "psnr": img["psnr"],
                "ssim": img["ssim"],
                "cov90_object": cov["coverage_object_90"],
                "cov90_background": cov["coverage_background_90"],
                "cov90_complex": cov["coverage_complex_90"],
                "spread_skill": spread_skill(as_channels(s), as_channels(t)),
                "spread_skill_object": spread_skill(mag_s[:, support], mag_t[support]),
                "crps": float(crps_ensemble(as_channels(s), as_channels(t)).mean()),
            }
        )
    return {k: float(np.mean([p[k] for p in per])) for k in per[0]}


def prior_spread(images: np.ndarray) -> dict[str, float]:
    """Spread of normalised complex images (N, y, x): per location, and inside each own support."""
    chans = as_channels(images)  # (N, y, x, 2)
    mags, inside, fractions = np.abs(images), [], []
    for m in mags:
        sup = object_support(m)
        inside.append(m[sup])
        fractions.append(sup.mean())
    pooled = np.concatenate(inside)
    return {
        "images": len(images),
        "location_std": float(chans.std(0).mean()),
        "object_mag_mean": float(pooled.mean()),
        "object_mag_std": float(pooled.std()),
        "support_fraction": float(np.mean(fractions)),
        "support_fraction_std": float(np.std(fractions)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--config", type=Path, default=None, help="default: ROOT/config/config.yaml")
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--accelerations", type=int, nargs="+", default=None, help="default: the config's")
    parser.add_argument("--only", nargs="+", default=None, help="only these row labels (and 'prior')")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prior", type=Path, default=None, help="checkpoint folder (default: the demo's)")
    parser.add_argument("--out", type=Path, default=OUT / "dispersion.csv", help="the methods' table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config or args.root / "config/config.yaml")
    mri = cfg["mri"]
    base = args.root / f"results/mri/{mri['dataset']}"
    checkpoint = args.prior or base / "prior"
    if not (checkpoint / "model.safetensors").exists():
        print(f"no prior under {checkpoint}: run `make demo` first")
        return
    prior = load_denoiser(checkpoint, "cpu")
    fraction = mri["data"]["center_fraction"]
    cases = load_cases(base / "data/eval.zarr", fraction, args.cases)
    ideal = ideal_coverage(args.samples)
    print(
        f"{len(cases)} cases, {args.samples} samples; ideal 90 % coverage with M={args.samples}: {ideal:.3f}"
    )
    keep = (lambda label: label in args.only) if args.only else (lambda label: True)
    settings = {**mri["sampling"], "samples": args.samples, "batch_size": args.samples}
    rows: list[dict[str, Any]] = []
    for acc in args.accelerations or mri["sampling"]["accelerations"]:
        for label, cause, entry, steps in METHODS:
            if not keep(label):
                continue
            method = Method.from_config(entry)
            start = time.perf_counter()
            ds = reconstruct(
                cases, prior, acc, method, {**settings, "steps": steps}, fraction, cfg["seed"], "cpu", {}
            )
            wall = time.perf_counter() - start
            row = {
                "acceleration": acc,
                "method": label,
                "cause": cause,
                "steps": steps,
                "nfe": float(ds["nfe"].values.mean()),
                "wall_s": round(wall, 1),
                **scores(ds),
                "ideal90": ideal,
            }
            rows.append(row)
            print(
                f"{acc}x {label:22s} NFE {row['nfe']:5.0f} {wall:6.1f} s  PSNR {row['psnr']:.2f} "
                f"SSIM {row['ssim']:.3f}  cov90 obj {row['cov90_object']:.3f} bg "
                f"{row['cov90_background']:.3f} cplx {row['cov90_complex']:.3f}  "
                f"SS {row['spread_skill']:.2f} SSobj {row['spread_skill_object']:.2f} "
                f"CRPS {row['crps']:.4f}",
                flush=True,
            )
        done = [r for r in rows if r["acceleration"] == acc]
        if done:
            best = max(done, key=lambda r: r["psnr"])
            for r in done:
                r["aim"] = bool(
                    0.85 <= r["cov90_object"] <= 0.95
                    and r["nfe"] <= 2 * best["nfe"]
                    and r["psnr"] >= best["psnr"] - 0.5
                )
            met = [r["method"] for r in done if r["aim"]]
            print(
                f"{acc}x best PSNR: {best['method']} ({best['psnr']:.2f} dB, NFE {best['nfe']:.0f}); "
                f"aim met by: {', '.join(met) or 'none'}",
                flush=True,
            )
    if rows:
        write_csv(args.out, rows)
    if args.only and "prior" not in args.only:
        return
    # prior misfit: unconditional samples against the training images (normalised units)
    train = training_images(base / "data/train.zarr", fraction).numpy()
    stats = [{"source": "training images", **prior_spread(train[:, 0] + 1j * train[:, 1])}]
    for label, entry in UNCONDITIONAL:
        unc = {**settings, "final_dc": False}
        ds = reconstruct(cases, prior, 4, Method.from_config(entry), unc, fraction, cfg["seed"], "cpu", {})
        samples = ds["samples"].values / ds["scale"].values[:, None, None, None]
        stats.append(
            {"source": f"prior samples {label}", **prior_spread(samples.reshape(-1, *samples.shape[2:]))}
        )
    for s in stats:
        print(
            f"{s['source']:34s} n={s['images']:5d}  per-location std {s['location_std']:.4f}  inside object: "
            f"|x| mean {s['object_mag_mean']:.3f} std {s['object_mag_std']:.3f}  support "
            f"{s['support_fraction']:.3f} ± {s['support_fraction_std']:.3f}",
            flush=True,
        )
    write_csv(args.out.with_name(args.out.stem + "_prior.csv"), stats)


if __name__ == "__main__":
    main()
