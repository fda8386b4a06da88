"""Distance to the exact posterior against NFE for every guidance and search method on the test bed.

Writes benchmarks/out/guidance_testbed.csv and .png (SW2 vs NFE per sample, d = 8 and 32,
with the exact-vs-exact noise floor), and guidance_testbed_tilted.csv: the NFE at which
DTS* first reaches best-of-N's mean best reward on the reward-tilted mixture.
Run: PYTHONPATH=src python benchmarks/guidance_testbed.py [--quick]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch  # noqa: E402
from _common import write_csv  # noqa: E402

from diffinv.guidance import make_guidance  # noqa: E402
from diffinv.plotstyle import plt  # Agg backend and the project's figure defaults
from diffinv.search import make_search  # noqa: E402
from diffinv.solvers import CountingDenoiser, PerSampleNoise, make_solver, sample  # noqa: E402
from diffinv.testbed import distance_to, make_problem, noise_floor, tilt  # noqa: E402

OUT = Path(__file__).parent / "out"
GUIDED = [
    ("dps", "ddim", {"zeta": 1.0, "squared": True}, {}),
    ("pigdm", "ddim", {}, {}),
    ("dds", "ddim", {"cg_steps": 1}, {}),
    ("diffpir", "diffpir", {}, {"zeta": 0.1}),
    ("ddrm", "ddrm", {}, {}),
    ("gaussian_score", "ddim", {}, {}),
]


def _x_T(rows: int, dim: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def guided(problem, name, solver, g_opts, s_opts, runs, steps):
    """Samples and NFE/sample of a guidance plug-in under a solver."""
    sch = problem.prior.schedule
    counter = CountingDenoiser(problem.prior)
    g = make_guidance(name, problem.operator, problem.y, **g_opts)
    noise = PerSampleNoise(range(runs))
    x = sample(
        make_solver(solver, sch, **s_opts), g(counter), _x_T(runs, problem.prior.dim), sch.grid(steps), noise
    )
    return x, counter.nfe


def searched(problem, name, opts, runs, steps, guidance="none"):
    sch = problem.prior.schedule
    m = make_search(name, problem.operator, problem.y, **opts)
    n = runs * m.particles_per_run
    D = make_guidance(guidance, problem.operator, problem.y)(problem.prior)
    r = m.run(
        make_solver("ddpm", sch), D, _x_T(n, problem.prior.dim), sch.grid(steps), PerSampleNoise(range(n))
    )
    return r.x, r.nfe_per_sample


def posterior_table(quick: bool) -> list[dict]:
    rows = []
    runs = 200 if quick else 500
    particles = (4, 16) if quick else (4, 16, 64)
    for dim, obs in ((8, 2), (32, 4)):
        problem = make_problem(dim, obs, seed=0)
        floor = noise_floor(problem.posterior, runs)
        prior_sw = distance_to(
            problem.posterior, problem.prior.sample(runs, torch.Generator().manual_seed(5))
        )
        rows.append(
            dict(
                dim=dim,
                method="exact (noise floor)",
                nfe=0,
                sw=floor,
                floor=floor,
                prior_sw=prior_sw,
                seconds=0,
            )
        )
        configs = [
            (
                f"ddim-{n}" if s == "ddim" else f"{s}-{n}",
                lambda n=n, s=s, g=g, so=so, st=st, problem=problem: guided(problem, n, s, g, so, runs, st),
            )
            for n, s, g, so in GUIDED
            for st in ((20, 100) if not quick else (50,))
        ]
        configs += [
            (
                f"ddpm-none-mcgdiff-N{p}",
                lambda p=p, problem=problem: searched(problem, "mcgdiff", {"particles": p}, runs, 100),
            )
            for p in particles
        ]
        configs += [
            (
                f"ddpm-none-smc-N{p}",
                lambda p=p, problem=problem: searched(problem, "smc", {"particles": p}, runs, 100),
            )
            for p in particles
        ]
        configs += [
            (
                "ddpm-none-svdd-M8",
                lambda problem=problem: searched(problem, "svdd", {"candidates": 8, "alpha": 1.0}, runs, 50),
            ),
            (
                "ddpm-none-best_of_n-8",
                lambda problem=problem: searched(problem, "best_of_n", {"n": 8}, runs, 50),
            ),
            (
                "ddpm-none-rbf-400",
                lambda problem=problem: searched(problem, "rbf", {"budget": 400}, runs, 50),
            ),
            (
                "ddpm-none-minority",
                lambda problem=problem: searched(problem, "minority", {"weight": 0.5}, runs, 50),
            ),
        ]
        seen = set()
        for label, run in configs:
            start = time.perf_counter()
            x, nfe = run()
            steps_tag = "" if label.startswith("ddpm") else f"@{nfe}"
            key = label + steps_tag
            if key in seen:
                continue
            seen.add(key)
            sw = distance_to(problem.posterior, x)
            rows.append(
                dict(
                    dim=dim,
                    method=key,
                    nfe=float(nfe),
                    sw=sw,
                    floor=floor,
                    prior_sw=prior_sw,
                    seconds=round(time.perf_counter() - start, 1),
                )
            )
            print(
                f"d={dim:<3} {key:<28} NFE/sample {float(nfe):8.1f}  SW2 {sw:7.3f}  floor {floor:.3f}  "
                f"({rows[-1]['seconds']} s)",
                flush=True,
            )
    return rows


def tilted_table(quick: bool) -> list[dict]:
    """Mean best reward of best-of-N against DTS* rollouts on p(x) exp(λ aᵀx) (d = 8, 20 DDPM steps)."""
    problem = make_problem(8, 2, seed=0)
    sch, runs, steps, n_best = problem.prior.schedule, (30 if quick else 60), 20, 64
    a, lam = torch.ones(8, dtype=torch.float64) / 8**0.5, 0.1
    target = tilt(problem.prior, a, lam)

    def reward(x: torch.Tensor) -> torch.Tensor:
        return lam * (x.reshape(x.shape[0], -1) @ a.to(x.dtype))

    bon = make_search("best_of_n", None, None, reward=reward, n=n_best)
    r = bon.run(
        make_solver("ddpm", sch),
        problem.prior,
        _x_T(runs * n_best, 8),
        sch.grid(steps),
        PerSampleNoise(range(runs * n_best)),
    )
    rows = [
        dict(
            method=f"best_of_n-{n_best}",
            rollouts=n_best,
            nfe=r.nfe_per_sample,
            mean_best_reward=float(r.reward.mean()),
            sw_to_tilted=distance_to(target, r.x),
        )
    ]
    checkpoints = [1, 2, 4, 8, 16, 32, 64, 80, 96]
    for name in ("dts_star", "dts"):
        m = make_search(name, None, None, reward=reward)
        for c, res in zip(
            checkpoints,
            m.anytime(
                make_solver("ddpm", sch),
                problem.prior,
                _x_T(runs, 8, 1),
                sch.grid(steps),
                PerSampleNoise(range(runs)),
                checkpoints,
            ),
        ):
            rows.append(
                dict(
                    method=name,
                    rollouts=c,
                    nfe=res.nfe_per_sample,
                    mean_best_reward=float(res.reward.mean()),
                    sw_to_tilted=distance_to(target, res.x),
                )
            )
    for row in rows:
        print(row, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="fewer samples and particle counts (about 3 minutes)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    rows = posterior_table(args.quick)
    write_csv(OUT / "guidance_testbed.csv", rows)
    tilted = tilted_table(args.quick)
    write_csv(OUT / "guidance_testbed_tilted.csv", tilted)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, dim in zip(axes, (8, 32)):
        sub = [r for r in rows if r["dim"] == dim and r["nfe"] > 0]
        for r in sub:
            ax.scatter(r["nfe"], r["sw"], s=18)
            ax.annotate(r["method"], (r["nfe"], r["sw"]), fontsize=6)
        floor = next(r["floor"] for r in rows if r["dim"] == dim)
        ax.axhline(floor, color="k", ls="--", label="exact-vs-exact floor")
        ax.axhline(2 * floor, color="k", ls=":", label="2x floor")
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="NFE per sample",
            ylabel="sliced W2 to the exact posterior",
            title=f"d = {dim}",
        )
        ax.legend(fontsize=7)
    fig.savefig(OUT / "guidance_testbed.png")


if __name__ == "__main__":
    main()
