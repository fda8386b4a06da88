"""DiffPIR's noise step: re-noise the (conditional) data prediction with a fresh-noise fraction ζ."""

from __future__ import annotations

import math

from torch import Tensor

from diffinv.diffusion.denoisers import Denoiser
from diffinv.diffusion.schedule import VPSchedule
from diffinv.errors import ConfigError
from diffinv.solvers.base import PerSampleNoise, Solver, State, denoise


class DiffPIRStep(Solver):
    """x_t = α_t x̂0 + σ_t (√(1 − ζ) ε̂ + √ζ z), ε̂ = (x_s − α_s x̂0)/σ_s (ζ = 0: DDIM).

    Zhu et al. 2023 (CVPR), DiffPIR Alg. 1 lines 6–8; repo defaults ζ = 0.1 at 100 NFE.
    """

    cite = "Zhu et al. 2023, DiffPIR Alg. 1"

    def __init__(self, schedule: VPSchedule, zeta: float = 0.1) -> None:
        super().__init__(schedule)
        if not 0.0 <= zeta <= 1.0:
            raise ConfigError(f"solver diffpir: zeta must lie in [0, 1], got {zeta}")
        self.zeta = float(zeta)
        self.stochastic = self.zeta > 0

    def step(
        self, D: Denoiser, x: Tensor, state: State, s: Tensor, t: Tensor, noise: PerSampleNoise | None = None
    ) -> tuple[Tensor, State]:
        a_s, sig_s, a_t, sig_t, _ = self.coefficients(s, t)
        x0 = denoise(D, x, s)
        eps = (x - a_s * x0) / sig_s
        x_next = a_t * x0 + sig_t * math.sqrt(1 - self.zeta) * eps
        if self.zeta > 0:
            x_next = x_next + sig_t * math.sqrt(self.zeta) * noise.randn(x.shape[1:], x.dtype)
        return x_next, {"x0": x0}
