"""Denoising score-matching training with EMA, a progress bar and a loss curve."""

from __future__ import annotations

import copy
import csv
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from diffinv.diffusion.denoisers import NetworkDenoiser, Prediction
from diffinv.diffusion.networks import build_unet, save_checkpoint, schedule_dict
from diffinv.diffusion.schedule import VPSchedule
from diffinv.errors import DiffinvError


@dataclass
class TrainConfig:
    """Training options (see the ``prior.train`` section of the config schema)."""

    steps: int = 1500
    batch_size: int = 32
    lr: float = 2e-3
    warmup: int = 100
    ema_decay: float = 0.995
    prediction: Prediction = "epsilon"
    flips: bool = True
    seed: int = 0
    log_every: int = 10


def _target(prediction: str, x0: Tensor, noise: Tensor, a: Tensor, s: Tensor) -> Tensor:
    if prediction == "epsilon":
        return noise
    if prediction == "v":
        return a * noise - s * x0
    return x0


def train_prior(
    images: Tensor,
    out: Path,
    network: dict[str, Any],
    schedule: VPSchedule,
    train: TrainConfig,
    clip: float | None,
    data_info: dict[str, Any],
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> NetworkDenoiser:
    """Train a UNet prior on ``images`` (N, C, H, W) and write a checkpoint folder ``out``.

    Loss: mean-squared error of the network's target (ε, x0 or v) at t ~ U(t_min, t_max)
    (Ho et al. 2020, Eq. 14). AdamW with linear warm-up and cosine decay to 5 %; the
    checkpoint holds the EMA weights. ``out`` also gets ``loss.csv`` and ``loss.png``.
    """
    gen = torch.Generator().manual_seed(train.seed)
    torch.manual_seed(train.seed)
    net = build_unet(**network).to(device)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=train.lr, weight_decay=1e-4)

    def lr_at(step: int) -> float:
        if step < train.warmup:
            return (step + 1) / train.warmup
        frac = (step - train.warmup) / max(1, train.steps - train.warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    log: list[tuple[int, float, float]] = []
    running = None
    start = time.perf_counter()
    bar = tqdm(range(train.steps), desc="train prior", disable=not progress, mininterval=2.0)
    for step in bar:
        idx = torch.randint(0, images.shape[0], (train.batch_size,), generator=gen)
        x0 = images[idx]
        if train.flips:
            flip = torch.rand(train.batch_size, generator=gen) < 0.5
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        x0 = x0.to(device)
        t = schedule.t_min + (schedule.t_max - schedule.t_min) * torch.rand(
            train.batch_size, generator=gen, dtype=torch.float64
        )
        noise = torch.randn(x0.shape, generator=gen).to(device)
        a = schedule.alpha(t).float().to(device).reshape(-1, 1, 1, 1)
        s = schedule.sigma(t).float().to(device).reshape(-1, 1, 1, 1)
        out_raw = net(a * x0 + s * noise, (1000 * t).float().to(device)).sample
        loss = (out_raw - _target(train.prediction, x0, noise, a, s)).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            decay = min(train.ema_decay, (1 + step) / (10 + step))
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.lerp_(p, 1 - decay)
        value = loss.item()
        if not math.isfinite(value):
            raise DiffinvError(
                f"training stopped at step {step}: the loss is {value} (fix: lower mri.prior.train.lr, "
                f"now {train.lr:g}, or check the training images for NaN)"
            )
        running = value if running is None else 0.98 * running + 0.02 * value
        if step % train.log_every == 0 or step == train.steps - 1:
            log.append((step, value, running))
            bar.set_postfix(loss=f"{running:.4f}")
    wall = time.perf_counter() - start
    if not all(bool(torch.isfinite(p).all()) for p in ema.parameters()):
        raise DiffinvError(
            f"training ended with non-finite weights (fix: lower mri.prior.train.lr, now {train.lr:g})"
        )
    config = {
        "network": network,
        "prediction": train.prediction,
        "schedule": schedule_dict(schedule),
        "clip": clip,
        "data": data_info,
        "training": {
            **vars(train),
            "wall_time_s": round(wall, 1),
            "final_loss_ema": running,
            "device": str(device),
        },
    }
    save_checkpoint(out, ema, config)
    write_loss_curve(out, log)
    return NetworkDenoiser(ema.eval(), schedule, train.prediction, clip)


def gradient_step(
    loss: Tensor,
    net: torch.nn.Module,
    opt: torch.optim.Optimizer,
    sched: Any,
    ema: torch.optim.swa_utils.AveragedModel,
    step: int,
    what: str,
    fix: str,
) -> float:
    """One update of a network trained with an EMA copy: backward, gradient norm clipped at 1,
    optimiser and learning-rate steps, EMA update. Returns the loss value; a non-finite one
    stops training with a one-line error naming ``what`` and the ``fix``."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    opt.step()
    sched.step()
    ema.update_parameters(net)
    value = loss.item()
    if not math.isfinite(value):
        raise DiffinvError(f"{what} training stopped at step {step}: loss {value} (fix: {fix})")
    return value


def write_loss_curve(out: Path, log: list[tuple[int, float, float]]) -> None:
    """``loss.csv`` (step, loss, smoothed) and ``loss.png``."""
    with open(out / "loss.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "loss", "loss_smoothed"])
        w.writerows(log)
    from diffinv.plots import plot_loss_curve

    plot_loss_curve(log, out / "loss.png")
