"""ResShift: few-step super-resolution by residual shifting (Yue, Wang & Loy, NeurIPS 2023).

A Markov chain moves the fine field x0 to the upsampled coarse field y by shifting the
residual e0 = y − x0 (Eq. 1–2): q(x_t | x0, y) = N(x0 + η_t e0, κ² η_t I), t = 1..T,
with η_1 → 0, η_T → 1 and √η_t geometric in t with power p (Eq. 10). The reverse step is
the Gaussian posterior q(x_{t−1} | x_t, x0) (Eq. 5–6) with x0 replaced by the network's
prediction f(x_t, y, t), trained by ‖f − x0‖² (Eq. 9). Sampling starts from
x_T = y + κ √η_T ε and takes T network evaluations (T = 4–15).

Tensors are (n, C, H, W) fine fields and (n, C, ⌈H/f⌉, ⌈W/f⌉) coarse fields (block means,
as ``diffinv.operators.atmos.CoarseGrain`` returns them). The network sees fields padded
to a size its UNet accepts as the stage pads its prior's, and its output is cropped back.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from diffinv.diffusion.networks import WEIGHTS, build_unet, checkpoint_config, save_checkpoint
from diffinv.diffusion.training import gradient_step, write_loss_curve
from diffinv.errors import ConfigError, InputError, check_range
from diffinv.solvers.base import PerSampleNoise
from diffinv.stages.atmos.data import crop, pad_fields, padding

KIND = "resshift"


@dataclass(frozen=True)
class ResShiftSchedule:
    """The shifting schedule η_1 < … < η_T (Eq. 10) and the noise scale κ.

    Defaults are the paper's image SR settings (§4: T = 15, κ = 2, p = 0.3,
    √η_1 = min(0.04/κ, 0.04), √η_T = 0.99).
    """

    steps: int = 15
    kappa: float = 2.0
    p: float = 0.3
    eta_1: float = 0.02**2
    eta_T: float = 0.99**2

    def __post_init__(self) -> None:
        if int(self.steps) != self.steps or self.steps < 2:
            raise ConfigError(f"resshift.steps: must be an integer >= 2, got {self.steps!r}")
        check_range("resshift", "kappa", self.kappa, 1e-6)
        check_range("resshift", "p", self.p, 1e-6)
        if not 0.0 < self.eta_1 < self.eta_T <= 1.0:
            raise ConfigError(
                f"resshift: need 0 < eta_1 < eta_T <= 1, got eta_1={self.eta_1}, eta_T={self.eta_T} "
                "(fix: e.g. eta_1=4e-4, eta_T=0.9801)"
            )

    def eta(self) -> Tensor:
        """η_t for t = 1..T (float64): √η_t = √η_1 b_0^{β_t}, β_t = ((t−1)/(T−1))^p (T−1),
        b_0 = (η_T/η_1)^{1/(2(T−1))} (Eq. 10), i.e. η_t = η_1 (η_T/η_1)^{((t−1)/(T−1))^p}."""
        u = torch.linspace(0.0, 1.0, self.steps, dtype=torch.float64) ** self.p
        return self.eta_1 * (self.eta_T / self.eta_1) ** u

    def alpha(self) -> Tensor:
        """α_t = η_t − η_{t−1} for t = 1..T, with η_0 = 0 (Eq. 1)."""
        eta = self.eta()
        return eta - torch.cat([eta.new_zeros(1), eta[:-1]])


def _column(values: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """values[t − 1] broadcast against ``like`` (t holds 1-based step indices, one per row)."""
    picked = values.to(like.device)[t.to(like.device) - 1]
    return picked.to(like.dtype).reshape((-1,) + (1,) * (like.ndim - 1))


def marginal(schedule: ResShiftSchedule, x0: Tensor, y: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Mean x0 + η_t (y − x0) and variance κ² η_t of q(x_t | x0, y) (Eq. 2); ``t`` (n,) in 1..T."""
    eta = _column(schedule.eta(), t, x0)
    return x0 + eta * (y - x0), schedule.kappa**2 * eta


