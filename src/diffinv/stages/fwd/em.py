"""A diffusion prior learned from observations only by expectation-maximisation.

Rozet, Andry, Lanusse & Louppe 2024 ("Learning Diffusion Priors from Observations by Expectation
Maximization", NeurIPS), Algorithm 1: from an initial prior q_0, iterate K rounds of

- **E**: draw x ~ q_k(x | y_i, A_i) for every training observation (y_i, A_i), each with its own
  operator, with the current prior and a guidance plug-in (MMPS, their Sec. 3.2, by default);
- **M**: fit the denoiser of q_{k+1} to those draws (denoising score matching).

Ground truth never enters: :func:`train_em` takes observations, operators and an initial prior.

The initial prior (their Sec. 4 and App. C: a Gaussian fitted by EM to the observations) is
fitted here by *closed-form* EM on the linear-Gaussian model y_i = A_i x + n_i, x ~ N(μ, Σ),
n_i ~ N(0, σ_i² I) (Dempster, Laird & Rubin 1977; the E-step moments are Bishop 2006, Eq. 2.116):
with K_i = A_i Σ A_iᵀ + σ_i² I,

    m_i = μ + Σ A_iᵀ K_i⁻¹ (y_i − A_i μ),    S_i = Σ − Σ A_iᵀ K_i⁻¹ A_i Σ,
    μ' = mean_i m_i,    Σ' = mean_i [S_i + (m_i − μ')(m_i − μ')ᵀ].

The covariance is full (d × d; d = 1024 at 32 × 32), from μ = 0, Σ = I as in the paper's
``fit_moments``; observations that share an operator object share its K_i factorisation, so a
pool of P view sets costs P solves per iteration. The same M-step on E-step *draws* instead of
exact moments is :class:`GaussianMoments`, the Monte-Carlo EM the paper runs.

E-step batching: ``EStep.group`` observations form one case of the sampling core, with particles
(samples, group, *shape), a :class:`StackedOperator` of their operators and the prior applied
slice by slice (:class:`~diffinv.stages.slices.SliceDenoiser`), so network calls see
``group × samples`` rows. MMPS then solves one block-diagonal system per case; conjugate
gradient on it shares step sizes across the block, so with few CG steps a group of observations
is not the same as one observation at a time (exact either way once CG has converged).

M-step warm start: :func:`diffinv.diffusion.training.train_prior` builds a new network, so each
round's network is trained from the same initialisation on that round's draws (the paper warm
starts from the previous round).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from diffinv.diffusion.denoisers import Denoiser, GaussianMixtureDenoiser, NetworkDenoiser
from diffinv.diffusion.schedule import GridKind, VPSchedule
from diffinv.diffusion.training import TrainConfig
from diffinv.errors import ConfigError, InputError, check_range
from diffinv.operators.base import LinearOperator
from diffinv.stages.core import CaseSeeds, Method, Problem, Sampling, sample_case
from diffinv.stages.ct3d.volumes import Normalisation
from diffinv.stages.fwd.data import SliceObservations, operator_for
from diffinv.stages.slices import SliceDenoiser


class StackedOperator(LinearOperator):
    """Block-diagonal operator of G observations: x (B, G, *shape) → y (B, G, *obs_shape),
    ``y[:, k] = operators[k].A(x[:, k])``. Every block must have the same output shape and noise."""

    def __init__(self, operators: Sequence[LinearOperator]) -> None:
        self.operators = list(operators)
        noise = {float(op.noise_std) for op in self.operators}
        if len(noise) != 1:
            raise ConfigError(
                f"fwd em: stacked operators have different noise_std {sorted(noise)} "
                "(fix: EStep.group = 1, or give the observations of a group one noise level)"
            )
        self.noise_std = noise.pop()

    def A(self, x: Tensor) -> Tensor:
        return torch.stack([op.A(x[:, k]) for k, op in enumerate(self.operators)], 1)

    def A_adjoint(self, y: Tensor) -> Tensor:
        return torch.stack([op.A_adjoint(y[:, k]) for k, op in enumerate(self.operators)], 1)


def dense_matrix(op: LinearOperator, shape: tuple[int, ...], dtype: torch.dtype = torch.float64) -> Tensor:
    """The (m, d) matrix of ``op`` on signals of ``shape`` (d = prod shape): A applied to the basis."""
    d = int(np.prod(shape))
    eye = torch.eye(d, dtype=dtype).reshape(d, *shape)
    return op.A(eye).reshape(d, -1).T.to(torch.float64)


def _by_operator(operators: Sequence[LinearOperator]) -> list[tuple[LinearOperator, list[int]]]:
    """Observation indices grouped by operator object, in order of first use."""
    groups: dict[int, tuple[LinearOperator, list[int]]] = {}
    for i, op in enumerate(operators):
        groups.setdefault(id(op), (op, []))[1].append(i)
    return list(groups.values())


@dataclass(frozen=True)
class GaussianFit:
    """N(``mean``, ``cov``) on flattened signals of ``shape``, fitted by EM to observations.

    ``log_likelihood[k]`` is the mean marginal log-likelihood (1/N) Σ_i log N(y_i; A_i μ_k, K_i)
    of the fit before update k (non-decreasing, as for any EM); ``posterior_means`` (N, d) are
    E[x | y_i] under the returned fit.
    """

    mean: Tensor  # (d,)
    cov: Tensor  # (d, d)
    shape: tuple[int, ...]
    log_likelihood: tuple[float, ...]
    posterior_means: Tensor

    def denoiser(self, schedule: VPSchedule) -> GaussianMixtureDenoiser:
        """The exact denoiser of this Gaussian (a one-component mixture)."""
        return GaussianMixtureDenoiser(schedule, torch.ones(1), self.mean[None], self.cov[None])

    def normalised(self, norm: Normalisation) -> GaussianFit:
        """The same Gaussian in the prior's units x_n = (x − offset) / scale (exact: affine map)."""
        return replace(
            self,
            mean=(self.mean - norm.offset) / norm.scale,
            cov=self.cov / norm.scale**2,
            posterior_means=(self.posterior_means - norm.offset) / norm.scale,
        )


