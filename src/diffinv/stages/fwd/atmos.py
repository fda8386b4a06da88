"""Diffusion with forward models on gridded atmospheric fields (Tewari et al. 2023, NeurIPS, adapted).

Instance 2 of the fwd stage (issue 14): the SIGNAL S is a fine gridded field (normalised units of
:class:`~diffinv.stages.atmos.data.Normalisation`); it is only ever observed through a 4× coarse
field y_c = CoarseGrain(x) + noise and station values y_s at a subset of a fixed site list
(bilinear :class:`~diffinv.operators.atmos.StationOperator`). Each training time sees its own
subset of ``per_time`` sites, drawn from its identity (``CaseSeeds.of(seed, case_id).mask``), so
over many times the sites cover the domain while no time is observed densely.

One training example splits a time's stations into context and target stations, diffuses the
target observation o_t = α_t y_trgt + σ_t ε (their Eq. 5 applied to the target observation) and
asks for S from the context (bicubic-upsampled coarse field plus the context stations, splatted
onto the grid with the bilinear adjoint Aᵀ as a value and a weight channel) and the noisy target
(splatted the same way). The loss lives in observation space only (their denoising loss):

    L = mean_trgt (A_trgt S − y_trgt)² + w_s · mean_ctx (A_ctx S − y_ctx)² + w_c · mean (C S − y_c)²,

C the coarse-graining. The context is zeroed with probability ``drop_context`` (classifier-free
guidance, Ho & Salimans 2022). At sampling the diffused variable is the observation at a FIXED set
of target sites, :class:`StationDenoiser` is D(o_t, t) = A_trgt S(o_t, ctx, t) for any solver
plug-in through :func:`~diffinv.stages.core.sample_case`, and the output is S at the last particles.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diffinv.diffusion.denoisers import content_hash
from diffinv.diffusion.networks import build_unet
from diffinv.diffusion.schedule import VPSchedule
from diffinv.diffusion.training import gradient_step
from diffinv.errors import ConfigError
from diffinv.operators.atmos import CoarseGrain, StationOperator
from diffinv.stages.atmos.data import crop, pad_fields, padding
from diffinv.stages.atmos.run import bicubic
from diffinv.stages.core import CaseSeeds, Method, Problem, Sampling, sample_case
from diffinv.stages.fwd.model import FwdTrain, SignalNet, guided_signal, observation_loss
from diffinv.stages.fwd.run import TargetSpace

MODEL = "fwd-atmos"
"""Model tag of a fwd atmosphere network."""


@dataclass(frozen=True)
class StationPlan:
    """How training examples split a time's stations: ``per_time`` sites observed per time out of
    the fixed list, ``context`` of them conditioning, the rest the diffused target; loss weights;
    training times t = t_min + (t_max − t_min) u^``t_power``, u ~ U(0, 1) (1: uniform, as Tewari et al.;
    above 1 more examples at low noise, where the target observation informs S)."""

    per_time: int = 12
    context: int = 8
    coarse_weight: float = 1.0
    context_weight: float = 1.0
    drop_context: float = 0.1
    t_power: float = 1.0


@dataclass
class AtmosObservations:
    """Training observations only (normalised units): no field is held."""

    coarse: Tensor  # (n, 1, h, w) noisy coarse fields
    stations: Tensor  # (n, N) noisy values at the N sites of the list, 0 where not observed
    observed: Tensor  # (n, N) bool: the sites each time observes
    case_ids: list[str]


@dataclass
class Grid:
    """The fine grid, its coarse-graining, the padding of the network and the periodicity."""

    latitude: np.ndarray
    longitude: np.ndarray
    coarse: CoarseGrain
    pad: tuple[int, int, int, int]
    periodic: bool = False

    @classmethod
    def of(cls, latitude: np.ndarray, longitude: np.ndarray, factor: int, widths: list[int]) -> Grid:
        """Area-weighted coarse-graining by ``factor``; padding to a multiple of 2^(depth − 1)."""
        shape = (len(latitude), len(longitude))
        coarse = CoarseGrain(shape, factor, latitudes=latitude)
        return cls(latitude, longitude, coarse, padding(shape, 2 ** (len(widths) - 1)))

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W)."""
        return len(self.latitude), len(self.longitude)

    def stations(self, lat: np.ndarray, lon: np.ndarray) -> StationOperator:
        """Bilinear interpolation (one channel, unwhitened) at sites ``lat``/``lon``."""
        return StationOperator(self.latitude, self.longitude, lat, lon, periodic=self.periodic)

    def upsample(self, coarse: Tensor) -> Tensor:
        """Bicubic images (n, 1, H, W) of coarse fields (n, 1, h, w) (atmos ``run.bicubic``)."""
        f = self.coarse.factor
        return torch.from_numpy(np.stack([bicubic(c, self.shape, f) for c in coarse.cpu().numpy()]))


