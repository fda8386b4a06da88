"""Diffusion with forward models on CT slices (Tewari et al. 2023, NeurIPS, adapted to CT).

Every training slice is seen only through its sinogram. One training example draws context views
and a disjoint set of target views from the views measured for that slice, diffuses the target
observation o_t = α_t o_trgt + σ_t ε (Tewari et al. 2023 noise the target view) and asks for the
SIGNAL S (a 2D slice) from the filtered back-projections of the context sinogram and of o_t. The
known operator renders S, and the loss compares observations only (their denoising loss, in CT form):

    L = mean_trgt (A_trgt S / c − o_trgt)² + w · mean_ctx (A_ctx S / c − o_ctx)²,

means over the measured bins of each view set. The context is zeroed with probability
``drop_context`` (classifier-free guidance, Ho & Salimans 2022). No image of the slice is read.

At sampling the diffused variable is the observation of a FIXED set of target views (the solver's
particles live in that space, so the set cannot change between steps); :class:`RenderedDenoiser`
is D(o_t, t) = A_trgt S(o_t, ctx, t) / c, an ordinary denoiser every solver plug-in drives, and
the output signal is S at the final particles.

Units: images in the prior's normalised values x_n = (x − offset) / scale (as the ct3d stage,
:class:`~diffinv.stages.ct3d.volumes.Normalisation`, here from FBPs of the training sinograms,
not from images); observations y_n = (y − offset · A𝟙) / scale, divided by the constant c (their
standard deviation over the training bins) so that the diffused variable has unit scale.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from diffinv.diffusion.denoisers import content_hash
from diffinv.diffusion.networks import build_unet, checkpoint_config, load_denoiser, save_checkpoint
from diffinv.diffusion.schedule import VPSchedule
from diffinv.diffusion.training import gradient_step, write_loss_curve
from diffinv.errors import ConfigError, InputError
from diffinv.operators.ct import FilterName, angular_weights, fbp
from diffinv.stages.core import CaseSeeds
from diffinv.stages.ct3d.volumes import Normalisation
from diffinv.stages.fwd.data import SliceObservations, operator_for

MODEL = "fwd-ct"
"""``data.model`` of a fwd checkpoint's config.json."""


@dataclass(frozen=True)
class ViewPlan:
    """How training examples split a slice's measured views (``fwd.train`` of the config).

    ``context_views`` views nearest an equispaced pattern with a random offset (the sparse-view
    task's layout), ``target_views`` more the same way among the rest; ``observed_views``: views
    measured per training slice (a subset drawn per slice from its identity; ``None`` = all).
    """

    context_views: int = 8
    target_views: int = 16
    observed_views: int | None = None
    context_weight: float = 1.0
    drop_context: float = 0.1


@dataclass(frozen=True)
class FwdTrain:
    """Optimiser settings: AdamW, linear warm-up, cosine decay to 5 %, EMA of the weights."""

    steps: int = 1500
    batch_size: int = 32
    lr: float = 2e-3
    warmup: int = 100
    ema_decay: float = 0.995
    seed: int = 0
    log_every: int = 10


def equispaced(n_angles: int, views: int, shift: float = 0.0) -> np.ndarray:
    """Indices floor((k + shift) · n_angles / views), k < views: ``views`` evenly over the scan."""
    if not 1 <= views <= n_angles:
        raise ConfigError(f"fwd: {views} views asked of a scan of {n_angles} (fix: ask for 1 to {n_angles})")
    return (np.floor((np.arange(views) + shift) * n_angles / views).astype(np.int64)) % n_angles


def nearest_views(available: np.ndarray, count: int, rng: np.random.Generator, n_angles: int) -> np.ndarray:
    """Up to ``count`` distinct views of ``available`` nearest an equispaced pattern with a random offset."""
    if count >= len(available):
        return np.sort(available)
    ideal = (rng.uniform(0.0, 1.0) + np.arange(count)) * n_angles / count
    gap = np.abs(ideal[:, None] - available[None, :])
    gap = np.minimum(gap, n_angles - gap)  # views wrap around (θ and θ + π see the same lines)
    return np.unique(available[np.argmin(gap, axis=1)])


