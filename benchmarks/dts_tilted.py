"""Anytime DTS / DTS* against best-of-N on the reward-tilted mixture (d = 8), over several seeds.

Reward r(x) = λ aᵀx (a = 1/√8, λ = 0.1) on the 25-mode prior; 20 DDPM steps. For each seed
(a different set of initial noises and per-sample noise streams, same prior and reward),
prints the mean best reward over ``runs`` independent runs against NFE per sample, and
the NFE at which DTS* first reaches best-of-N's mean best reward. Writes
benchmarks/out/dts_tilted.csv. Run: PYTHONPATH=src python benchmarks/dts_tilted.py [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from _common import write_csv

from diffinv.search import make_search
from diffinv.solvers import PerSampleNoise, make_solver
from diffinv.testbed import distance_to, make_problem, tilt

OUT = Path(__file__).parent / "out"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--n-best", type=int, default=64)
    parser.add_argument("--methods", nargs="+", default=["best_of_n", "dts_star", "dts"])
    parser.add_argument("--checkpoints", type=int, nargs="+", default=[1, 2, 4, 8, 16, 24, 32, 48, 64])
    parser.add_argument("--opts", default="", help="extra DTS options, e.g. 'branching=3,exploration=0.5'")
    args = parser.parse_args()
    torch.set_num_threads(1)
    problem = make_problem(8, 2, seed=0)
    sch, steps, runs = problem.prior.schedule, 20, args.runs
    a, lam = torch.ones(8, dtype=torch.float64) / 8**0.5, 0.1
    target = tilt(problem.prior, a, lam)
    opts = {
        k: (float(v) if "." in v else int(v)) for k, v in (kv.split("=") for kv in args.opts.split(",") if kv)
    }

    def reward(x: torch.Tensor) -> torch.Tensor:
        return lam * (x.reshape(x.shape[0], -1) @ a.to(x.dtype))

    rows = []
    for seed in args.seeds:
        base = 1_000_000 * (seed + 1)
        if "best_of_n" in args.methods:
            n = args.n_best
            x_T = torch.randn(runs * n, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(base))
            start = time.perf_counter()
            bon = make_search("best_of_n", None, None, reward=reward, n=n)
            r = bon.run(
                make_solver("ddpm", sch),
                problem.prior,
                x_T,
                sch.grid(steps),
                PerSampleNoise(range(base, base + runs * n)),
            )
            rows.append(
                {
                    "seed": seed,
                    "method": f"best_of_n-{n}",
                    "rollouts": n,
                    "nfe": r.nfe_per_sample,
                    "mean_best_reward": float(r.reward.mean()),
                    "sw_to_tilted": distance_to(target, r.x),
                    "seconds": round(time.perf_counter() - start, 1),
                }
            )
            print(rows[-1], flush=True)
        for name in [m for m in args.methods if m != "best_of_n"]:
            x_T = torch.randn(runs, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(base + 1))
            m = make_search(name, None, None, reward=reward, seed=seed, **opts)
            start = time.perf_counter()
            res = m.anytime(
                make_solver("ddpm", sch),
                problem.prior,
                x_T,
                sch.grid(steps),
                PerSampleNoise(range(base + 500_000, base + 500_000 + runs)),
                args.checkpoints,
            )
            for c, rr in zip(args.checkpoints, res):
                rows.append(
                    {
                        "seed": seed,
                        "method": name,
                        "rollouts": c,
                        "nfe": rr.nfe_per_sample,
                        "mean_best_reward": float(rr.reward.mean()),
                        "sw_to_tilted": distance_to(target, rr.x),
                        "seconds": round(time.perf_counter() - start, 1),
                    }
                )
                print(rows[-1], flush=True)
    write_csv(OUT / "dts_tilted.csv", rows)
    print(
        "tilted target mean reward "
        f"{float(reward(target.sample(200_000, torch.Generator().manual_seed(7))).mean()):.3f}"
    )


if __name__ == "__main__":
    main()