def ppca(cov: Tensor, rank: int) -> Tensor:
    """The covariance of rank ``rank`` plus isotropic D closest in likelihood to the scatter matrix
    ``cov``: U_r (L_r − D) U_rᵀ + D I with D the mean of the other eigenvalues (Tipping & Bishop
    1999, Eq. 7-8), the M-step of EM within that family (the paper's ``ppca``)."""
    vals, vecs = torch.linalg.eigh(cov)
    d = vals.numel()
    noise = vals[: d - rank].clamp_min(0).mean() if rank < d else vals.new_zeros(())
    top, u = vals[d - rank :], vecs[:, d - rank :]
    return (u * (top - noise).clamp_min(0)) @ u.T + noise * torch.eye(d, dtype=cov.dtype)


def gaussian_em_step(
    mean: Tensor,
    cov: Tensor,
    y: Tensor,
    operators: Sequence[LinearOperator],
    shape: tuple[int, ...],
    rank: int | None = None,
) -> tuple[Tensor, Tensor, Tensor, float]:
    """One closed-form EM update (module docstring) of N(``mean``, ``cov``) from observations ``y``
    (N, *obs_shape) under ``operators`` (one per observation, noise σ_i = ``noise_std``);
    ``rank``: Σ' restricted to rank-plus-isotropic (:func:`ppca`), else full.

    Returns μ', Σ', the posterior means m_i (N, d) under the *current* fit and the mean marginal
    log-likelihood of the current fit. Float64 throughout.
    """
    n, d = y.shape[0], mean.numel()
    if len(operators) != n:
        raise ConfigError(
            f"fwd em: {n} observations but {len(operators)} operators (fix: one per observation)"
        )
    mean, cov = mean.to(torch.float64).reshape(d), cov.to(torch.float64)
    flat_y = y.reshape(n, -1).to(torch.float64)
    means = torch.empty(n, d, dtype=torch.float64)
    cov_sum = torch.zeros(d, d, dtype=torch.float64)
    loglik = 0.0
    for op, index in _by_operator(operators):
        noise = float(op.noise_std)
        if not noise > 0:
            raise ConfigError(
                f"fwd em: operator noise_std {noise} (fix: closed-form Gaussian EM needs noise_std > 0)"
            )
        a = dense_matrix(op, shape)  # (m, d)
        b = a @ cov  # A Σ
        k = b @ a.T + noise**2 * torch.eye(a.shape[0], dtype=torch.float64)
        chol = torch.linalg.cholesky(0.5 * (k + k.T))
        resid = flat_y[index] - mean @ a.T  # (n_p, m)
        white = torch.cholesky_solve(resid.T, chol)  # K⁻¹ r, (m, n_p)
        means[index] = mean + (b.T @ white).T
        gain = torch.cholesky_solve(b, chol)  # K⁻¹ A Σ
        cov_sum += len(index) * (cov - b.T @ gain)
        half_logdet = torch.log(torch.diagonal(chol)).sum()
        quad = (resid.T * white).sum(0)
        loglik += float((-0.5 * quad - half_logdet - 0.5 * a.shape[0] * np.log(2 * np.pi)).sum())
    new_mean = means.mean(0)
    centred = means - new_mean
    new_cov = (cov_sum + centred.T @ centred) / n
    new_cov = 0.5 * (new_cov + new_cov.T)
    return new_mean, new_cov if rank is None else ppca(new_cov, rank), means, loglik / n


