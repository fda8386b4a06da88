"""DPM-Solver++ multistep solvers (Lu et al. 2022, arXiv 2211.01095)."""

from __future__ import annotations

import math

from torch import Tensor

from diffinv.diffusion.denoisers import Denoiser
from diffinv.solvers.base import PerSampleNoise, Solver, State, denoise


class DPMSolverPP2M(Solver):
    """DPM-Solver++(2M): second-order multistep in data prediction; first step is DDIM."""

    cite = "Lu et al. 2022, DPM-Solver++ Alg. 2"

    def step(self, D: Denoiser, x: Tensor, state: State, s: Tensor, t: Tensor, noise: PerSampleNoise | None = None) -> tuple[Tensor, State]:
        _, sig_s, a_t, sig_t, h = self.coefficients(s, t)
        x0 = denoise(D, x, s)
        d = x0
        if "x0" in state:
            r = state["h"] / h
            d = (1 + 1 / (2 * r)) * x0 - state["x0"] / (2 * r)
        x_next = (sig_t / sig_s) * x - a_t * math.expm1(-h) * d
        return x_next, {"x0": x0, "h": h}
