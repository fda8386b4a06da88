"""ResShift and optimal boundary conditions (OBC) on real ERA5 UK 2 m temperature, 4x (issue 13).

Data: ``era5-2mt-2019-03-uk.grib`` (744 hourly 0.25° fields, 33x49, March 2019). Training period:
the first three weeks (times 0-503); test: the last week (504-743) every 6th hour (40 fields,
to keep CPU time sane). Fields are normalised by the training weeks' mean and std; the coarse
input is the 4x conservative block mean (``CoarseGrain`` with latitude weights; noiseless).
Metrics are in kelvin on the 33x49 grid.

(a) ResShift (Yue et al. 2023) trained on the training weeks at T = 4 and T = 15, 8 members
    per test field: RMSE of the ensemble mean, fair CRPS, spread-skill, time per field; against
    the bicubic baseline and the diffusion posterior (prior + SDA Gaussian score, DDIM η = 0,
    15 steps, 8 members).
(b) OBC (Ma et al., ICLR 2024): K candidate start noises scored by RMSE on reference cases from
    the training weeks with the same sampler and guidance, the best one reused for every test
    field, against plain sampling (random start noise) at equal NFE per reconstruction.

The prior is H2's ``benchmarks/out/atmos_uk/prior`` when present (``--prior``), else one is
trained here with the stage's own ``train`` verb on the training weeks. Nothing is tuned on the
test week.

    OMP_NUM_THREADS=1 python benchmarks/atmos_methods.py train --T 4     # ResShift, T = 4 (one core)
    OMP_NUM_THREADS=1 python benchmarks/atmos_methods.py train --T 15    # ResShift, T = 15
    OMP_NUM_THREADS=1 python benchmarks/atmos_methods.py prior           # only if H2's prior is absent
    OMP_NUM_THREADS=1 python benchmarks/atmos_methods.py resshift        # (a) on the test fields
    OMP_NUM_THREADS=1 python benchmarks/atmos_methods.py tune            # guidance options (training weeks)
    OMP_NUM_THREADS=1 python benchmarks/atmos_methods.py obc             # (b) selection + test fields
    OMP_NUM_THREADS=1 python benchmarks/atmos_methods.py report          # summary.csv and the figure

``--quick`` runs any phase as a smoke test (4 test fields, 20 training steps, K = 4) into ``quick/``.

Writes ``benchmarks/out/atmos_methods/``: ``resshift_T{4,15}/`` (checkpoints), ``prior/`` (if
trained here), ``boundary/`` (selected noise + score table), ``per_case_{resshift,diffusion}.csv``,
``per_case.csv``, ``summary.csv``, ``obc_scores.csv``, ``atmos_methods.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from diffinv.boundary import save_boundary, select_boundary
from diffinv.config import validate_config
from diffinv.guidance import make_guidance
from diffinv.operators.atmos import CoarseGrain
from diffinv.solvers import PerSampleNoise, make_solver
from diffinv.solvers.base import sample
from diffinv.stages.atmos.data import Fields, Normalisation, load_fields, split
from diffinv.stages.atmos.metrics import field_metrics
from diffinv.stages.atmos.resshift import (
    ResShiftSchedule,
    load_resshift,
    sample_resshift,
    save_resshift,
    train_resshift,
    upsample,
)
from diffinv.stages.core import CaseSeeds, Method, Problem, Sampling, sample_case

sys.path.insert(0, str(Path(__file__).parent))
from _common import write_csv  # noqa: E402

OUT = Path(__file__).parent / "out" / "atmos_methods"
GRIB = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "era5" / "era5-2mt-2019-03-uk.grib"
H2_PRIOR = Path(__file__).parent / "out" / "atmos_uk" / "prior"
SEED = 0
FACTOR = 4
MEMBERS = 8
DATA = {"variables": ["t2m"], "levels": None, "train": [0, 504], "eval": [504, 744], "eval_stride": 6}
PRIOR = {  # the stage's prior settings of benchmarks/atmos_uk.py (H2)
    "network": {"widths": [16, 32], "layers_per_block": 1, "norm_groups": 8},
    "clip": None,
    "train": {"steps": 1400, "batch_size": 16, "lr": 0.002, "warmup": 50, "prediction": "v", "flips": False},
}
RESSHIFT_NET = {"widths": (16, 32), "layers_per_block": 1, "norm_groups": 8}
DIFFUSION_STEPS = 15
TUNE_GRID = {"noise_std": [0.02, 0.1], "gamma": [0.01, 0.1, 1.0]}  # SDA Gaussian score options
REFERENCES = list(range(480, 504, 3))  # the last training day, every 3 h: OBC reference cases


def config(prior_steps: int) -> dict[str, Any]:
    """A validated config for the stage's train verb (data split of this benchmark)."""
    prior = {**PRIOR, "train": {**PRIOR["train"], "steps": prior_steps}}
    return validate_config(
        {"seed": SEED, "atmos": {"enabled": True, "data": DATA, "prior": prior}},
        "benchmarks/atmos_methods.py",
    )