def splat(op: StationOperator, values: Tensor, mask: Tensor) -> Tensor:
    """(B, 2, H, W) images of station values (B, N) on the sites of ``mask`` (B, N): Aᵀ(m·v), Aᵀm."""
    m = mask.to(values.dtype)
    both = torch.stack([values * m, m], 1)  # (B, 2, N): value and weight channels as two "batches"
    return op.A_adjoint(both.reshape(-1, both.shape[-1], 1)).reshape(values.shape[0], 2, *op.grid)


def observe(
    truth: Tensor,
    grid: Grid,
    sites: StationOperator,
    per_time: int,
    noise: tuple[float, float],
    case_ids: list[str],
    seed: int,
) -> AtmosObservations:
    """The instrument: coarse fields and ``per_time`` stations of the list (drawn per case) of the
    normalised fields ``truth`` (n, 1, H, W), with noise std ``noise`` = (coarse, stations) seeded by
    the case. The only function here that reads fields."""
    n_sites = sites.index.shape[0]
    if not 1 <= per_time <= n_sites:
        raise ConfigError(f"fwd atmos per_time: {per_time} of {n_sites} sites (fix: 1 to {n_sites})")
    coarse, stations = [], []
    observed = torch.zeros((len(case_ids), n_sites), dtype=torch.bool)
    for i, case in enumerate(case_ids):
        key = CaseSeeds.of(seed, case).mask
        gen = torch.Generator().manual_seed(key)
        x = truth[i : i + 1].double()
        c = grid.coarse.A(x)
        coarse.append(c + noise[0] * torch.randn(c.shape, generator=gen, dtype=c.dtype))
        s = sites.interpolate(x)[0, :, 0]
        stations.append(s + noise[1] * torch.randn(s.shape, generator=gen, dtype=s.dtype))
        observed[i, np.random.default_rng(key).choice(n_sites, per_time, replace=False)] = True
    values = torch.stack(stations).float() * observed
    return AtmosObservations(torch.cat(coarse).float(), values, observed, list(case_ids))


