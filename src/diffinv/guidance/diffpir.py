"""DiffPIR: a proximal data step on the denoised estimate (plug-and-play diffusion)."""

from __future__ import annotations

from torch import Tensor

from diffinv.diffusion.denoisers import Denoiser
from diffinv.guidance.base import Guidance
from diffinv.operators.base import LinearOperator


class DiffPIR(Guidance):
    """DiffPIR: x̂0 = argmin ‖y − A x‖² + ρ_t ‖x − D(x_t)‖², ρ_t = λ σ_y² / σ̄_t², σ̄_t = σ_t/α_t.

    Zhu et al. 2023 (CVPR), Alg. 1 line 5 and Eq. 13, solved by ``cg_steps`` of CG on
    (AᵀA + ρ_t I) x = Aᵀy + ρ_t D from D. With σ_y = 0 the step is the projection onto
    {A x = y}. DiffPIR's noise step with ζ (Alg. 1 line 7) is the ``diffpir`` solver;
    any other solver may follow this conditional denoiser too.
    """

    cite = "Zhu et al. 2023, DiffPIR Alg. 1"

    def __init__(self, operator: LinearOperator, y: Tensor, lam: float = 1.0, cg_steps: int = 10) -> None:
        super().__init__(operator, y)
        self.lam = float(lam)
        self.cg_steps = int(cg_steps)

    def conditional(self, D: Denoiser, x: Tensor, t: Tensor) -> Tensor:
        x0 = D(x, t)
        sch = D.schedule
        snr_inv = float((sch.sigma(t[0]) / sch.alpha(t[0])) ** 2)
        rho = self.lam * self.operator.noise_std**2 / snr_inv
        return self.operator.solve_normal(self.y, x0, reg=rho, prior_mean=x0, steps=self.cg_steps)