def case_id(fields: Fields, i: int) -> str:
    """The stage's case identity (ISO time), so seeds match ``diffinv sample atmos``."""
    return f"atmos:{np.datetime_as_string(fields.times[i], unit='s')}"


def train_phase(
    fields: Fields, x: Tensor, coarse: Tensor, train_idx: np.ndarray, T: int, steps: int, out: Path
) -> None:
    """Train ResShift with T steps on the training weeks (skipped if trained with the same steps)."""
    folder = out / f"resshift_T{T}"
    done = folder / "config.json"
    if done.exists() and json.loads(done.read_text())["training"].get("steps") == steps:
        print(f"resshift T={T}: exists ({folder})")
        return
    start = time.perf_counter()
    model, log = train_resshift(
        x[train_idx], coarse[train_idx], FACTOR, ResShiftSchedule(steps=T), RESSHIFT_NET,
        steps=steps, batch_size=16, lr=2e-3, seed=SEED, periodic=fields.periodic,
    )  # fmt: skip
    wall = time.perf_counter() - start
    record = {"steps": steps, "batch_size": 16, "lr": 2e-3, "seed": SEED, "wall_time_s": round(wall, 1)}
    save_resshift(folder, model, log, {**record, "data": DATA, "fields": len(train_idx)})
    print(f"resshift T={T}: trained {steps} steps in {wall:.0f} s, final loss (EMA) {log[-1][2]:.4f}")


def prior_folder(args: argparse.Namespace) -> Path:
    """H2's prior if present, else one trained here by the stage's train verb (20 steps if quick)."""
    if (args.prior / "model.safetensors").exists() and not args.quick:
        return args.prior
    from diffinv.stages.atmos.run import train

    out = args.out / "prior"
    if args.quick or not (out / "model.safetensors").exists():
        start = time.perf_counter()
        steps = 20 if args.quick else PRIOR["train"]["steps"]
        train(argparse.Namespace(data=str(args.grib), output=str(out), quiet=True), config(steps), "cpu")
        print(f"prior trained here ({steps} steps) in {time.perf_counter() - start:.0f} s -> {out}")
    return out


def start_sampler(
    problem: Problem, prior: Any, method: Method, sampling: Sampling
) -> Callable[[Tensor], Tensor]:
    """The core's deterministic sampler for ``problem`` run from given standard-normal start noise
    (what ``sample_case`` does after drawing that noise from the case's seeds)."""
    guided = make_guidance(method.guidance, problem.operator, problem.y, **method.guidance_options)(prior)
    grid = prior.schedule.grid(sampling.steps, sampling.grid)
    sigma = float(prior.schedule.sigma(grid[0]))

    def run(eps: Tensor) -> Tensor:
        solver = make_solver(method.solver, prior.schedule, **method.solver_options)
        with torch.no_grad():
            return sample(solver, guided, eps * sigma, grid)

    return run