def split_stations(observed: Tensor, context: int, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """Random disjoint context (``context`` per row, fewer if not available) and target masks within
    each row's observed sites; the target gets the rest."""
    score = torch.from_numpy(rng.random(observed.shape)).masked_fill(~observed, 2.0)
    rank = score.argsort(1).argsort(1)
    ctx = (rank < context) & observed
    return ctx, observed & ~ctx


@dataclass
class FwdAtmosModel:
    """A signal network on the padded grid with its schedule and plan."""

    net: SignalNet
    grid: Grid
    schedule: VPSchedule
    plan: StationPlan

    def signal(self, context: Tensor, target: Tensor, t: Tensor) -> Tensor:
        """S (B, 1, H, W) from context (B, 3, H, W) and noisy-target (B, 2, H, W) images at ``t``."""
        p, periodic = self.grid.pad, self.grid.periodic
        return crop(self.net(pad_fields(context, p, periodic), pad_fields(target, p, periodic), t), p)

    def fingerprint(self) -> str:
        """Content hash of the weights, padding and schedule."""
        weights = sorted(self.net.state_dict().items())
        return content_hash(("FwdAtmosModel", weights, self.grid.pad, self.schedule))


def atmos_loss(
    signal: Tensor,
    grid: Grid,
    sites: StationOperator,
    coarse: Tensor,
    stations: Tensor,
    target: Tensor,
    context: Tensor,
    plan: StationPlan,
) -> Tensor:
    """Observation-space loss (module docstring); the station part is
    :func:`~diffinv.stages.fwd.model.observation_loss` with one "bin" per site."""
    st = observation_loss(sites.A(signal), stations[..., None], target, context, plan.context_weight)
    return st + plan.coarse_weight * (grid.coarse.A(signal) - coarse).pow(2).mean()


def context_image(grid: Grid, coarse: Tensor, op: StationOperator, values: Tensor, mask: Tensor) -> Tensor:
    """(B, 3, H, W): bicubic coarse field, splatted context stations (value, weight)."""
    return torch.cat([grid.upsample(coarse).to(values.dtype), splat(op, values, mask)], 1)


def train_fwd_atmos(
    obs: AtmosObservations,
    grid: Grid,
    sites: StationOperator,
    network: dict[str, Any],
    schedule: VPSchedule,
    plan: StationPlan,
    train: FwdTrain,
) -> tuple[FwdAtmosModel, list[tuple[int, float, float]], dict[str, Any]]:
    """Train the signal network on observations only: the model (EMA weights), the loss log
    (step, loss, smoothed) and a training record (settings, wall and CPU time)."""
    gen = torch.Generator().manual_seed(train.seed)
    rng = np.random.default_rng(train.seed)
    torch.manual_seed(train.seed)
    h, w = grid.shape
    size = [h + grid.pad[0] + grid.pad[1], w + grid.pad[2] + grid.pad[3]]
    net = SignalNet(build_unet(size=size, channels=5, **network))
    ema = torch.optim.swa_utils.AveragedModel(
        net, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(train.ema_decay)
    )
    opt = torch.optim.AdamW(net.parameters(), lr=train.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.SequentialLR(
        opt,
        [
            torch.optim.lr_scheduler.LinearLR(opt, 1.0 / max(1, train.warmup), 1.0, max(1, train.warmup)),
            torch.optim.lr_scheduler.CosineAnnealingLR(
                opt, max(1, train.steps - train.warmup), train.lr / 20
            ),
        ],
        [max(1, train.warmup)],
    )
    model = FwdAtmosModel(net, grid, schedule, plan)
    upsampled = grid.upsample(obs.coarse)
    log: list[tuple[int, float, float]] = []
    running: float | None = None
    start = (time.perf_counter(), time.process_time())
    for step in range(train.steps):
        idx = torch.randint(0, len(obs.case_ids), (train.batch_size,), generator=gen)
        ctx, trgt = split_stations(obs.observed[idx], plan.context, rng)
        y = obs.stations[idx]
        t = schedule.t_min + (schedule.t_max - schedule.t_min) * torch.rand(
            train.batch_size, generator=gen, dtype=torch.float64
        ).pow(plan.t_power)
        noisy = schedule.add_noise(y, t, torch.randn(y.shape, generator=gen))
        keep = (torch.rand(train.batch_size, generator=gen) >= plan.drop_context).float()[:, None, None, None]
        ctx_img = torch.cat([upsampled[idx], splat(sites, y, ctx)], 1) * keep
        signal = model.signal(ctx_img, splat(sites, noisy, trgt), t.float())
        loss = atmos_loss(signal, grid, sites, obs.coarse[idx], y, trgt, ctx, plan)
        value = gradient_step(loss, net, opt, sched, ema, step, "fwd atmos", "lower lr")
        running = value if running is None else 0.98 * running + 0.02 * value
        if step % train.log_every == 0 or step == train.steps - 1:
            log.append((step, value, running))
    record = {
        "model": MODEL,
        **asdict(train),
        "plan": asdict(plan),
        "wall_time_s": round(time.perf_counter() - start[0], 1),
        "cpu_time_s": round(time.process_time() - start[1], 1),
        "final_loss_ema": running,
    }
    trained = FwdAtmosModel(ema.module.eval().requires_grad_(False), grid, schedule, plan)
    return trained, log, record


class StationDenoiser:
    """D(o_t, t) = A_trgt S(o_t, ctx, t) on particles (B, T, 1) at a fixed set of T target sites.

    Classifier-free guidance on the context: S = S_u + w (S_c − S_u) (Ho & Salimans 2022), S_u the
    signal of a zeroed context; w = 1 is the conditional model.
    """

    def __init__(
        self, model: FwdAtmosModel, context: Tensor, target: StationOperator, guidance_scale: float
    ) -> None:
        self.model, self.schedule = model, model.schedule
        self.context, self.target, self.scale = context, target, float(guidance_scale)

    def fingerprint(self) -> str:
        """Content hash of the model, context image, target sites and guidance scale."""
        sites = (self.target.index, self.target.weights)
        return content_hash(("StationDenoiser", self.model.fingerprint(), self.context, sites, self.scale))

    def signal(self, x: Tensor, t: Tensor) -> Tensor:
        """S (B, 1, H, W), normalised units, at particles ``x`` (B, T, 1) and times ``t``."""
        b = x.shape[0]
        img = splat(self.target, x[..., 0], torch.ones(x.shape[:2], dtype=torch.bool, device=x.device))
        ctx = self.context.to(x).expand(b, -1, -1, -1)
        tt = torch.as_tensor(t, dtype=torch.float64).expand(b).to(x)
        return guided_signal(self.model.signal, ctx, img, tt, self.scale)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        return self.target.A(self.signal(x, t))


def posterior_fields(
    model: FwdAtmosModel,
    context: Tensor,
    target: StationOperator,
    method: Method,
    sampling: Sampling,
    seeds: CaseSeeds,
    guidance_scale: float = 1.0,
) -> tuple[Tensor, float]:
    """Posterior fields (n, 1, H, W), normalised units, from a :func:`context_image` (1, 3, H, W),
    diffusing the observation at the ``target`` sites; S is read at the last particles (t_min), one
    more network evaluation per sample. No final data consistency (the target carries no data).
    Returns the fields and the NFE per sample."""
    if method.guidance != "none" or method.search:
        raise ConfigError(
            f"fwd atmos method: guidance {method.guidance!r}, search {method.search!r}, but the diffused "
            "target stations carry no data (fix: guidance none, no search; the context conditions)"
        )
    D = StationDenoiser(model, context, target, guidance_scale)
    shape = (target.index.shape[0], 1)
    problem = Problem(TargetSpace(), torch.zeros((1, *shape)), shape)
    res = sample_case(problem, D, method, replace(sampling, final_dc=False), seeds, "cpu")
    t_min = torch.full((res.samples.shape[0],), model.schedule.t_min, dtype=torch.float64)
    with torch.no_grad():
        return D.signal(res.samples, t_min), res.nfe + 1