class Geometry:
    """The full scan's operator, the observation normalisation, masked FBP and rendering."""

    def __init__(
        self, obs: SliceObservations, norm: Normalisation, obs_scale: float, filter: FilterName
    ) -> None:
        self.op = operator_for(obs, np.arange(obs.n_angles))
        self.norm, self.obs_scale, self.filter = norm, float(obs_scale), filter
        self.image_shape = obs.image_shape
        self.full_weights = angular_weights(self.op.angles)
        self.ones = self.op.A(torch.ones((1, *obs.image_shape)))[0]  # A𝟙, (n_angles, n_det)

    def to_model(self, sinograms: Tensor) -> Tensor:
        """Observations (…, n_angles, n_det) in pixel units → y_n / c."""
        return (sinograms - self.norm.offset * self.ones) / self.norm.scale / self.obs_scale

    def view_weights(self, masks: Tensor) -> Tensor:
        """(B, n_angles) FBP weights of each row's views relative to the full scan's (0 off the set)."""
        out = torch.zeros(masks.shape, dtype=torch.float64)
        for b, mask in enumerate(masks.cpu()):
            idx = torch.nonzero(mask).flatten()
            out[b, idx] = angular_weights(self.op.angles[idx]) / self.full_weights[idx]
        return out

    def image(self, o: Tensor, weights: Tensor) -> Tensor:
        """FBP (normalised image units, (B, 1, ny, nx)) of model observations o (B, n_angles, n_det)
        on the views with nonzero ``weights`` (:meth:`view_weights`); other views are ignored."""
        scaled = o * (self.obs_scale * weights.to(o))[:, :, None]
        return fbp(scaled, self.op, self.filter, "adjoint")[:, None]

    def render(self, signal: Tensor) -> Tensor:
        """A S / c: model observations (B, n_angles, n_det) of normalised signals (B, 1, ny, nx)."""
        return self.op.A(signal[:, 0]) / self.obs_scale

    def as_dict(self) -> dict[str, Any]:
        """For the checkpoint's config."""
        return {"offset": self.norm.offset, "scale": self.norm.scale, "obs_scale": self.obs_scale}


class SignalNet(nn.Module):
    """S(ctx, o_t, t): a UNet on [FBP(context), FBP(noisy target)]; its first output channel is S."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, context: Tensor, target: Tensor, t: Tensor) -> Tensor:
        out = self.unet(torch.cat([context, target], 1), (1000.0 * t).to(context.dtype))
        return (out.sample if hasattr(out, "sample") else out)[:, :1]


def guided_signal(
    signal: Callable[[Tensor, Tensor, Tensor], Tensor],
    context: Tensor,
    target: Tensor,
    t: Tensor,
    scale: float,
) -> Tensor:
    """Classifier-free guidance (Ho & Salimans 2022, Eq. 6): S_u + w (S_c − S_u), the unconditional
    S_u with a zero context (the training dropout), in one batch; ``scale`` 1 is S_c alone."""
    if scale == 1.0:
        return signal(context, target, t)
    both = signal(torch.cat([context, torch.zeros_like(context)]), target.repeat(2, 1, 1, 1), t.repeat(2))
    cond, uncond = both.chunk(2)
    return uncond + scale * (cond - uncond)


def observation_loss(
    rendered: Tensor, observed: Tensor, target: Tensor, context: Tensor, context_weight: float
) -> Tensor:
    """Observation-space loss (module docstring): batch mean of mean_trgt (r − o)² + w · mean_ctx (r − o)²,
    with ``target``/``context`` (B, n_angles) masks of the views and means over their bins."""
    err = (rendered - observed).pow(2).mean(-1)  # (B, n_angles): mean over detector bins
    t, c = target.to(err.dtype), context.to(err.dtype)
    per = (err * t).sum(1) / t.sum(1).clamp_min(1) + context_weight * (err * c).sum(1) / c.sum(1).clamp_min(1)
    return per.mean()


def observed_masks(obs: SliceObservations, plan: ViewPlan, seed: int) -> Tensor:
    """(n, n_angles) views measured per training slice: all, or ``observed_views`` drawn from the
    slice's identity (``CaseSeeds.of(seed, case_id).mask``), so a slice keeps its views in every run."""
    n_angles = obs.n_angles
    if plan.observed_views is None:
        return torch.ones((len(obs.case_ids), n_angles), dtype=torch.bool)
    need = plan.context_views + 1
    if not need <= plan.observed_views <= n_angles:
        raise ConfigError(
            f"fwd.train.observed_views: {plan.observed_views} must lie in [{need}, {n_angles}] "
            "(context views plus at least one target view) (fix: change it or context_views)"
        )
    out = torch.zeros((len(obs.case_ids), n_angles), dtype=torch.bool)
    for i, case in enumerate(obs.case_ids):
        rng = np.random.default_rng(CaseSeeds.of(seed, case).mask)
        out[i, rng.choice(n_angles, plan.observed_views, replace=False)] = True
    return out


