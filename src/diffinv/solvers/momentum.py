"""Momentum on DPM-Solver++: Heavy-Ball (HB) and Generalized Heavy-Ball (GHVB).

Wizadwongsa et al. 2024 (ICLR), "Diffusion Sampling with Momentum for Mitigating Divergence
Artifacts", §4, written in data prediction on the variable x/σ: the velocity v is an
exponential moving average of the solver's slope and replaces D̄ in Eq. 9 of DPM-Solver++.
"""

from __future__ import annotations

from torch import Tensor

from diffinv.diffusion.denoisers import Denoiser
from diffinv.diffusion.schedule import VPSchedule
from diffinv.errors import ConfigError
from diffinv.solvers.base import PerSampleNoise, Solver, State, denoise, history, push_history
from diffinv.solvers.dpmpp import exp_update, multistep_combination


class _Momentum(Solver):
    """Shared options: momentum β ∈ (0, 1] and the multistep order (1 or 2); β = 1 is DPM-Solver++."""

    def __init__(self, schedule: VPSchedule, beta: float = 0.8, order: int = 2) -> None:
        super().__init__(schedule)
        if not 0.0 < beta <= 1.0:
            raise ConfigError(f"{type(self).__name__} beta: must be in (0, 1], got {beta}")
        if order not in (1, 2):
            raise ConfigError(f"{type(self).__name__} order: must be 1 or 2, got {order!r}")
        self.beta = float(beta)
        self.order = int(order)

    def slope(self, state: State, new: State, x0: Tensor, h: float) -> tuple[Tensor, State]:
        """The D̄ used in the step and the momentum state to keep."""
        raise NotImplementedError

    def step(
        self, D: Denoiser, x: Tensor, state: State, s: Tensor, t: Tensor, noise: PerSampleNoise | None = None
    ) -> tuple[Tensor, State]:
        _, sig_s, a_t, sig_t, h = self.coefficients(s, t)
        x0 = denoise(D, x, s)
        d_bar, new = self.slope(state, {"x0": x0, "lam": (self.lam(s),)}, x0, h)
        return exp_update(x, sig_t / sig_s, a_t, h, d_bar), new


class HeavyBall(_Momentum):
    """Heavy-Ball momentum on DPM-Solver++: v ← (1 − β) v + β D̄_k (provably first order for β < 1)."""

    cite = "Wizadwongsa et al. 2024, HB Eq. 11 on DPM-Solver++"

    def slope(self, state: State, new: State, x0: Tensor, h: float) -> tuple[Tensor, State]:
        out = push_history(state, new, self.order)
        d0, d1, _ = multistep_combination(history(out, "x0"), out["lam"], h)
        d_bar = d0 if d1 is None else d0 + 0.5 * d1
        v = d_bar if "v" not in state else (1.0 - self.beta) * state["v"] + self.beta * d_bar
        out["v"] = v
        return v, out


class GHVB(_Momentum):
    """Generalized Heavy-Ball: v ← (1 − β) v + β D, then an Adams–Bashforth mix of v (order k − 1 + β).

    For k = 2 the mix is v_n + (2 − β)/(2βr) (v_n − v_{n−1}) with r = h_{n−1}/h_n, i.e.
    ((2 + β) v_n − (2 − β) v_{n−1})/(2β) on uniform steps (Eq. 14); β = 1 is DPM-Solver++ 2M.
    """

    cite = "Wizadwongsa et al. 2024, GHVB Eq. 14"

    def slope(self, state: State, new: State, x0: Tensor, h: float) -> tuple[Tensor, State]:
        v = x0 if "v" not in state else (1.0 - self.beta) * state["v"] + self.beta * x0
        out = push_history(state, {"v": v, "lam": new["lam"]}, self.order)
        vs = history(out, "v")
        d_bar = v
        if len(vs) == 2:
            r = (out["lam"][0] - out["lam"][1]) / h
            d_bar = v + (2.0 - self.beta) / (2.0 * self.beta * r) * (v - vs[1])
        out["x0"] = x0
        return d_bar, out