def posterior(schedule: ResShiftSchedule, x_t: Tensor, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Mean (η_{t−1}/η_t) x_t + (α_t/η_t) x0 and variance κ² (η_{t−1}/η_t) α_t of
    q(x_{t−1} | x_t, x0, y) (Eq. 5–6), η_0 = 0; ``t`` (n,) in 1..T."""
    eta = schedule.eta()
    prev = _column(torch.cat([eta.new_zeros(1), eta[:-1]]), t, x_t)
    now = _column(eta, t, x_t)
    alpha = now - prev
    return (prev / now) * x_t + (alpha / now) * x0, schedule.kappa**2 * prev / now * alpha


def upsample(coarse: Tensor, shape: tuple[int, int], factor: int) -> Tensor:
    """The chain's y: the stage's bicubic baseline of each (C, h, w) coarse field
    (:func:`diffinv.stages.atmos.run.bicubic`: cubic spline through the block values placed at
    the block centres, the last block possibly partial), as (n, C, H, W) in ``coarse``'s dtype."""
    h, w = (int(s) for s in shape)
    if coarse.ndim != 4 or coarse.shape[-2:] != (math.ceil(h / factor), math.ceil(w / factor)):
        raise ConfigError(
            f"resshift: coarse fields {tuple(coarse.shape)} do not match fine {h}×{w} at factor "
            f"{factor} (fix: give (n, C, ceil(H/f), ceil(W/f)))"
        )
    from diffinv.stages.atmos.run import bicubic  # run.py may import this module

    arr = coarse.detach().cpu().numpy()
    out = np.stack([bicubic(c, (h, w), factor) for c in arr])
    return torch.from_numpy(out).to(device=coarse.device, dtype=coarse.dtype)


class X0Predictor(Protocol):
    """What :func:`sample_resshift` needs: schedule, fine shape, factor and f(x_t, y, t) ≈ x0."""

    schedule: ResShiftSchedule
    shape: tuple[int, int]
    factor: int

    def __call__(self, x_t: Tensor, y: Tensor, t: Tensor) -> Tensor: ...


class ResShiftModel(nn.Module):
    """f(x_t, y, t) ≈ x0: the prior's UNet (``networks.build_unet``) on [x_t/√(κ²η_t + 1), y].

    The input scaling is the authors' ``normalize_input`` (ResShift code,
    ``GaussianDiffusion._scale_input``); t enters as 1000 t/T, the prior network's time scale.
    ``network`` holds ``build_unet``'s options without ``size`` (``channels`` = the field's C);
    the UNet takes 2C channels and its last convolution returns C. Inputs are padded as the
    stage pads its prior's (``data.pad_fields``: reflect, circular longitude if ``periodic``)
    and the output cropped back.
    """

    def __init__(
        self,
        network: dict[str, Any],
        schedule: ResShiftSchedule,
        shape: tuple[int, int],
        factor: int,
        periodic: bool = False,
    ) -> None:
        super().__init__()
        if "size" in network:
            raise ConfigError("resshift network: 'size' is derived from the fields (fix: drop it)")
        check_range("resshift", "factor", factor, 1)
        self.network = dict(network)
        self.schedule, self.factor, self.periodic = schedule, int(factor), bool(periodic)
        self.shape = (int(shape[0]), int(shape[1]))
        channels = int(network.get("channels", 1))
        self.pad = padding(self.shape, 2 ** (len(network.get("widths", (32, 64, 64))) - 1))
        size = (self.shape[0] + self.pad[0] + self.pad[1], self.shape[1] + self.pad[2] + self.pad[3])
        self.unet = build_unet(**{**self.network, "channels": 2 * channels, "size": size})
        conv = self.unet.conv_out
        self.unet.conv_out = nn.Conv2d(conv.in_channels, channels, conv.kernel_size, padding=conv.padding)
        self.register_buffer("eta", schedule.eta().float(), persistent=False)

    def forward(self, x_t: Tensor, y: Tensor, t: Tensor) -> Tensor:
        """x0 prediction at 1-based steps ``t`` (n,)."""
        scale = (self.schedule.kappa**2 * _column(self.eta, t, x_t) + 1).rsqrt()
        z = pad_fields(torch.cat([x_t * scale, y], 1), self.pad, self.periodic)
        return crop(self.unet(z, 1000.0 * t.to(x_t) / self.schedule.steps).sample, self.pad)


def train_resshift(
    fine: Tensor,
    coarse: Tensor,
    factor: int,
    schedule: ResShiftSchedule,
    network: dict[str, Any],
    steps: int = 2000,
    batch_size: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
    ema_decay: float = 0.995,
    periodic: bool = False,
    device: str | torch.device = "cpu",
) -> tuple[ResShiftModel, list[tuple[int, float, float]]]:
    """Train f on pairs (fine (N, C, H, W), coarse (N, C, h, w)) with ‖f(x_t, y, t) − x0‖² (Eq. 9).

    t ~ U{1..T}, x_t ~ q(x_t | x0, y) (Eq. 2). AdamW with a cosine decay to 5 % of ``lr`` and
    an EMA of the weights (returned, in eval mode), as the prior's training. Returns the
    model and the loss log (step, loss, smoothed loss) for ``training.write_loss_curve``.
    """
    if fine.shape[0] != coarse.shape[0] or fine.shape[1] != coarse.shape[1]:
        raise ConfigError(
            f"resshift training: fine {tuple(fine.shape)} and coarse {tuple(coarse.shape)} differ in "
            "cases or channels (fix: pair each fine field with its coarse field)"
        )
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = ResShiftModel({**network, "channels": fine.shape[1]}, schedule, tuple(fine.shape[-2:]), factor).to(
        device
    )
    ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(ema_decay))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps), eta_min=0.05 * lr)
    y_all = upsample(coarse, tuple(fine.shape[-2:]), factor)
    log: list[tuple[int, float, float]] = []
    running = math.nan
    for step in range(steps):
        idx = torch.randint(0, fine.shape[0], (batch_size,), generator=gen)
        x0, y = fine[idx].to(device), y_all[idx].to(device)
        t = torch.randint(1, schedule.steps + 1, (batch_size,), generator=gen)
        mean, var = marginal(schedule, x0, y, t)
        x_t = mean + var.sqrt() * torch.randn(x0.shape, generator=gen).to(device)
        loss = (net(x_t, y, t.to(device)) - x0).pow(2).mean()
        value = gradient_step(loss, net, opt, cosine, ema, step, "resshift", f"lower lr={lr:g}")
        running = value if math.isnan(running) else 0.98 * running + 0.02 * value
        if step % 10 == 0 or step == steps - 1:
            log.append((step, value, running))
    model = ema.module.eval().requires_grad_(False)
    return model, log


