"""DDIM and DDPM (ancestral) steps in data-prediction form."""

from __future__ import annotations

import math

from torch import Tensor

from diffinv.diffusion.denoisers import Denoiser
from diffinv.diffusion.schedule import VPSchedule
from diffinv.errors import check_range
from diffinv.solvers.base import PerSampleNoise, Solver, State, denoise


class DDIM(Solver):
    """DDIM with stochasticity η (η=0: deterministic, first-order DPM-Solver++)."""

    cite = "Song, Meng & Ermon 2021, DDIM Eq. 12 and 16"

    def __init__(self, schedule: VPSchedule, eta: float = 0.0) -> None:
        super().__init__(schedule)
        check_range("ddim", "eta", eta, 0.0, 1.0)
        self.eta = float(eta)
        self.stochastic = self.eta > 0

    def step(
        self, D: Denoiser, x: Tensor, state: State, s: Tensor, t: Tensor, noise: PerSampleNoise | None = None
    ) -> tuple[Tensor, State]:
        a_s, sig_s, a_t, sig_t, _ = self.coefficients(s, t)
        x0 = denoise(D, x, s)
        eps = (x - a_s * x0) / sig_s
        # DDIM Eq. 16: c² = η² (σ_t²/σ_s²)(1 − α_s²/α_t²)
        c = self.eta * sig_t / sig_s * math.sqrt(max(0.0, 1.0 - (a_s / a_t) ** 2))
        x_next = a_t * x0 + math.sqrt(max(0.0, sig_t**2 - c**2)) * eps
        if c > 0:
            x_next = x_next + c * noise.randn(x.shape[1:], x.dtype)
        return x_next, {"x0": x0}


class DDPM(DDIM):
    """DDPM ancestral sampling (DDIM with η = 1)."""

    cite = "Ho, Jain & Abbeel 2020, DDPM Alg. 2"

    def __init__(self, schedule: VPSchedule) -> None:
        super().__init__(schedule, eta=1.0)
