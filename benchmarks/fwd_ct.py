"""Diffusion with forward models on the demo CT store, against FBP and a ground-truth-trained prior.

Trains the fwd signal network on the sinograms of the training volumes only (each model in its
own single-threaded process: the training cost is one core's), with EMA checkpoints along the way,
and for several numbers of views measured per training slice. Each model samples the slices of
the evaluation volumes from the sv8 context (8 equispaced views); the references are (a) the FBP
of the same 8 views and (b) the ct3d ground-truth prior with DDIM + DDS (3 CG steps) slice by
slice, the ct3d stage's ``slicewise`` method. Metrics: axial PSNR/SSIM per volume (ct3d
convention) and the shared uncertainty diagnostics, means over the evaluation volumes.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fwd_ct.py --jobs 4

(the defaults: 600 steps with checkpoints at 150 and 300, 8 context and 16 target views,
views per training slice all / 30 / 12; at the final checkpoint the sampling target set, the
guidance scale and DDIM's eta are varied one at a time). The training cost is reported as the
CPU time of the single-threaded training process (``train_cpu_s``), which contention on a
shared machine does not inflate. Writes ``benchmarks/out/fwd_ct/{results.csv, quality.png}``.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

STORE = Path("/tmp/demo2/main/results/data/ct.zarr")
GT_PRIOR = Path("/tmp/demo2/main/results/ct3d/demo/prior")


def _threads() -> None:
    torch.set_num_threads(1)


def _eval_signals(
    name: str, signals: dict[int, np.ndarray], truth: np.ndarray, depth: int
) -> dict[str, float]:
    """Mean over volumes of axial PSNR/SSIM of the posterior means and the uncertainty diagnostics."""
    from diffinv.stages.ct3d.evaluate import view_metrics
    from diffinv.stages.fwd.evaluate import posterior_diagnostics

    stack = np.stack([signals[i] for i in range(len(truth))], 1)  # (sample, n, ny, nx)
    rows = []
    for v in range(len(truth) // depth):
        sl = slice(v * depth, (v + 1) * depth)
        ref = truth[sl].astype(np.float64)
        row = view_metrics(ref, stack[:, sl].mean(0).astype(np.float64), 0)
        if stack.shape[0] > 1:
            row.update(posterior_diagnostics(stack[:, sl].astype(np.float64), ref))
        rows.append(row)
    out = pd.DataFrame(rows).mean(numeric_only=True).to_dict()
    return {"method": name, **{k: float(v) for k, v in out.items()}}


def fwd_job(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Train one fwd model (with checkpoints) and evaluate every checkpoint and sampling choice."""
    _threads()
    from diffinv.diffusion.schedule import VPSchedule
    from diffinv.stages.core import Method, Sampling
    from diffinv.stages.fwd.data import load_observations
    from diffinv.stages.fwd.evaluate import load_truth
    from diffinv.stages.fwd.model import FwdTrain, ViewPlan, equispaced, load_fwd, train_fwd
    from diffinv.stages.fwd.run import reconstruct, target_views

    a = spec["args"]
    out = Path(spec["folder"])
    train_obs = load_observations(Path(a["store"]), list(range(a["train_volumes"])), a["slices"])
    plan = ViewPlan(8, spec["train_targets"], spec["observed"], a["context_weight"], a["drop_context"])
    train_fwd(
        train_obs,
        out,
        {"widths": a["widths"]},
        VPSchedule(),
        plan,
        FwdTrain(steps=spec["steps"], batch_size=a["batch"], lr=a["lr"], warmup=a["warmup"], seed=a["seed"]),
        "shepp-logan",
        {"benchmark": "fwd_ct"},
        progress=False,
        checkpoints=spec["checkpoints"],
    )
    obs = load_observations(Path(a["store"]), a["eval_volumes"], a["slices"])
    truth = load_truth(Path(a["store"]), obs.case_ids)
    context = equispaced(obs.n_angles, 8)
    rows = []
    base = (spec["sample_targets"][0], spec["scales"][0], spec["etas"][0])
    final = [base]  # the defaults, then one choice changed at a time
    final += [(t, base[1], base[2]) for t in spec["sample_targets"][1:]]
    final += [(base[0], scale, base[2]) for scale in spec["scales"][1:]]
    final += [(base[0], base[1], eta) for eta in spec["etas"][1:]]
    for steps_done in [*spec["checkpoints"], spec["steps"]]:
        folder = out if steps_done == spec["steps"] else out / f"step{steps_done}"
        model = load_fwd(folder, obs)
        training = json.loads((folder / "config.json").read_text())["training"]
        for n_target, scale, eta in final if steps_done == spec["steps"] else final[:1]:
            target = target_views(obs.n_angles, context, n_target)
            method = Method("ddim", "none", solver_options={"eta": eta})
            sampling = Sampling(a["samples"], a["samples"], a["sample_steps"], final_dc=False)
            t0 = time.perf_counter()
            res = [
                reconstruct(model, obs, i, context, target, method, sampling, scale, a["seed"], "cpu")
                for i in range(len(obs.case_ids))
            ]
            wall = time.perf_counter() - t0
            row = _eval_signals("fwd", {i: r.samples.numpy() for i, r in enumerate(res)}, truth, a["slices"])
            row.update(
                train_steps=steps_done,
                observed_views=spec["observed"] or obs.n_angles,
                train_target_views=spec["train_targets"],
                sample_target_views=len(target),
                guidance_scale=scale,
                eta=eta,
                nfe=res[0].nfe,
                sample_wall_s=wall,
                train_wall_s=training["wall_time_s"],
                train_cpu_s=training["cpu_time_s"],
                context_residual=float(np.mean([r.context_residual.mean() for r in res])),
            )
            rows.append(row)
            print(
                json.dumps({k: row[k] for k in ("train_steps", "observed_views", "psnr", "ssim")}), flush=True
            )
    return rows


