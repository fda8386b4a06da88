"""DPM-Solver++ in data prediction: multistep 2M / 3M, singlestep 2S, dynamic thresholding.

Lu et al. 2022 (arXiv 2211.01095). Every update is the exponential integrator
x_t = (σ_t/σ_s) x_s − α_t (e^{−h} − 1) D̄ with h = λ_t − λ_s (Eq. 9), where D̄ is a
combination of data predictions; the multistep history lives in ``state``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffinv.diffusion.denoisers import Denoiser
from diffinv.diffusion.schedule import VPSchedule
from diffinv.errors import ConfigError
from diffinv.solvers.base import PerSampleNoise, Solver, State, denoise, history, push_history


def exp_update(x: Tensor, sig_ratio: float, a_t: float, h: float, d: Tensor) -> Tensor:
    """The first-order exponential-integrator step (σ_t/σ_s) x − α_t (e^{−h} − 1) d (Eq. 9)."""
    return sig_ratio * x - a_t * math.expm1(-h) * d


def dynamic_threshold(x0: Tensor, ratio: float, max_value: float | None) -> Tensor:
    """Imagen dynamic thresholding (Saharia et al. 2022, §2.3): s = clamp(q_ratio |x0|, 1, max),
    then x0 ← clip(x0, ±s)/s, per particle. ``max_value=1`` is plain clipping to [−1, 1]."""
    flat = x0.reshape(x0.shape[0], -1)
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(
        min=1.0, max=math.inf if max_value is None else max_value
    )
    return (torch.maximum(torch.minimum(flat, s[:, None]), -s[:, None]) / s[:, None]).reshape(x0.shape)


class _DataPrediction(Solver):
    """Shared data-prediction options: dynamic thresholding of D (pixel-space models only)."""

    def __init__(
        self,
        schedule: VPSchedule,
        thresholding: bool = False,
        threshold_ratio: float = 0.995,
        sample_max_value: float | None = None,
    ) -> None:
        super().__init__(schedule)
        if not 0.0 < threshold_ratio <= 1.0:
            raise ConfigError(f"threshold_ratio: must be in (0, 1], got {threshold_ratio}")
        self.thresholding = bool(thresholding)
        self.threshold_ratio = float(threshold_ratio)
        self.sample_max_value = None if sample_max_value is None else float(sample_max_value)

    def predict(self, D: Denoiser, x: Tensor, s: Tensor | float) -> Tensor:
        """D(x, s), dynamically thresholded when enabled."""
        x0 = denoise(D, x, s)
        return dynamic_threshold(x0, self.threshold_ratio, self.sample_max_value) if self.thresholding else x0


def multistep_combination(
    ms: list[Tensor], lams: tuple[float, ...], h: float
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """(D0, D1, D2) of DPM-Solver++ multistep from the newest-first history ``ms`` at ``lams``.

    Order 1: D0 only. Order 2 (Alg. 2): D1 = (D0 − D_{−1})/r0 with r0 = h_{−1}/h.
    Order 3 (the official code's 3M): D1 = D1_0 + r0/(r0+r1)(D1_0 − D1_1), D2 = (D1_0 − D1_1)/(r0+r1).
    """
    if len(ms) == 1:
        return ms[0], None, None
    r0 = (lams[0] - lams[1]) / h
    d1_0 = (ms[0] - ms[1]) / r0
    if len(ms) == 2:
        return ms[0], d1_0, None
    r1 = (lams[1] - lams[2]) / h
    d1_1 = (ms[1] - ms[2]) / r1
    return ms[0], d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1), (d1_0 - d1_1) / (r0 + r1)


class DPMSolverPP(_DataPrediction):
    """DPM-Solver++ multistep of order ``order`` (1–3); the first steps warm up at lower order."""

    cite = "Lu et al. 2022, DPM-Solver++ Alg. 2"
    order: int = 2

    def step(
        self, D: Denoiser, x: Tensor, state: State, s: Tensor, t: Tensor, noise: PerSampleNoise | None = None
    ) -> tuple[Tensor, State]:
        _, sig_s, a_t, sig_t, h = self.coefficients(s, t)
        x0 = self.predict(D, x, s)
        new = push_history(state, {"x0": x0, "lam": (self.lam(s),)}, self.order)
        d0, d1, d2 = multistep_combination(history(new, "x0"), new["lam"], h)
        return multistep_update(x, sig_t / sig_s, a_t, h, d0, d1, d2), new


def multistep_update(
    x: Tensor, sig_ratio: float, a_t: float, h: float, d0: Tensor, d1: Tensor | None, d2: Tensor | None
) -> Tensor:
    """DPM-Solver++ multistep update from :func:`multistep_combination`'s (D0, D1, D2).

    Order 2: D̄ = D0 + D1/2 in Eq. 9 (Alg. 2); order 3 (official code):
    x_t = (σ_t/σ_s) x − α_t φ1 D0 + α_t φ2 D1 − α_t φ3 D2, φ1 = e^{−h} − 1, φ2 = φ1/h + 1, φ3 = φ2/h − ½.
    """
    x_next = exp_update(x, sig_ratio, a_t, h, d0)
    if d1 is None:
        return x_next
    phi1 = math.expm1(-h)
    if d2 is None:
        return x_next - 0.5 * a_t * phi1 * d1
    phi2 = phi1 / h + 1.0
    return x_next + a_t * phi2 * d1 - a_t * (phi2 / h - 0.5) * d2


class DPMSolverPP2M(DPMSolverPP):
    """DPM-Solver++(2M): second-order multistep in data prediction; first step is DDIM."""

    order = 2


class DPMSolverPP3M(DPMSolverPP):
    """DPM-Solver++(3M): third-order multistep as in the official code (observed order 2)."""

    cite = "Lu et al. 2022, DPM-Solver++ official code (multistep order 3)"
    order = 3


class DPMSolverPP2S(_DataPrediction):
    """DPM-Solver++(2S): second-order singlestep through the λ-midpoint (2 NFE per step)."""

    cite = "Lu et al. 2022, DPM-Solver++ Alg. 1 (r = 1/2)"
    nfe_per_step = 2

    def step(
        self, D: Denoiser, x: Tensor, state: State, s: Tensor, t: Tensor, noise: PerSampleNoise | None = None
    ) -> tuple[Tensor, State]:
        _, sig_s, a_t, sig_t, h = self.coefficients(s, t)
        m = self.schedule.t_of_lambda(self.schedule.lam(s) + h / 2)
        _, _, a_m, sig_m, _ = self.coefficients(s, m)
        u = exp_update(x, sig_m / sig_s, a_m, h / 2, self.predict(D, x, s))
        x0 = self.predict(D, u, m)
        return exp_update(x, sig_t / sig_s, a_t, h, x0), {"x0": x0}
