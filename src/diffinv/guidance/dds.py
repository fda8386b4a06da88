"""Decomposed diffusion sampling: conjugate-gradient data consistency on x0_hat."""

from __future__ import annotations

from torch import Tensor

from diffinv.diffusion.denoisers import Denoiser
from diffinv.errors import check_range
from diffinv.guidance.base import Guidance
from diffinv.operators.base import LinearOperator


class DDS(Guidance):
    """DDS: x0_hat ← ``cg_steps`` of CG on AᴴA x = Aᴴy started at x0_hat (gradient-free).

    Chung, Lee & Ye 2024 (ICLR), Eq. 14: the Krylov subspace around the denoised estimate
    keeps the update on the data manifold's tangent space. ``reg`` > 0 solves the
    Tikhonov form (AᴴA + reg·I) x = Aᴴy + reg·x0_hat instead (DiffPIR-like proximal step).
    ``clip`` re-applies the value constraint after the update.
    """

    cite = "Chung, Lee & Ye 2024, DDS Eq. 14"

    def __init__(
        self,
        operator: LinearOperator,
        y: Tensor,
        cg_steps: int = 5,
        reg: float = 0.0,
        clip: float | None = None,
    ) -> None:
        super().__init__(operator, y)
        check_range("dds", "cg_steps", cg_steps, 1)
        check_range("dds", "reg", reg, 0.0)
        self.cg_steps = int(cg_steps)
        self.reg = float(reg)
        self.clip = clip

    def conditional(self, D: Denoiser, x: Tensor, t: Tensor) -> Tensor:
        x0 = D(x, t)
        out = self.operator.solve_normal(self.y, x0, reg=self.reg, prior_mean=x0, steps=self.cg_steps)
        return out.clamp(-self.clip, self.clip) if self.clip is not None else out
