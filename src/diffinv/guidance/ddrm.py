"""Denoising diffusion restoration models (DDRM) for operators with a known SVD.

DDRM's update is per spectral coordinate with its own noise level, so it is a kernel
rather than a denoiser: :class:`DDRMSolver` (solver ``ddrm``) carries it out and must be
paired with guidance ``ddrm``. With any other solver the ``ddrm`` guidance acts as
spectral data consistency on x̂0 (DDRM's mean for coordinates whose diffusion noise
exceeds the measurement noise).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffinv.diffusion.denoisers import Denoiser
from diffinv.diffusion.schedule import VPSchedule
from diffinv.errors import ConfigError
from diffinv.guidance.base import Guidance, split_guidance
from diffinv.operators.base import LinearOperator
from diffinv.operators.svd import as_svd
from diffinv.solvers.base import PerSampleNoise, Solver, State, denoise


class DDRM(Guidance):
    """DDRM data term: x̂0 ← V[(1 − η_b) x̄0 + η_b ȳ] on observed directions (Kawar et al. 2022, Eq. 8).

    Needs an SVD (:mod:`diffinv.operators.svd`: masks, single-coil Fourier subsampling,
    block averaging, dense matrices). Pair with solver ``ddrm`` (its option ``eta``) for
    the full method (defaults η = 0.85, η_b = 1, 20 steps).
    """

    cite = "Kawar et al. 2022, DDRM Eq. 7-8"

    def __init__(self, operator: LinearOperator, y: Tensor, eta_b: float = 1.0) -> None:
        super().__init__(operator, y)
        if not 0 <= eta_b <= 1:
            raise ConfigError(f"guidance ddrm: eta_b must lie in [0, 1], got {eta_b}")
        self.svd = as_svd(operator)
        self.eta_b = float(eta_b)
        self.s = self.svd.singular_values.to(y.device)
        self.y_bar = self.svd.spectral_y(y)

    def conditional(self, D: Denoiser, x: Tensor, t: Tensor) -> Tensor:
        c0 = self.svd.V_T(D(x, t))
        mixed = (1 - self.eta_b) * c0 + self.eta_b * self.y_bar.to(c0.dtype)
        return self.svd.V(torch.where(self.s > 0, mixed, c0))

    def transition(
        self, x: Tensor, x0: Tensor, coeffs: tuple[float, float, float, float], z: Tensor, eta: float
    ) -> Tensor:
        """One DDRM step in VP form: x̄ = Vᵀx/α_s, σ̄ = σ/α, three cases per coordinate (Eq. 7–8)."""
        a_s, sig_s, a_t, sig_t = coeffs
        sb_next = sig_t / a_t
        x0b, zb = self.svd.V_T(x0), self.svd.V_T(z)
        s = self.s.to(x.dtype)
        ybar = self.y_bar.to(x.dtype)
        sy, eta_b = self.svd.noise_std, self.eta_b
        det = math.sqrt(1 - eta**2) * sb_next
        unobserved = self.svd.V_T(unobserved_step(x, x0, coeffs, z, eta)) / a_t
        level = torch.where(
            s > 0, sy / torch.where(s > 0, s, torch.ones_like(s)), torch.full_like(s, math.inf)
        )
        below = (
            x0b
            + det * (ybar - x0b) / torch.where(level > 0, level, torch.ones_like(level))
            + eta * sb_next * zb
        )
        above = (
            (1 - eta_b) * x0b
            + eta_b * ybar
            + (sb_next**2 - (eta_b * level.clamp(max=sb_next)) ** 2).clamp_min(0).sqrt() * zb
        )
        out = torch.where(s > 0, torch.where(sb_next < level, below, above), unobserved)
        return a_t * self.svd.V(out)


def unobserved_step(
    x: Tensor, x0: Tensor, coeffs: tuple[float, float, float, float], z: Tensor, eta: float
) -> Tensor:
    """DDRM's update of unobserved coordinates, x_t = α_t[x̄0 + √(1−η²) σ̄_t (x̄ − x̄0)/σ̄_s + η σ̄_t z] (Eq. 7)."""
    a_s, sig_s, a_t, sig_t = coeffs
    sb, sb_next = sig_s / a_s, sig_t / a_t
    return a_t * (x0 + math.sqrt(1 - eta**2) * sb_next * (x / a_s - x0) / sb + eta * sb_next * z)


class DDRMSolver(Solver):
    """DDRM's spectral kernel (solver ``ddrm``).

    The full method with guidance ``ddrm``, else its unconditional step. The guidance is
    found through wrappers (e.g. a search's evaluation counter), which are kept around the prior.
    """

    cite = "Kawar et al. 2022, DDRM Eq. 7-8"
    stochastic = True

    def __init__(self, schedule: VPSchedule, eta: float = 0.85) -> None:
        super().__init__(schedule)
        if not 0 <= eta <= 1:
            raise ConfigError(f"solver ddrm: eta must lie in [0, 1], got {eta}")
        self.eta = float(eta)

    def step(
        self, D: Denoiser, x: Tensor, state: State, s: Tensor, t: Tensor, noise: PerSampleNoise | None = None
    ) -> tuple[Tensor, State]:
        a_s, sig_s, a_t, sig_t, _ = self.coefficients(s, t)
        coeffs, z = (a_s, sig_s, a_t, sig_t), noise.randn(x.shape[1:], x.dtype)
        guidance, prior = split_guidance(D)
        if not isinstance(guidance, DDRM):
            x0 = denoise(D, x, s)
            return unobserved_step(x, x0, coeffs, z, self.eta), {"x0": x0}
        x0 = denoise(prior, x, s)
        return guidance.transition(x, x0, coeffs, z, self.eta), {"x0": x0}