def fit_gaussian(
    y: Tensor,
    operators: Sequence[LinearOperator],
    shape: tuple[int, ...],
    iterations: int,
    rank: int | None = None,
) -> GaussianFit:
    """Gaussian prior N(μ, Σ) fitted to observations only by ``iterations`` closed-form EM updates
    from μ = 0, Σ = I (Rozet et al. 2024, Sec. 4; module docstring); ``rank``: see
    :func:`gaussian_em_step` (with fewer observations than dimensions a full Σ overfits them)."""
    check_range("fwd em", "gaussian_iterations", iterations, 1)
    if rank is not None:
        check_range("fwd em", "gaussian_rank", rank, 1, int(np.prod(shape)))
    d = int(np.prod(shape))
    mean, cov = torch.zeros(d, dtype=torch.float64), torch.eye(d, dtype=torch.float64)
    history = []
    for _ in range(iterations):
        mean, cov, _, loglik = gaussian_em_step(mean, cov, y, operators, shape, rank)
        history.append(loglik)
    _, _, means, _ = gaussian_em_step(mean, cov, y, operators, shape, rank)
    return GaussianFit(mean, cov, tuple(shape), tuple(history), means)


@dataclass(frozen=True)
class EStep:
    """How the E-step draws posterior samples: a sampling-core method, steps and batching.

    ``samples`` draws per observation; ``group`` observations per sampling case (module
    docstring); ``slice_batch`` rows per network call; ``floor`` clamps x0 predictions from below
    (the prior's units; e.g. non-negative attenuation). Default: DPM-Solver++(2M) with MMPS, one
    CG step (the paper's CIFAR setting uses one CG iteration).
    """

    method: Method = field(
        default_factory=lambda: Method("dpmpp_2m", "mmps", guidance_options={"cg_steps": 1})
    )
    steps: int = 16
    samples: int = 1
    group: int = 16
    slice_batch: int = 64
    grid: GridKind = "logsnr"
    floor: float | None = None

    def sampling(self) -> Sampling:
        """The core's settings: no final data consistency (draws keep the observation noise)."""
        check_range("fwd em", "e_step.samples", self.samples, 1)
        check_range("fwd em", "e_step.group", self.group, 1)
        return Sampling(
            self.samples,
            self.samples,
            self.steps,
            self.grid,
            final_dc=False,
            hallucination_steps=min(5, self.steps),
        )


@dataclass
class Draws:
    """E-step output: ``samples`` (N, samples, *shape) and their cost and data fit."""

    samples: Tensor
    nfe: float  # denoiser evaluations per draw
    relative_residual: float  # mean ||y − A x|| / ||y|| over draws
    wall_time_s: float