def reference_job(a: dict[str, Any]) -> list[dict[str, Any]]:
    """FBP of the 8 context views and the ground-truth prior (ct3d slicewise: DDIM + DDS)."""
    _threads()
    from diffinv.operators.ct import fbp
    from diffinv.stages.core import CaseSeeds, Method, Problem, Sampling, sample_case
    from diffinv.stages.ct3d.run import load_prior
    from diffinv.stages.ct3d.volumes import SliceDenoiser, normalised_problem_data
    from diffinv.stages.fwd.data import load_observations, operator_for
    from diffinv.stages.fwd.evaluate import load_truth
    from diffinv.stages.fwd.model import equispaced

    obs = load_observations(Path(a["store"]), a["eval_volumes"], a["slices"])
    truth = load_truth(Path(a["store"]), obs.case_ids)
    context = equispaced(obs.n_angles, 8)
    op = operator_for(obs, context)
    sino = torch.from_numpy(obs.sinograms[:, context])
    rows = [
        _eval_signals(
            "fbp",
            {i: s[None] for i, s in enumerate(fbp(sino, op, "shepp-logan").numpy())},
            truth,
            a["slices"],
        )
    ]
    prior, norm = load_prior(Path(a["gt_prior"]), obs.image_shape, "cpu")
    den = SliceDenoiser(prior, 64, norm.to_prior(torch.zeros(())).item())
    method = Method("ddim", "dds", solver_options={"eta": 0.15}, guidance_options={"cg_steps": 3})
    for steps in a["gt_steps"]:
        sampling = Sampling(a["samples"], a["samples"], steps, final_dc=False)
        signals: dict[int, np.ndarray] = {}
        t0 = time.perf_counter()
        for v in range(len(a["eval_volumes"])):
            sl = slice(v * a["slices"], (v + 1) * a["slices"])
            y_n = normalised_problem_data(sino[sl], op, 1.0, norm)
            res = sample_case(
                Problem(op, y_n, (a["slices"], *obs.image_shape)),
                den,
                method,
                sampling,
                CaseSeeds.of(a["seed"], f"volume {a['eval_volumes'][v]}"),
                "cpu",
            )
            x = norm.to_data(res.samples).clamp_min(0).numpy()  # (n, Z, ny, nx)
            for k in range(a["slices"]):
                signals[v * a["slices"] + k] = x[:, k]
        row = _eval_signals("gt_prior_ddim_dds", signals, truth, a["slices"])
        row.update(sample_steps=steps, sample_wall_s=time.perf_counter() - t0, nfe=steps)
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("method", "psnr", "ssim")}), flush=True)
    return rows


