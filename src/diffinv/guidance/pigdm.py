"""Pseudoinverse-guided diffusion models (ΠGDM), for linear operators with Gaussian noise."""

from __future__ import annotations

from torch import Tensor

from diffinv.diffusion.denoisers import Denoiser
from diffinv.errors import check_range
from diffinv.guidance.base import Guidance, score_guided
from diffinv.operators.base import LinearOperator, conjugate_gradient, inner


class PiGDM(Guidance):
    """ΠGDM: ∇ log p(y|x_t) ≈ [(y − A x̂0)ᵀ (r_t² AAᵀ + σ_y² I)⁻¹ A ∂x̂0/∂x_t]ᵀ, with r_t² = σ_t².

    Song, Vahdat, Mardani & Kautz 2023 (ICLR), Eq. 7–8: p(x0 | x_t) ≈ N(x̂0, r_t² I) with
    r_t² = σ̃²/(1 + σ̃²) = σ_t² in VP form, which is exact for an N(μ, I) prior. The
    (r_t² AAᵀ + σ_y² I) system is solved by ``cg_steps`` of CG in measurement space and
    held constant in the vector-Jacobian product; ``weight`` scales the correction.

    ``alpha_power`` k multiplies the correction by α_t^k. k = 0 (default) is exact for a
    Gaussian prior (tested); on the trained demo MRI prior (ε-prediction, 20 DDIM steps, 4x)
    it diverged to 6.7 dB PSNR at any weight in [0.1, 1], while k = 1 gave 22.8 dB and k = 2
    20.8 dB (3 slices, measured). Noiseless ΠGDM codes that add α_s α_t g to x_s (e.g.
    azula) damp comparably at high noise. Use k = 1 with ε-networks at few steps.
    """

    cite = "Song et al. 2023, PiGDM Eq. 7-8"
    needs_grad = True

    def __init__(
        self,
        operator: LinearOperator,
        y: Tensor,
        weight: float = 1.0,
        cg_steps: int = 10,
        alpha_power: float = 0.0,
    ) -> None:
        super().__init__(operator, y)
        check_range("pigdm", "weight", weight, 0.0)
        check_range("pigdm", "cg_steps", cg_steps, 1)
        check_range("pigdm", "alpha_power", alpha_power, 0.0)
        self.weight = float(weight)
        self.cg_steps = int(cg_steps)
        self.alpha_power = float(alpha_power)

    def conditional(self, D: Denoiser, x: Tensor, t: Tensor) -> Tensor:
        return score_guided(D, x, t, lambda x0, tt: self._loglik(D, x0, tt), self.weight, self.alpha_power)

    def _loglik(self, D: Denoiser, x0: Tensor, t: Tensor) -> Tensor:
        op, noise_var = self.operator, self.operator.noise_std**2
        r2 = (D.schedule.sigma(t) ** 2).reshape((-1,) + (1,) * (self.y.ndim - 1))
        resid = (self.y - op.A(x0)).detach()
        r2 = r2.to(device=resid.device, dtype=resid.real.dtype)
        v = conjugate_gradient(
            lambda u: r2 * op.A(op.A_adjoint(u)) + noise_var * u, resid, resid.clone(), self.cg_steps
        )
        return inner(v, op.A(x0))
