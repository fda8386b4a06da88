"""MR Sampler: DPM-Solver++ for mean-reverting diffusion x_t = α_t x0 + (1 − α_t) μ + σ_t ε."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from diffinv.diffusion.denoisers import Denoiser
from diffinv.diffusion.schedule import VPSchedule
from diffinv.errors import ConfigError
from diffinv.solvers.base import PerSampleNoise, State, denoise, history, push_history
from diffinv.solvers.dpmpp import DPMSolverPP, multistep_combination, multistep_update


class MRS(DPMSolverPP):
    """MR Sampler: DPM-Solver++ (order 1–3) on x − μ, which follows a VP-type process for x0 − μ.

    Li et al. 2025 (ICLR), "MRS: a fast sampler for mean reverting diffusion", data
    prediction form: x_t = (σ_t/σ_s) x_s + α_t (1 − e^{−h}) D + μ (1 − σ_t/σ_s + (σ_t/σ_s) α_s − α_t)
    at order 1. ``mu`` (the low-quality image, or a scalar) broadcasts against the
    particles; ``D`` must be the mean-reverting process's data prediction E[x0 | x_t].
    μ = 0 is DPM-Solver++ of the same order.
    """

    cite = "Li et al. 2025, MRS (data prediction, Eq. 14)"

    def __init__(self, schedule: VPSchedule, mu: float | Sequence | Tensor = 0.0, order: int = 2) -> None:
        super().__init__(schedule)
        if order not in (1, 2, 3):
            raise ConfigError(f"mrs order: must be 1, 2 or 3, got {order!r}")
        self.order = int(order)
        self.mu = torch.as_tensor(mu, dtype=torch.float64)

    def step(
        self, D: Denoiser, x: Tensor, state: State, s: Tensor, t: Tensor, noise: PerSampleNoise | None = None
    ) -> tuple[Tensor, State]:
        _, sig_s, a_t, sig_t, h = self.coefficients(s, t)
        mu = self.mu.to(x.dtype)
        x0 = denoise(D, x, s)
        new = push_history(state, {"x0": x0, "lam": (self.lam(s),)}, self.order)
        d0, d1, d2 = multistep_combination(history(new, "x0"), new["lam"], h)
        return mu + multistep_update(x - mu, sig_t / sig_s, a_t, h, d0 - mu, d1, d2), new