def posterior_draws(
    prior: Denoiser,
    y: Tensor,
    operators: Sequence[LinearOperator],
    shape: tuple[int, ...],
    estep: EStep,
    seed: int,
    case_ids: Sequence[str],
    label: str,
    device: str | torch.device = "cpu",
) -> Draws:
    """x ~ p(x | y_i, A_i) for every observation with ``prior`` through :func:`sample_case`.

    The case of observations i..j has identity ``"{label}/{case_ids[i]}..{case_ids[j]}"`` (label:
    the EM round), so draws depend on the observations' identities, the label and ``group``.
    """
    n = y.shape[0]
    if not (len(operators) == len(case_ids) == n):
        raise ConfigError(
            f"fwd em: {n} observations, {len(operators)} operators, {len(case_ids)} case ids "
            "(fix: one operator and one id per observation)"
        )
    sampling = estep.sampling()
    denoiser = SliceDenoiser(prior, estep.slice_batch, estep.floor)
    out = torch.empty(n, estep.samples, *shape, dtype=y.dtype)
    nfe, resid, start = 0.0, 0.0, time.perf_counter()
    for i in range(0, n, estep.group):
        j = min(n, i + estep.group)
        problem = Problem(StackedOperator(operators[i:j]), y[None, i:j].to(device), (j - i, *shape))
        seeds = CaseSeeds.of(seed, f"{label}/{case_ids[i]}..{case_ids[j - 1]}")
        res = sample_case(problem, denoiser, estep.method, sampling, seeds, device)
        out[i:j] = res.samples.transpose(0, 1).to(out.dtype)
        nfe += res.nfe * (j - i)
        resid += float(res.relative_residual.sum())
    groups = -(-n // estep.group)
    return Draws(out, nfe / n, resid / (groups * estep.samples), time.perf_counter() - start)


class Fit(Protocol):
    """M-step: a prior fitted to E-step draws (N, samples, *shape) of round ``k``."""

    def __call__(self, samples: Tensor, k: int) -> Denoiser: ...


@dataclass(frozen=True)
class GaussianMoments:
    """M-step within the Gaussian family: the draws' mean and (biased) covariance (Monte-Carlo EM,
    the paper's ``fit_moments`` with full rank); with exact moments it is the closed-form update."""

    schedule: VPSchedule

    def __call__(self, samples: Tensor, k: int) -> GaussianMixtureDenoiser:
        x = samples.reshape(-1, samples[0, 0].numel()).to(torch.float64)
        mean = x.mean(0)
        cov = (x - mean).T @ (x - mean) / x.shape[0]
        return GaussianMixtureDenoiser(self.schedule, torch.ones(1), mean[None], cov[None])


@dataclass(frozen=True)
class NetworkFit:
    """M-step: denoising score matching of a UNet on the draws with
    :func:`~diffinv.diffusion.training.train_prior`; round k's checkpoint goes to ``out/round{k}``."""

    out: Path
    network: Mapping[str, Any]
    schedule: VPSchedule
    train: TrainConfig
    clip: float | None
    data_info: Mapping[str, Any]
    device: str | torch.device = "cpu"
    progress: bool = False

    def __call__(self, samples: Tensor, k: int) -> NetworkDenoiser:
        from diffinv.diffusion.training import train_prior

        images = samples.reshape(-1, *samples.shape[2:]).to(torch.float32)
        if images.ndim == 3:
            images = images[:, None]  # one channel
        info = {
            **self.data_info,
            "trained_on": "posterior draws of EM round (observations only, no ground truth)",
            "em_round": k,
            "draws": int(images.shape[0]),
        }
        return train_prior(
            images,
            Path(self.out) / f"round{k}",
            dict(self.network),
            self.schedule,
            self.train,
            self.clip,
            info,
            self.device,
            self.progress,
        )


@dataclass
class EMRound:
    """What round k did: E-step cost and data fit, the draws' value range, M-step time."""

    round: int
    e_nfe: float
    e_relative_residual: float
    e_wall_time_s: float
    draws_mean: float
    draws_std: float
    m_wall_time_s: float


def train_em(
    y: Tensor,
    operators: Sequence[LinearOperator],
    shape: tuple[int, ...],
    initial: Denoiser,
    rounds: int,
    estep: EStep,
    fit: Fit,
    seed: int,
    case_ids: Sequence[str],
    device: str | torch.device = "cpu",
    on_round: Callable[[int, Denoiser], None] | None = None,
) -> tuple[Denoiser, list[EMRound]]:
    """Rozet et al. 2024, Algorithm 1: ``rounds`` of E (draws from the current prior's posterior
    for every observation, :func:`posterior_draws`) and M (``fit`` to the draws), from ``initial``.

    ``y`` (N, *obs_shape) are the observations in the prior's units, ``operators[i]`` maps a
    signal of ``shape`` to ``y[i]``. ``on_round(k, prior)`` sees the prior after round k (e.g. to
    evaluate it). Returns the last prior and one :class:`EMRound` per round.
    """
    check_range("fwd em", "rounds", rounds, 1)
    prior, history = initial, []
    for k in range(rounds):
        draws = posterior_draws(prior, y, operators, shape, estep, seed, case_ids, f"em{k}", device)
        start = time.perf_counter()
        prior = fit(draws.samples, k)
        m_wall = time.perf_counter() - start
        history.append(
            EMRound(
                k,
                draws.nfe,
                draws.relative_residual,
                draws.wall_time_s,
                float(draws.samples.mean()),
                float(draws.samples.std()),
                m_wall,
            )
        )
        if on_round is not None:
            on_round(k, prior)
    return prior, history


def rotated_views(n_angles: int, views: int, slices: int, seed: int) -> np.ndarray:
    """(slices, views) view indices: ``views`` equispaced views (as ``ct3d`` tasks select them)
    shifted by an offset drawn per slice in [0, ⌈n_angles / views⌉), the widest gap, so every
    angle is in some slice's set while each slice sees only its own few (the paper's setting)."""
    if not 1 <= views <= n_angles:
        raise ConfigError(f"fwd em: {views} views per slice of a {n_angles}-view scan (fix: 1..{n_angles})")
    base = np.floor(np.arange(views) * n_angles / views).astype(np.int64)
    offsets = np.random.default_rng(seed).integers(0, n_angles - base[-1], size=slices)
    return base[None] + offsets[:, None]


@dataclass
class CTObservations:
    """Sinograms of the views each slice was observed through, and one operator per slice.

    Slices with the same view set share one operator object (so :func:`fit_gaussian` factorises
    it once). ``y`` is in pixel units (:mod:`diffinv.stages.fwd.data`).
    """

    y: Tensor  # (N, views, n_det)
    operators: list[LinearOperator]
    case_ids: tuple[str, ...]
    image_shape: tuple[int, int]

    @classmethod
    def of(cls, obs: SliceObservations, views: np.ndarray) -> CTObservations:
        """The views ``views[i]`` of slice i of ``obs``."""
        views = np.asarray(views)
        if views.ndim != 2 or views.shape[0] != len(obs.case_ids):
            raise InputError(
                "views",
                f"shape {views.shape} for {len(obs.case_ids)} slices",
                "pass (slices, views_per_slice)",
            )
        pool: dict[tuple[int, ...], LinearOperator] = {}
        ops = [pool.setdefault(tuple(v), operator_for(obs, v)) for v in views.tolist()]
        y = torch.from_numpy(np.take_along_axis(obs.sinograms, views[:, :, None], 1))
        return cls(y, ops, obs.case_ids, obs.image_shape)

    def normalised(self, norm: Normalisation) -> CTObservations:
        """y_n = (y − offset · A𝟙) / scale and operators with noise σ / scale (the prior's units)."""
        ones = torch.ones((1, *self.image_shape), dtype=torch.float32)
        y = self.y.clone()
        scaled: dict[int, LinearOperator] = {}
        for op, index in _by_operator(self.operators):
            y[index] = (self.y[index] - norm.offset * op.A(ones)) / norm.scale
            new = copy.copy(op)
            new.noise_std = float(op.noise_std) / norm.scale
            scaled[id(op)] = new
        return CTObservations(y, [scaled[id(op)] for op in self.operators], self.case_ids, self.image_shape)
