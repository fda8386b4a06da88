"""The EM prior from observations only (Rozet et al. 2024) on the demo CT store, per EM round.

Training data: the sinograms of the ``--train-volumes`` volumes (16 slices each), each slice seen
through ``--views`` equispaced views shifted by its own random offset (``em.rotated_views``), with
the store's noise level; ground truth is never loaded for training (``fwd.data.load_observations``).
Initial prior: a full-covariance Gaussian fitted by ``--gaussian-iterations`` closed-form EM updates;
the prior's units come from the quantiles of its posterior means (``Normalisation.of``). Then
``--rounds`` rounds of E (one MMPS draw per slice) and M (``--train-steps`` of ``train_prior``).

Evaluation on the ``--eval-volumes`` (sv8: 8 equispaced views, the ct3d task), PSNR/SSIM of the
posterior mean (``--eval-samples`` draws, the E-step's sampler) per volume (``ct3d.evaluate.
view_metrics``, axial, object slices), averaged over volumes: the Gaussian prior, the prior after
each round, the prior trained on ground truth (``--gt-prior``, same sampler; the upper reference)
and FBP of the same views (the lower reference). Writes out/fwd_em/rounds.csv and rounds.png.

Run: PYTHONPATH=src python benchmarks/fwd_em.py [--store PATH] [--gt-prior DIR] [--rounds K] ...
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import write_csv

from diffinv.diffusion.networks import checkpoint_config
from diffinv.diffusion.schedule import VPSchedule
from diffinv.diffusion.training import TrainConfig
from diffinv.operators.ct import fbp
from diffinv.stages.core import Method
from diffinv.stages.ct3d.evaluate import view_metrics
from diffinv.stages.ct3d.run import load_prior
from diffinv.stages.ct3d.volumes import Normalisation, Task
from diffinv.stages.fwd.data import load_observations, operator_for
from diffinv.stages.fwd.em import (
    CTObservations,
    EStep,
    NetworkFit,
    fit_gaussian,
    posterior_draws,
    rotated_views,
    train_em,
)
from diffinv.stages.fwd.evaluate import load_truth

OUT = Path(__file__).parent / "out" / "fwd_em"
DEMO = Path("/tmp/demo2/main/results")
SLICES = 16
FIELDS = (
    "prior",
    "round",
    "psnr",
    "ssim",
    "nfe",
    "sample_wall_s",
    "train_wall_s",
    "e_nfe",
    "e_wall_s",
    "m_wall_s",
    "e_relative_residual",
    "train_volumes",
    "views",
    "train_steps",
    "e_steps",
    "cg_steps",
    "eval_samples",
    "gaussian_iterations",
    "gaussian_rank",
)


class Evaluator:
    """Posterior means of the evaluation slices under a prior, with the sv8 views, against the truth."""

    def __init__(self, args: argparse.Namespace, estep: EStep) -> None:
        self.obs = load_observations(args.store, args.eval_volumes, SLICES)
        self.views = Task("sv8", views=8).select(self.obs.angles_rad)
        self.op = operator_for(self.obs, self.views)
        self.ct = CTObservations.of(self.obs, np.repeat(self.views[None], len(self.obs.case_ids), 0))
        self.truth = load_truth(args.store, self.obs.case_ids)
        self.estep, self.seed = estep, args.seed
        self.volumes = len(args.eval_volumes)

    def metrics(self, estimate: np.ndarray) -> dict[str, float]:
        """Mean over volumes of axial PSNR/SSIM (object slices, the volume's data range)."""
        rows = [
            view_metrics(t, e, 0)
            for t, e in zip(np.split(self.truth, self.volumes), np.split(estimate, self.volumes))
        ]
        return {k: float(np.mean([r[k] for r in rows])) for k in ("psnr", "ssim")}

    def fbp(self) -> dict[str, float]:
        """FBP (Shepp-Logan, the ct3d default) of the same views."""
        return self.metrics(fbp(self.ct.y, self.op, "shepp-logan").numpy())

    def prior(self, prior: Any, norm: Normalisation) -> dict[str, float]:
        """Posterior mean (data units, non-negative) under ``prior`` in the units ``norm``."""
        ctn = self.ct.normalised(norm)
        estep = EStep(
            self.estep.method,
            self.estep.steps,
            self.estep.samples,
            self.estep.group,
            self.estep.slice_batch,
            self.estep.grid,
            float(norm.to_prior(torch.zeros(()))),
        )
        start = time.perf_counter()
        draws = posterior_draws(
            prior, ctn.y, ctn.operators, self.obs.image_shape, estep, self.seed, self.obs.case_ids, "eval"
        )
        mean = norm.to_data(draws.samples.mean(1)).clamp_min(0).numpy()
        return {**self.metrics(mean), "nfe": draws.nfe, "sample_wall_s": time.perf_counter() - start}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, default=DEMO / "data" / "ct.zarr")
    p.add_argument("--gt-prior", type=Path, default=DEMO / "ct3d" / "demo" / "prior")
    p.add_argument("--train-volumes", type=int, default=20)
    p.add_argument("--eval-volumes", type=int, nargs="+", default=[20, 21])
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--gaussian-iterations", type=int, default=3)
    p.add_argument("--gaussian-rank", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--train-steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--e-steps", type=int, default=6, help="sampler steps of the E-step and evaluation")
    p.add_argument("--cg-steps", type=int, default=1)
    p.add_argument("--eval-samples", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    schedule = VPSchedule()
    method = Method("dpmpp_2m", "mmps", guidance_options={"cg_steps": args.cg_steps})
    evaluator = Evaluator(args, EStep(method, args.e_steps, args.eval_samples, SLICES))
    rows: list[dict[str, Any]] = []

    def record(name: str, k: int | None, wall: float, res: dict[str, float]) -> None:
        row = dict.fromkeys(FIELDS, "")
        row.update(prior=name, round="" if k is None else k, train_wall_s=round(wall, 1))
        row.update({key: round(v, 4) for key, v in res.items()})
        rows.append(row)
        label = "" if k is None else k
        print(f"{name:>14} round {label!s:>2}: PSNR {res['psnr']:.2f} dB, SSIM {res['ssim']:.4f}")

    record("fbp", None, 0.0, evaluator.fbp())
    gt, gt_norm = load_prior(args.gt_prior, evaluator.obs.image_shape, "cpu")
    gt_wall = float(checkpoint_config(args.gt_prior)["training"]["wall_time_s"])
    record("ground_truth", None, gt_wall, evaluator.prior(gt, gt_norm))

    obs = load_observations(args.store, range(args.train_volumes), SLICES)
    views = rotated_views(obs.n_angles, args.views, len(obs.case_ids), args.seed)
    ct = CTObservations.of(obs, views)
    start = time.perf_counter()
    fit = fit_gaussian(ct.y, ct.operators, obs.image_shape, args.gaussian_iterations, args.gaussian_rank)
    norm = Normalisation.of(fit.posterior_means.numpy())
    gauss_wall = time.perf_counter() - start
    initial = fit.normalised(norm).denoiser(schedule)
    ll = fit.log_likelihood
    print(f"Gaussian EM: {gauss_wall:.1f} s, mean log-likelihood per slice {ll[0]:.1f} -> {ll[-1]:.1f}")
    print(f"prior units: offset {norm.offset:.4f}, scale {norm.scale:.4f}")
    record("gaussian_em", None, gauss_wall, evaluator.prior(initial, norm))

    ctn = ct.normalised(norm)
    floor = float(norm.to_prior(torch.zeros(())))
    estep = EStep(method, args.e_steps, 1, SLICES, floor=floor)
    network = {"size": list(obs.image_shape), "channels": 1, "widths": [32, 64, 64], "layers_per_block": 1}
    warmup = min(100, args.train_steps // 5)
    train = TrainConfig(args.train_steps, args.batch_size, warmup=warmup, seed=args.seed)
    info = {"source": str(args.store), "normalisation": {"offset": norm.offset, "scale": norm.scale}}
    fitter = NetworkFit(args.out / "priors", network, schedule, train, 1.5, info)
    em_start, eval_wall = time.perf_counter(), [0.0]

    def on_round(k: int, prior: Any) -> None:
        elapsed = time.perf_counter() - em_start - eval_wall[0]  # E and M steps so far, not evaluation
        start = time.perf_counter()
        res = evaluator.prior(prior, norm)
        eval_wall[0] += time.perf_counter() - start
        record("em", k, gauss_wall + elapsed, res)

    _, history = train_em(
        ctn.y,
        ctn.operators,
        obs.image_shape,
        initial,
        args.rounds,
        estep,
        fitter,
        args.seed,
        obs.case_ids,
        on_round=on_round,
    )
    for h, row in zip(history, [r for r in rows if r["prior"] == "em"]):
        row.update(e_nfe=round(h.e_nfe, 1), e_wall_s=round(h.e_wall_time_s, 1))
        row.update(m_wall_s=round(h.m_wall_time_s, 1), e_relative_residual=round(h.e_relative_residual, 4))
    for row in rows:
        row.update(train_volumes=args.train_volumes, views=args.views, train_steps=args.train_steps)
        row.update(gaussian_iterations=args.gaussian_iterations, gaussian_rank=args.gaussian_rank)
        row.update(e_steps=args.e_steps, cg_steps=args.cg_steps, eval_samples=args.eval_samples)
    write_csv(args.out / "rounds.csv", rows)
    plot(rows, args.out / "rounds.png")
    print(f"total {time.perf_counter() - t0:.0f} s; wrote {args.out / 'rounds.csv'} and rounds.png")


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """PSNR per EM round (round -1: the Gaussian prior) with the FBP and ground-truth lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {r["prior"]: r for r in rows if r["prior"] != "em"}
    em = [r for r in rows if r["prior"] == "em"]
    x = [-1] + [int(r["round"]) for r in em]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(
        x, [by["gaussian_em"]["psnr"]] + [r["psnr"] for r in em], "o-", label="EM prior (observations only)"
    )
    ax.axhline(by["ground_truth"]["psnr"], color="k", ls="--", label="prior trained on ground truth")
    ax.axhline(by["fbp"]["psnr"], color="gray", ls=":", label="FBP (same 8 views)")
    ax.set_xlabel("EM round (-1: Gaussian prior)")
    ax.set_ylabel("PSNR (dB), sv8 posterior mean")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