def scores(members: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Ensemble scores in K (stage metrics) plus the mean RMSE of single members."""
    row = field_metrics(members, truth, ["t2m"]).iloc[0]
    member_rmse = np.sqrt(((members - truth[None]) ** 2).mean(axis=(1, 2, 3))).mean()
    return {k: float(row[k]) for k in ("rmse", "crps", "spread", "spread_skill")} | {
        "member_rmse": float(member_rmse)
    }


def main() -> None:
    torch.set_num_threads(1)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("phase", choices=["train", "prior", "resshift", "tune", "obc", "report"])
    p.add_argument("--T", type=int, default=4, help="train: ResShift steps T (4 or 15)")
    p.add_argument("--grib", type=Path, default=GRIB)
    p.add_argument("--prior", type=Path, default=H2_PRIOR)
    p.add_argument("--resshift-steps", type=int, default=600, help="training steps of each ResShift model")
    p.add_argument("--candidates", type=int, default=16, help="OBC candidates K")
    p.add_argument(
        "--quick", action="store_true", help="smoke run: 4 test fields, short training, out/quick/"
    )
    args = p.parse_args()
    args.out = OUT / "quick" if args.quick else OUT
    args.out.mkdir(parents=True, exist_ok=True)
    if args.phase == "report":
        report(args)
        return

    fields = load_fields(args.grib, DATA)
    train_idx, eval_idx = split(fields.times, DATA)
    if args.quick:
        eval_idx, args.resshift_steps, args.candidates = eval_idx[:4], 20, 4
    op = CoarseGrain(fields.shape, FACTOR, latitudes=fields.latitude)
    norm = Normalisation.of(fields, train_idx)
    x = torch.from_numpy(norm.to_prior(fields.values, fields.channels).astype(np.float32))
    coarse = op.A(x)  # block means commute with the affine normalisation (weights sum to 1)
    print(f"{len(train_idx)} training fields, {len(eval_idx)} test fields (every 6th hour of the last week)")
    if args.phase == "train":
        train_phase(fields, x, coarse, train_idx, args.T, args.resshift_steps, args.out)
    elif args.phase == "prior":
        print(f"prior: {prior_folder(args)}")
    elif args.phase == "resshift":
        resshift_phase(fields, norm, coarse, eval_idx, args.out)
    elif args.phase == "tune":
        tune_phase(fields, op, args)
    else:
        obc_phase(fields, op, eval_idx, args)


def resshift_phase(
    fields: Fields, norm: Normalisation, coarse: Tensor, eval_idx: np.ndarray, out: Path
) -> None:
    """(a) Bicubic and ResShift (T = 4, 15; 8 members) on the test fields: per_case_resshift.csv."""
    models = {T: load_resshift(out / f"resshift_T{T}") for T in (4, 15)}
    rows: list[dict[str, Any]] = []
    for i in eval_idx:
        truth = fields.values[i].astype(np.float64)
        cid = case_id(fields, i)
        bic = norm.to_data(upsample(coarse[i : i + 1], fields.shape, FACTOR)[0].numpy(), fields.channels)
        rmse_b = float(np.sqrt(((bic.astype(np.float64) - truth) ** 2).mean()))
        rows.append(
            {"case": cid, "method": "bicubic", "nfe": 0, "time_s": 0.0, "rmse": rmse_b, "member_rmse": rmse_b}
        )
        for T, model in models.items():
            noise = PerSampleNoise(CaseSeeds.of(SEED, cid).samples(0, MEMBERS))
            start = time.perf_counter()
            members = sample_resshift(model, coarse[i : i + 1], noise)
            wall = time.perf_counter() - start
            phys = norm.to_data(members.numpy(), fields.channels).astype(np.float64)
            rows.append(
                {
                    "case": cid,
                    "method": f"resshift_T{T}",
                    "nfe": T,
                    "time_s": wall / MEMBERS,
                    **scores(phys, truth),
                }
            )
    pd.DataFrame(rows).to_csv(out / "per_case_resshift.csv", index=False)
    print(f"wrote {out / 'per_case_resshift.csv'}")


def diffusion_setup(
    fields: Fields, op: CoarseGrain, args: argparse.Namespace
) -> tuple[Any, Any, Tensor, Path]:
    """The prior on the 33x49 grid, its normalisation, the normalised coarse fields and its folder."""
    from diffinv.stages.atmos.run import load_prior

    folder = prior_folder(args)
    prior, pnorm = load_prior(folder, fields, "cpu")
    xp = torch.from_numpy(pnorm.to_prior(fields.values, fields.channels).astype(np.float32))
    return prior, pnorm, xp, folder


def tune_phase(fields: Fields, op: CoarseGrain, args: argparse.Namespace) -> None:
    """Guidance options on the OBC reference cases (training weeks), 2 plain samples each: tune.csv
    and tuned.json (lowest mean single-sample RMSE)."""
    prior, pnorm, xp, _ = diffusion_setup(fields, op, args)
    yp = op.A(xp)
    sampling = Sampling(samples=2, batch_size=2, steps=DIFFUSION_STEPS, final_dc=False)
    rows = []
    for noise_std in TUNE_GRID["noise_std"]:
        for gamma in TUNE_GRID["gamma"]:
            options = {"noise_std": noise_std, "gamma": gamma}
            method = Method("ddim", "gaussian_score", solver_options={"eta": 0.0}, guidance_options=options)
            errs = []
            for i in REFERENCES[::2]:
                res = sample_case(Problem(op, yp[i : i + 1], tuple(xp.shape[1:])), prior, method, sampling,
                                  CaseSeeds.of(SEED, case_id(fields, i)), "cpu")  # fmt: skip
                phys = pnorm.to_data(res.samples.numpy(), fields.channels).astype(np.float64)
                errs.append(scores(phys, fields.values[i].astype(np.float64))["member_rmse"])
            rows.append({**options, "member_rmse": float(np.mean(errs))})
            print(f"tune noise_std={noise_std} gamma={gamma}: RMSE {rows[-1]['member_rmse']:.3f} K")
    write_csv(args.out / "tune.csv", rows)
    best = min(rows, key=lambda r: r["member_rmse"])
    (args.out / "tuned.json").write_text(json.dumps({k: best[k] for k in ("noise_std", "gamma")}))
    print(f"chosen: {best}")


def obc_phase(fields: Fields, op: CoarseGrain, eval_idx: np.ndarray, args: argparse.Namespace) -> None:
    """(b) OBC selection on the reference cases, then plain sampling (8 members) and OBC (one
    reconstruction) on the test fields: boundary/, obc_scores.csv, per_case_diffusion.csv."""
    prior, pnorm, xp, folder = diffusion_setup(fields, op, args)
    yp = op.A(xp)
    tuned = json.loads((args.out / "tuned.json").read_text())
    method = Method("ddim", "gaussian_score", solver_options={"eta": 0.0}, guidance_options=tuned)
    sampling = Sampling(samples=MEMBERS, batch_size=MEMBERS, steps=DIFFUSION_STEPS, final_dc=False)
    shape = tuple(xp.shape[1:])

    def problem(i: int) -> Problem:
        return Problem(op, yp[i : i + 1], shape)

    check, seeds = problem(int(eval_idx[0])), CaseSeeds.of(SEED, case_id(fields, int(eval_idx[0])))
    via_core = sample_case(
        check, prior, method, dataclasses.replace(sampling, samples=2, batch_size=2), seeds, "cpu"
    )
    via_start = start_sampler(check, prior, method, sampling)(
        PerSampleNoise(seeds.samples(0, 2)).randn(shape)
    )
    gap = float((via_core.samples - via_start).abs().max())
    print(f"prior {folder}; start-noise sampler vs sample_case, same seeds: max |diff| {gap:.2e}")

    truths = [xp[i] for i in REFERENCES]
    samplers = {r: start_sampler(problem(i), prior, method, sampling) for r, i in enumerate(REFERENCES)}
    start = time.perf_counter()
    sel = select_boundary(
        lambda eps, r: samplers[r](eps), truths, args.candidates, shape, SEED, "rmse", batch_size=8,
        record={"references": [case_id(fields, i) for i in REFERENCES], "method": method.as_dict(),
                "steps": DIFFUSION_STEPS, "prior": str(folder)},
    )  # fmt: skip
    select_wall = time.perf_counter() - start
    save_boundary(args.out / "boundary", sel)
    write_csv(args.out / "obc_scores.csv", sel.table())
    means = sel.scores.mean(1) * float(pnorm.std["t2m"])
    nfe = args.candidates * len(REFERENCES) * DIFFUSION_STEPS
    print(
        f"OBC selection: K={args.candidates} candidates x {len(REFERENCES)} reference cases, {nfe} NFE, "
        f"{select_wall:.0f} s; mean reference RMSE (K) of the candidates: best {means.min():.3f}, "
        f"median {np.median(means):.3f}, worst {means.max():.3f}"
    )
    rows: list[dict[str, Any]] = []
    for i in eval_idx:
        cid = case_id(fields, i)
        truth = fields.values[i].astype(np.float64)
        res = sample_case(problem(i), prior, method, sampling, CaseSeeds.of(SEED, cid), "cpu")
        phys = pnorm.to_data(res.samples.numpy(), fields.channels).astype(np.float64)
        rows.append({"case": cid, "method": f"ddim{DIFFUSION_STEPS}_gaussian_score", "nfe": res.nfe,
                     "time_s": res.wall_time_s / MEMBERS, **scores(phys, truth)})  # fmt: skip
        start = time.perf_counter()
        one = start_sampler(problem(i), prior, method, sampling)(sel.noise[None])
        wall = time.perf_counter() - start
        err = pnorm.to_data(one[0].numpy(), fields.channels).astype(np.float64) - truth
        rmse_o = float(np.sqrt((err**2).mean()))
        name = f"ddim{DIFFUSION_STEPS}_gaussian_score_obc"
        rows.append({"case": cid, "method": name, "nfe": DIFFUSION_STEPS, "time_s": wall, "rmse": rmse_o,
                     "member_rmse": rmse_o})  # fmt: skip
    pd.DataFrame(rows).to_csv(args.out / "per_case_diffusion.csv", index=False)
    print(f"wrote {args.out}/per_case_diffusion.csv (OBC selection cost, not in time_s: {select_wall:.0f} s)")


def report(args: argparse.Namespace) -> None:
    """per_case.csv (both phases), summary.csv (means over test fields) and the figure."""
    df = pd.concat([pd.read_csv(args.out / f"per_case_{k}.csv") for k in ("resshift", "diffusion")])
    df.to_csv(args.out / "per_case.csv", index=False)
    summary = df.drop(columns="case").groupby("method", sort=False).mean(numeric_only=True).reset_index()
    summary["fields"] = df.groupby("method", sort=False).size().to_numpy()
    summary.to_csv(args.out / "summary.csv", index=False)
    with pd.option_context("display.width", 160, "display.float_format", "{:.4f}".format):
        print(summary.to_string(index=False))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    ax[0].bar(summary["method"], summary["rmse"], label="ensemble mean / single")
    ax[0].scatter(summary["method"], summary["member_rmse"], color="k", zorder=3, label="single member")
    ax[0].set_ylabel("RMSE (K)")
    ax[0].tick_params(axis="x", rotation=30, labelsize=7)
    ax[0].legend(fontsize=7)
    ens = summary.dropna(subset=["crps"])
    ax[1].bar(ens["method"], ens["crps"])
    ax[1].set_ylabel("CRPS (K)")
    ax[1].tick_params(axis="x", rotation=30, labelsize=7)
    fig.suptitle(
        f"ERA5 UK t2m 4x, {int(summary['fields'].iloc[0])} test fields" + (" (quick)" if args.quick else "")
    )
    fig.tight_layout()
    fig.savefig(args.out / "atmos_methods.png", dpi=120)
    print(f"wrote {args.out}/per_case.csv, summary.csv, obc_scores.csv, atmos_methods.png, boundary/")


if __name__ == "__main__":
    main()