def plot(table: pd.DataFrame, path: Path) -> None:
    """PSNR against training steps (per observed views), with the FBP and ground-truth-prior lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    fwd = table[table["method"] == "fwd"]
    best = fwd.groupby(["observed_views", "train_steps"], as_index=False)["psnr"].max()
    for obs_views, group in best.groupby("observed_views"):
        ax[0].plot(group["train_steps"], group["psnr"], "o-", label=f"fwd, {int(obs_views)} views/slice")
    for name, style in (("fbp", "k--"), ("gt_prior_ddim_dds", "g:")):
        rows = table[table["method"] == name]
        if len(rows):
            ax[0].axhline(rows["psnr"].max(), color=style[0], ls=style[1:], label=name)
    ax[0].set(xlabel="training steps", ylabel="PSNR (dB)", title="sv8, eval volumes")
    ax[0].legend(fontsize=7)
    last = fwd[fwd["train_steps"] == fwd["train_steps"].max()]
    last = last.groupby("observed_views", as_index=False)["psnr"].max()
    ax[1].plot(last["observed_views"], last["psnr"], "o-")
    ax[1].set(xlabel="views measured per training slice", ylabel="PSNR (dB)", title="final checkpoint")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", default=str(STORE))
    p.add_argument("--gt-prior", default=str(GT_PRIOR))
    p.add_argument("--out", default="benchmarks/out/fwd_ct")
    p.add_argument("--train-volumes", type=int, default=20)
    p.add_argument("--eval-volumes", type=int, nargs="+", default=[20, 21])
    p.add_argument("--slices", type=int, default=16)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--checkpoints", type=int, nargs="*", default=[150, 300])
    p.add_argument(
        "--observed", type=int, nargs="+", default=[0, 30, 12], help="views per training slice; 0 = all"
    )
    p.add_argument("--train-targets", type=int, nargs="+", default=[16])
    p.add_argument(
        "--sample-targets", type=int, nargs="+", default=[16, 0], help="0 = every non-context view"
    )
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0])
    p.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--context-weight", type=float, default=1.0)
    p.add_argument("--drop-context", type=float, default=0.1)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--sample-steps", type=int, default=10)
    p.add_argument(
        "--etas", type=float, nargs="+", default=[0.0, 1.0], help="DDIM eta values (final checkpoint)"
    )
    p.add_argument("--gt-steps", type=int, nargs="+", default=[10])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--no-references", action="store_true", help="skip FBP and the ground-truth prior")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    args = vars(a)
    specs = [
        {
            "args": args,
            "folder": str(out / f"model_obs{observed}_t{targets}"),
            "observed": observed or None,
            "train_targets": targets,
            "steps": a.steps,
            "checkpoints": a.checkpoints
            if observed == a.observed[0] and targets == a.train_targets[0]
            else [],
            "sample_targets": [t or None for t in a.sample_targets],
            "scales": a.scales,
            "etas": a.etas,
        }
        for observed in a.observed
        for targets in a.train_targets
    ]
    with ProcessPoolExecutor(a.jobs, mp_context=get_context("spawn")) as pool:
        ref = [] if a.no_references else [pool.submit(reference_job, args)]
        runs = [pool.submit(fwd_job, s) for s in specs]
        rows = [r for f in ref + runs for r in f.result()]
    table = pd.DataFrame(rows)
    table.to_csv(out / "results.csv", index=False, float_format="%.4g")
    plot(table, out / "quality.png")
    cols = ["method", "train_steps", "observed_views", "train_target_views", "sample_target_views"]
    cols += [
        "guidance_scale",
        "eta",
        "psnr",
        "ssim",
        "coverage_90",
        "spread_skill",
        "train_cpu_s",
        "sample_wall_s",
    ]
    print(table[[c for c in cols if c in table]].to_string(index=False))


if __name__ == "__main__":
    main()