def draw_views(observed: Tensor, plan: ViewPlan, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """Context and disjoint target masks (B, n_angles) within each row's observed views."""
    n_angles = observed.shape[1]
    ctx, trgt = torch.zeros_like(observed), torch.zeros_like(observed)
    for b, row in enumerate(observed.numpy()):
        available = np.flatnonzero(row)
        c = nearest_views(available, plan.context_views, rng, n_angles)
        rest = np.setdiff1d(available, c)
        ctx[b, c] = True
        trgt[b, nearest_views(rest, plan.target_views, rng, n_angles)] = True
    return ctx, trgt


@dataclass
class FwdModel:
    """A trained signal network with its geometry and schedule."""

    net: SignalNet
    geometry: Geometry
    schedule: VPSchedule
    plan: ViewPlan

    def fingerprint(self) -> str:
        """Content hash of the weights, normalisation and schedule."""
        weights = sorted(self.net.state_dict().items())
        return content_hash(("FwdModel", weights, self.geometry.as_dict(), self.schedule))


def training_geometry(obs: SliceObservations, observed: Tensor, filter: FilterName) -> Geometry:
    """Normalisation from the FBPs of the training sinograms (their measured views; no images):
    offset/scale from their 0.5/99.5 % quantiles; c from the normalised observations' std."""
    unit = Geometry(obs, Normalisation(0.0, 1.0), 1.0, filter)
    sino = torch.from_numpy(obs.sinograms)
    images = unit.image(sino, unit.view_weights(observed))
    norm = Normalisation.of(images.numpy())
    y_n = Geometry(obs, norm, 1.0, filter).to_model(sino)
    scale = float(y_n[observed].std())
    return Geometry(obs, norm, scale, filter)


def train_fwd(
    obs: SliceObservations,
    out: Path,
    network: dict[str, Any],
    schedule: VPSchedule,
    plan: ViewPlan,
    train: FwdTrain,
    filter: FilterName,
    info: dict[str, Any],
    device: str | torch.device = "cpu",
    progress: bool = True,
    checkpoints: Sequence[int] = (),
) -> FwdModel:
    """Train the signal network on observations only and write a checkpoint folder ``out``.

    ``checkpoints``: extra steps at which the EMA weights are also written to ``out/step{k}``.
    """
    gen = torch.Generator().manual_seed(train.seed)
    rng = np.random.default_rng(train.seed)
    torch.manual_seed(train.seed)
    observed = observed_masks(obs, plan, train.seed)
    geometry = training_geometry(obs, observed, filter)
    data = geometry.to_model(torch.from_numpy(obs.sinograms))
    unet_kwargs = {"size": list(obs.image_shape), "channels": 2, **network}
    net = SignalNet(build_unet(**unet_kwargs)).to(device)
    ema = torch.optim.swa_utils.AveragedModel(
        net, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(train.ema_decay)
    )
    opt = torch.optim.AdamW(net.parameters(), lr=train.lr, weight_decay=1e-4)
    warm = max(1, train.warmup)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda k: (
            min(1.0, (k + 1) / warm)
            * (
                0.05
                + 0.475 * (1 + math.cos(math.pi * min(1.0, max(0, k - warm) / max(1, train.steps - warm))))
            )
        ),
    )
    config = {
        "network": unet_kwargs,
        "prediction": "x0",
        "schedule": asdict(schedule),
        "clip": None,
        "data": {
            **info,
            "model": MODEL,
            "geometry": geometry.as_dict(),
            "filter": filter,
            "plan": asdict(plan),
        },
    }
    log: list[tuple[int, float, float]] = []
    running: float | None = None
    start = (time.perf_counter(), time.process_time())
    for step in tqdm(range(train.steps), desc="train fwd", disable=not progress, mininterval=2.0):
        idx = torch.randint(0, data.shape[0], (train.batch_size,), generator=gen)
        ctx, trgt = draw_views(observed[idx], plan, rng)
        o = data[idx]
        t = schedule.t_min + (schedule.t_max - schedule.t_min) * torch.rand(
            train.batch_size, generator=gen, dtype=torch.float64
        )
        noisy = schedule.add_noise(o, t, torch.randn(o.shape, generator=gen))
        keep = (torch.rand(train.batch_size, generator=gen) >= plan.drop_context).float()[:, None, None, None]
        ctx_img = geometry.image(o, geometry.view_weights(ctx)) * keep
        trgt_img = geometry.image(noisy, geometry.view_weights(trgt))
        signal = net(ctx_img.to(device), trgt_img.to(device), t.float().to(device))
        loss = observation_loss(geometry.render(signal.cpu()), o, trgt, ctx, plan.context_weight)
        value = gradient_step(loss, net, opt, sched, ema, step, "fwd", "lower fwd.train.lr")
        running = value if running is None else 0.98 * running + 0.02 * value
        if step % train.log_every == 0 or step == train.steps - 1:
            log.append((step, value, running))
        if step + 1 in checkpoints and step + 1 < train.steps:
            save_checkpoint(
                out / f"step{step + 1}", ema.module.unet, _with_training(config, train, step + 1, start)
            )
    config = _with_training(config, train, train.steps, start, running)
    save_checkpoint(out, ema.module.unet, config)
    write_loss_curve(out, log)
    return FwdModel(ema.module.eval().requires_grad_(False), geometry, schedule, plan)


