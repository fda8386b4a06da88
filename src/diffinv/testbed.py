"""Exact-posterior test bed: Gaussian-mixture priors under linear-Gaussian observations.

The prior has 25 modes with means (−8i, −8j), i, j ∈ {−2, …, 2}, tiled to dimension d,
identity covariances and weights ∝ N(0, 1)² (Cardoso et al. 2024, MCGdiff §5 / App. D.1).
Observing y = A x + σ_y n with A = U diag(s) Vᵀ (random orthogonal U, V; s ~ U(0, 1))
gives a posterior that is again a Gaussian mixture, in closed form. Reward tilts
p(x) exp(λ aᵀx) of a mixture are mixtures too. Distances are sliced Wasserstein-2 with a
fixed set of projections, always to be read beside the exact-vs-exact noise floor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from diffinv.diffusion.denoisers import GaussianMixtureDenoiser
from diffinv.diffusion.schedule import VPSchedule
from diffinv.errors import ConfigError
from diffinv.operators.svd import MatrixSVD

#: Guidance plug-ins whose update is a solver kernel of their own: run them with this solver.
OWN_SOLVER = {"ddrm": "ddrm", "diffpir": "diffpir"}

#: The smallest budget of every built-in search, for runs that check a plug-in works everywhere.
SMALL_SEARCH_OPTIONS: dict[str, dict[str, int]] = {
    "smc": {"particles": 2},
    "mcgdiff": {"particles": 2},
    "svdd": {"candidates": 2},
    "dts": {"rollouts": 2},
    "dts_star": {"rollouts": 2},
    "best_of_n": {"n": 2},
    "zero_order": {"n": 2},
    "path_search": {"n": 2},
    "rbf": {"budget": 16},
    "minority": {},
}


def grid_prior(dim: int, schedule: VPSchedule, seed: int = 0) -> GaussianMixtureDenoiser:
    """The 25-mode prior of MCGdiff §5 in even dimension ``dim`` (exact denoiser)."""
    if dim < 2 or dim % 2:
        raise ConfigError(f"test bed: dimension must be even and >= 2, got {dim}")
    g = torch.Generator().manual_seed(seed)
    ij = torch.tensor([(i, j) for i in range(-2, 3) for j in range(-2, 3)], dtype=torch.float64)
    means = (-8.0 * ij).repeat(1, dim // 2)
    weights = torch.randn(25, generator=g, dtype=torch.float64) ** 2
    return GaussianMixtureDenoiser(schedule, weights, means)


def random_matrix(obs_dim: int, dim: int, generator: torch.Generator) -> Tensor:
    """A (obs_dim, dim) matrix U diag(s) Vᵀ with Haar-like orthogonal U, V and s ~ U(0, 1)."""
    u, _ = torch.linalg.qr(torch.randn(obs_dim, obs_dim, generator=generator, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    s = torch.rand(min(obs_dim, dim), generator=generator, dtype=torch.float64)
    return u[:, : s.numel()] @ torch.diag(s) @ v[:, : s.numel()].T


def gmm_posterior(
    prior: GaussianMixtureDenoiser, matrix: Tensor, noise_std: float, y: Tensor
) -> GaussianMixtureDenoiser:
    """Closed-form posterior of a mixture prior under y = A x + σ_y n (a mixture; Bishop 2006, Eq. 2.116).

    Component k: Σ'_k = (Σ_k⁻¹ + AᵀA/σ²)⁻¹, μ'_k = Σ'_k(Σ_k⁻¹μ_k + Aᵀy/σ²),
    log w'_k = log w_k + log N(y; Aμ_k, AΣ_kAᵀ + σ²I).
    """
    covs = prior.covs
    prec = torch.linalg.inv(covs) + (matrix.T @ matrix / noise_std**2)[None]
    post_cov = torch.linalg.inv(prec)
    post_cov = 0.5 * (post_cov + post_cov.transpose(-1, -2))
    rhs = torch.linalg.solve(covs, prior.means[..., None])[..., 0] + (matrix.T @ y / noise_std**2)[None]
    post_means = torch.einsum("kij,kj->ki", post_cov, rhs)
    marg_cov = matrix[None] @ covs @ matrix.T[None] + noise_std**2 * torch.eye(
        matrix.shape[0], dtype=torch.float64
    )
    resid = y[None] - prior.means @ matrix.T
    loglik = torch.distributions.MultivariateNormal(torch.zeros_like(y), marg_cov).log_prob(resid)
    return GaussianMixtureDenoiser(
        prior.schedule, torch.softmax(prior.log_weights + loglik, 0), post_means, post_cov
    )


def tilt(mixture: GaussianMixtureDenoiser, direction: Tensor, lam: float) -> GaussianMixtureDenoiser:
    """The mixture ∝ p(x) exp(λ aᵀx): μ'_k = μ_k + λΣ_k a, log w'_k = log w_k + λaᵀμ_k + λ² aᵀΣ_k a / 2."""
    covs = mixture.covs
    sa = covs @ direction
    means = mixture.means + lam * sa
    logw = mixture.log_weights + lam * mixture.means @ direction + 0.5 * lam**2 * sa @ direction
    return GaussianMixtureDenoiser(mixture.schedule, torch.softmax(logw, 0), means, covs)


@dataclass
class LinearGaussianProblem:
    """One instance of the test bed: prior, observation and its exact posterior."""

    prior: GaussianMixtureDenoiser
    operator: MatrixSVD
    y: Tensor  # (1, obs_dim)
    truth: Tensor  # (dim,) the draw that produced y
    posterior: GaussianMixtureDenoiser

    @property
    def noise_std(self) -> float:
        """σ_y."""
        return self.operator.noise_std


def make_problem(
    dim: int, obs_dim: int, seed: int = 0, noise_std: float | None = None, schedule: VPSchedule | None = None
) -> LinearGaussianProblem:
    """A random instance; ``noise_std=None`` draws σ_y = U(0, 1)·max s as MCGdiff's benchmark does."""
    schedule = schedule or VPSchedule()
    g = torch.Generator().manual_seed(seed)
    prior = grid_prior(dim, schedule, seed)
    matrix = random_matrix(obs_dim, dim, g)
    if noise_std is None:
        noise_std = float(torch.rand((), generator=g, dtype=torch.float64)) * float(
            torch.linalg.matrix_norm(matrix, 2)
        )
    truth = prior.sample(1, g)[0]
    y = matrix @ truth + noise_std * torch.randn(obs_dim, generator=g, dtype=torch.float64)
    return LinearGaussianProblem(
        prior, MatrixSVD(matrix, noise_std), y[None], truth, gmm_posterior(prior, matrix, noise_std, y)
    )