@torch.no_grad()
def sample_resshift(model: X0Predictor, coarse: Tensor, noise: PerSampleNoise) -> Tensor:
    """One fine field per generator of ``noise`` (ensemble members), given ``coarse`` (1 or n, C, h, w).

    x_T = y + κ √η_T ε, then for t = T..1: x_{t−1} = mean + √var · z of
    q(x_{t−1} | x_t, f(x_t, y, t)) (Eq. 5–6); at t = 1 (η_0 = 0) the variance is 0 and
    x_0 = f(x_1, y, 1). Costs T network evaluations per member.
    """
    sch = model.schedule
    y = upsample(coarse, model.shape, model.factor)
    n = len(noise)
    y = y.expand((n,) + tuple(y.shape[1:])) if y.shape[0] == 1 else y
    if y.shape[0] != n:
        raise ConfigError(f"resshift: {y.shape[0]} coarse fields for {n} members (fix: give 1 or {n})")
    event = tuple(y.shape[1:])
    eta_T = float(sch.eta()[-1])
    x = y + sch.kappa * math.sqrt(eta_T) * noise.randn(event, y.dtype).to(y.device)
    for step in range(sch.steps, 0, -1):
        t = torch.full((n,), step, dtype=torch.long, device=y.device)
        mean, var = posterior(sch, x, model(x, y, t), t)
        x = mean + var.sqrt() * noise.randn(event, y.dtype).to(y.device) if step > 1 else mean
    return x


def save_resshift(
    folder: Path, model: ResShiftModel, log: list[tuple[int, float, float]], record: dict[str, Any]
) -> Path:
    """Write the model as a checkpoint folder (``model.safetensors``, ``config.json`` with ``record``
    (data, training options, provenance) under ``training``, ``loss.csv``/``loss.png``)."""
    config = {
        "kind": KIND,
        "network": model.network,
        "prediction": "x0",
        "schedule": asdict(model.schedule),
        "shape": list(model.shape),
        "factor": model.factor,
        "periodic": model.periodic,
        "training": {**record, "final_loss_ema": log[-1][2] if log else None},
    }
    save_checkpoint(Path(folder), model, config)
    write_loss_curve(Path(folder), log)
    return Path(folder)


def load_resshift(folder: Path, device: str | torch.device = "cpu") -> ResShiftModel:
    """Rebuild a model written by :func:`save_resshift` (safetensors only, never unpickled)."""
    folder = Path(folder)
    cfg = checkpoint_config(folder)
    if cfg.get("kind") != KIND:
        raise InputError(
            folder, f"not a ResShift checkpoint (kind {cfg.get('kind')!r})", "train with resshift"
        )
    model = ResShiftModel(
        cfg["network"], ResShiftSchedule(**cfg["schedule"]), cfg["shape"], cfg["factor"], cfg["periodic"]
    )
    try:
        model.load_state_dict(load_file(str(folder / WEIGHTS)), strict=True)
    except (RuntimeError, OSError) as exc:
        raise InputError(
            folder / WEIGHTS, f"weights do not load ({str(exc).splitlines()[0]})", "retrain"
        ) from exc
    return model.eval().requires_grad_(False).to(device)