def _with_training(
    config: dict[str, Any], train: FwdTrain, steps: int, start: tuple[float, float], loss: float | None = None
) -> dict[str, Any]:
    record = {
        **asdict(train),
        "steps_done": steps,
        "wall_time_s": round(time.perf_counter() - start[0], 1),
        "cpu_time_s": round(time.process_time() - start[1], 1),
    }
    return {**config, "training": {**record, "final_loss_ema": loss}}


def load_fwd(folder: Path, obs: SliceObservations, device: str | torch.device = "cpu") -> FwdModel:
    """The model of a checkpoint written by :func:`train_fwd`, on the geometry of ``obs``."""
    cfg = checkpoint_config(Path(folder))
    data = cfg.get("data") or {}
    if data.get("model") != MODEL:
        raise InputError(Path(folder) / "config.json", "not a fwd model", "train it with 'diffinv train fwd'")
    if tuple(cfg["network"]["size"]) != tuple(obs.image_shape):
        raise InputError(
            Path(folder) / "config.json",
            f"trained on {cfg['network']['size']} slices, the observations are {list(obs.image_shape)}",
            "use a model trained on this grid",
        )
    g = data["geometry"]
    geometry = Geometry(obs, Normalisation(g["offset"], g["scale"]), g["obs_scale"], data["filter"])
    net = SignalNet(load_denoiser(Path(folder), device).net)
    return FwdModel(net.eval(), geometry, VPSchedule(**cfg["schedule"]), ViewPlan(**data["plan"]))


class RenderedDenoiser:
    """D(o_t, t) = A_trgt S(o_t, ctx, t) / c on particles (B, n_target, n_det) of a fixed target set.

    Classifier-free guidance on the context: S = S_u + w (S_c − S_u) on the signal (Ho & Salimans
    2022, with w = 1 + their w), S_u the signal of a zeroed context; w = 1 is the conditional model.
    """

    def __init__(self, model: FwdModel, context: Tensor, views: np.ndarray, guidance_scale: float) -> None:
        self.model, self.schedule = model, model.schedule
        self.context, self.scale = context, float(guidance_scale)
        n_angles = model.geometry.op.n_angles
        self.views = torch.as_tensor(np.asarray(views), dtype=torch.long)
        mask = torch.zeros((1, n_angles), dtype=torch.bool)
        mask[0, self.views] = True
        self.weights = model.geometry.view_weights(mask)

    def fingerprint(self) -> str:
        """Content hash of the model, context image, target views and guidance scale."""
        return content_hash(
            ("RenderedDenoiser", self.model.fingerprint(), self.context, self.views, self.scale)
        )

    def signal(self, x: Tensor, t: Tensor) -> Tensor:
        """S (B, 1, ny, nx), normalised image units, at particles ``x`` and times ``t`` (B,)."""
        g = self.model.geometry
        full = x.new_zeros((x.shape[0], g.op.n_angles, g.op.n_det))
        full[:, self.views] = x
        target = g.image(full, self.weights.expand(x.shape[0], -1))
        ctx = self.context.to(x).expand(x.shape[0], -1, -1, -1)
        tt = torch.as_tensor(t, dtype=torch.float64).expand(x.shape[0]).to(x)
        return guided_signal(self.model.net, ctx, target, tt, self.scale)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        return self.model.geometry.render(self.signal(x, t))[:, self.views]