def sliced_wasserstein(a: Tensor, b: Tensor, projections: int = 256, seed: int = 0) -> float:
    """Sliced Wasserstein-2 distance between two point clouds (n, d) and (m, d) (Bonneel et al. 2015).

    Uses ``projections`` fixed random directions (from ``seed``); unequal sample sizes are
    compared through their empirical quantile functions on a common grid.
    """
    a, b = a.reshape(a.shape[0], -1).to(torch.float64), b.reshape(b.shape[0], -1).to(torch.float64)
    dirs = torch.randn(
        a.shape[1], projections, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa, pb = (a @ dirs).sort(0).values, (b @ dirs).sort(0).values
    if pa.shape[0] != pb.shape[0]:
        q = (torch.arange(max(pa.shape[0], pb.shape[0]), dtype=torch.float64) + 0.5) / max(
            pa.shape[0], pb.shape[0]
        )
        pa, pb = _quantiles(pa, q), _quantiles(pb, q)
    return math.sqrt(float(((pa - pb) ** 2).mean()))


def _quantiles(sorted_values: Tensor, q: Tensor) -> Tensor:
    n = sorted_values.shape[0]
    pos = (q * n - 0.5).clamp(0, n - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp_max(n - 1)
    frac = (pos - lo)[:, None]
    return sorted_values[lo] * (1 - frac) + sorted_values[hi] * frac


def noise_floor(
    target: GaussianMixtureDenoiser, n: int, projections: int = 256, seed: int = 0, repeats: int = 3
) -> float:
    """Mean SW2 between independent exact sample sets of size ``n`` (what a perfect sampler scores)."""
    g = torch.Generator().manual_seed(10_000 + seed)
    return (
        sum(
            sliced_wasserstein(target.sample(n, g), target.sample(n, g), projections, seed)
            for _ in range(repeats)
        )
        / repeats
    )


def distance_to(
    target: GaussianMixtureDenoiser, samples: Tensor, projections: int = 256, seed: int = 0
) -> float:
    """SW2 between ``samples`` and as many fresh exact samples of ``target``."""
    exact = target.sample(samples.shape[0], torch.Generator().manual_seed(20_000 + seed))
    return sliced_wasserstein(samples, exact, projections, seed)
