"""Dispersion of MMPS against DDS, DPS and ΠGDM: per-dimension variance ratio and 90 % coverage.

Problems: the Gaussian prior of tests/guidance/test_mmps.py (d = 5, non-diagonal Σ, random 3×5
operator, σ_y = 0.1; MMPS is exact there) and the 25-mode mixture bed of guidance_testbed.py
(make_problem(8, 2) and make_problem(32, 4), seed 0). Every method runs DDIM (η = 0) at the
same steps on the same x_T, with the options of guidance_testbed.py. Figures, against the
exact posterior's marginals: var ratio = sample variance / exact variance per dimension
(geometric mean, min, max; 1 is calibrated, > 1 over-dispersed); cover90 = share of draws
inside the exact central 90 % interval of each marginal (0.90 is calibrated); SW2 with the
exact-vs-exact floor. ``vjp/step`` counts backward passes per step (D calls are one per step).
Row ``exact`` runs the same solver on the exact posterior's own denoiser: what the solver itself
reaches at that step count (DDIM's discretisation bias), the ideal for any guidance.
Writes benchmarks/out/mmps_gaussian.csv.
Run: PYTHONPATH=src python benchmarks/mmps_gaussian.py [--quick]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from _common import write_csv

from diffinv.diffusion.denoisers import GaussianMixtureDenoiser
from diffinv.diffusion.schedule import VPSchedule
from diffinv.guidance import make_guidance
from diffinv.operators.svd import MatrixSVD
from diffinv.solvers import make_solver, sample
from diffinv.testbed import distance_to, gmm_posterior, make_problem, noise_floor, random_matrix

OUT = Path(__file__).parent / "out"
METHODS = [  # name, options, backward passes per step; "exact" = the solver on the posterior's own denoiser
    ("exact", {}, "0"),
    ("mmps", {"cg_steps": 5}, "<= 6"),
    ("dds", {"cg_steps": 1}, "0"),
    ("dps", {"zeta": 1.0, "squared": True}, "1"),
    ("pigdm", {}, "1"),
]


def gaussian_problem() -> tuple[GaussianMixtureDenoiser, MatrixSVD, torch.Tensor, GaussianMixtureDenoiser]:
    """The d = 5 Gaussian problem of tests/guidance/test_mmps.py."""
    g = torch.Generator().manual_seed(0)
    root = torch.randn(5, 5, generator=g, dtype=torch.float64)
    cov = root @ root.T / 5 + 0.1 * torch.eye(5, dtype=torch.float64)
    mu = torch.randn(1, 5, generator=g, dtype=torch.float64)
    matrix = random_matrix(3, 5, g)
    y = mu @ matrix.T + torch.randn(1, 3, generator=g, dtype=torch.float64)
    prior = GaussianMixtureDenoiser(VPSchedule(), torch.ones(1), mu, cov[None])
    return prior, MatrixSVD(matrix, 0.1), y, gmm_posterior(prior, matrix, 0.1, y[0])


def marginals(mix: GaussianMixtureDenoiser) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-dimension variance and central 90 % interval (lo, hi) of a Gaussian mixture's marginals."""
    w, mu, var = mix.log_weights.exp(), mix.means, mix.covs.diagonal(dim1=-2, dim2=-1)  # (K,), (K, d)
    mean = w @ mu
    variance = w @ (var + mu**2) - mean**2
    sd = var.sqrt()

    def cdf(x: torch.Tensor) -> torch.Tensor:
        return (w[:, None] * torch.special.ndtr((x[None] - mu) / sd)).sum(0)

    def quantile(q: float) -> torch.Tensor:
        lo, hi = (mu - 10 * sd).min(0).values, (mu + 10 * sd).max(0).values
        for _ in range(100):  # bisection on the monotone mixture CDF
            mid = 0.5 * (lo + hi)
            below = cdf(mid) < q
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return 0.5 * (lo + hi)

    return variance, quantile(0.05), quantile(0.95)


def run(prior, operator, y, posterior, name, options, x_T, steps) -> torch.Tensor:
    sch = prior.schedule
    if name == "exact":
        D = posterior
    else:
        D = make_guidance(name, operator, y.expand(x_T.shape[0], -1), **options)(prior)
    return sample(make_solver("ddim", sch), D, x_T, sch.grid(steps))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="200 draws and 50 steps only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs = 200 if args.quick else 500
    step_list = (50,) if args.quick else (20, 100)
    beds = {"gauss d=5": gaussian_problem()}
    for dim, obs in ((8, 2), (32, 4)):
        p = make_problem(dim, obs, seed=0)
        beds[f"mix d={dim}"] = (p.prior, p.operator, p.y, p.posterior)
    rows = []
    print(
        f"{'bed':<10} {'method':<6} {'steps':>5} {'vjp/step':>8}  var ratio gmean [min, max]   "
        f"cover90 [min, max]   SW2 (floor)"
    )
    for bed, (prior, operator, y, posterior) in beds.items():
        variance, lo, hi = marginals(posterior)
        floor = noise_floor(posterior, runs)
        x_T = torch.randn(runs, prior.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        for steps in step_list:
            for name, options, vjp in METHODS:
                start = time.perf_counter()
                x = run(prior, operator, y, posterior, name, options, x_T, steps)
                seconds = time.perf_counter() - start
                finite = bool(torch.isfinite(x).all())
                ratio = x.var(0) / variance
                cover = ((x >= lo) & (x <= hi)).double().mean(0)
                row = dict(
                    bed=bed,
                    method=name,
                    steps=steps,
                    vjp_per_step=vjp,
                    var_ratio_gmean=math.exp(float(ratio.log().mean())) if finite else math.nan,
                    var_ratio_min=float(ratio.min()),
                    var_ratio_max=float(ratio.max()),
                    cover90_mean=float(cover.mean()),
                    cover90_min=float(cover.min()),
                    cover90_max=float(cover.max()),
                    sw2=distance_to(posterior, x) if finite else math.nan,
                    floor=floor,
                    seconds=round(seconds, 1),
                )
                rows.append(row)
                print(
                    f"{bed:<10} {name:<6} {steps:>5} {vjp:>8}  {row['var_ratio_gmean']:9.3g} "
                    f"[{row['var_ratio_min']:.3g}, {row['var_ratio_max']:.3g}]   "
                    f"{row['cover90_mean']:.3f} [{row['cover90_min']:.2f}, {row['cover90_max']:.2f}]   "
                    f"{row['sw2']:.3g} ({floor:.3f})  {seconds:.1f} s",
                    flush=True,
                )
    write_csv(OUT / "mmps_gaussian.csv", rows)


if __name__ == "__main__":
    main()
