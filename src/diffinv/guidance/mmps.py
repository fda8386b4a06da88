"""Moment matching posterior sampling (MMPS): likelihood covariance from the Tweedie covariance."""

from __future__ import annotations

import torch
from torch import Tensor

from diffinv.diffusion.denoisers import Denoiser
from diffinv.errors import check_range
from diffinv.guidance.base import Guidance
from diffinv.operators.base import LinearOperator, conjugate_gradient


class MMPS(Guidance):
    """MMPS: x̂0 + V Aᵀ (Σ_y + A V Aᵀ)⁻¹ (y − A x̂0), V = (σ_t²/α_t) ∂x̂0/∂x_t, solved by CG with VJPs.

    Rozet, Andry, Lanusse & Louppe 2024 (NeurIPS), Sec. 3.2, Eq. 12-15 (azula's ``MMPS``):
    p(y | x_t) ≈ N(y; A E[x|x_t], Σ_y + A V[x|x_t] Aᵀ) with Tweedie's covariance. For
    x_t = α_t x + σ_t ε, Tweedie gives E[x|x_t] = (x_t + σ_t² ∇log p_t)/α_t and
    V[x|x_t] = (σ_t²/α_t²)(I + σ_t² ∇²log p_t) = (σ_t²/α_t) ∂E[x|x_t]/∂x_t. The returned x0
    estimate is the Gaussian conditional mean E[x | x_t, y] under that moment-matched
    p(x | x_t), which is exact for a Gaussian prior (tested). The measurement-space system is
    solved by ``cg_steps`` of conjugate gradient from 0, each a vector-Jacobian product
    Jᵀu of the denoiser (J = ∂x̂0/∂x_t is symmetric for an exact denoiser; for a network,
    Jᵀ is used as in azula). Σ_y = σ² I with σ = ``noise_std`` (default: the operator's),
    floored at ``min_noise_std`` so that a noiseless operator keeps the system definite at
    small t, where V → 0. ``weight`` scales the correction (1: the method as published).
    """

    cite = "Rozet, Andry, Lanusse & Louppe 2024, MMPS Eq. 12-15"
    needs_grad = True

    def __init__(
        self,
        operator: LinearOperator,
        y: Tensor,
        cg_steps: int = 5,
        noise_std: float | None = None,
        min_noise_std: float = 1e-3,
        weight: float = 1.0,
    ) -> None:
        super().__init__(operator, y)
        check_range("mmps", "cg_steps", cg_steps, 1)
        if noise_std is not None:
            check_range("mmps", "noise_std", noise_std, 0.0)
        check_range("mmps", "min_noise_std", min_noise_std, 0.0)
        check_range("mmps", "weight", weight, 0.0)
        self.cg_steps = int(cg_steps)
        self.noise_std = None if noise_std is None else float(noise_std)
        self.min_noise_std = float(min_noise_std)
        self.weight = float(weight)

    def noise_var(self) -> float:
        """σ² of Σ_y = σ² I: the override or the operator's std, at least ``min_noise_std``."""
        std = self.operator.noise_std if self.noise_std is None else self.noise_std
        return max(float(std), self.min_noise_std) ** 2

    def conditional(self, D: Denoiser, x: Tensor, t: Tensor) -> Tensor:
        op, sch = self.operator, D.schedule
        t = torch.as_tensor(t, dtype=torch.float64, device=x.device).expand(x.shape[0])
        shape = (-1,) + (1,) * (x.ndim - 1)
        scale = (sch.sigma(t) ** 2 / sch.alpha(t)).to(device=x.device, dtype=x.dtype).reshape(shape)
        noise_var = self.noise_var()
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            x0 = D(xg, t)

            def cov_x(u: Tensor) -> Tensor:
                """V u = (σ_t²/α_t) Jᵀ u, by one vector-Jacobian product (per sample)."""
                (g,) = torch.autograd.grad(x0, xg, u, retain_graph=True)
                return scale * g

            def cov_y(v: Tensor) -> Tensor:
                """(Σ_y + A V Aᵀ) v."""
                return noise_var * v + op.A(cov_x(op.A_adjoint(v)))

            resid = (self.y - op.A(x0)).detach()
            v = conjugate_gradient(cov_y, resid, torch.zeros_like(resid), self.cg_steps)
            correction = cov_x(op.A_adjoint(v))
        return x0.detach() + self.weight * correction.detach()
