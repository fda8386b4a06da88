"""UniPC: unified predictor–corrector in data prediction (Zhao et al., NeurIPS 2023)."""

from __future__ import annotations

import functools
import math

import numpy as np
from torch import Tensor

from diffinv.diffusion.denoisers import Denoiser
from diffinv.diffusion.schedule import VPSchedule
from diffinv.errors import ConfigError
from diffinv.solvers.base import PerSampleNoise, State, history, push_history
from diffinv.solvers.dpmpp import _DataPrediction


@functools.lru_cache(maxsize=4096)
def unipc_weights(h: float, nodes: tuple[float, ...], variant: str) -> tuple[float, float, tuple[float, ...]]:
    """(e^{−h} − 1, B(h), ρ) of one UniP/UniC update (Zhao et al. 2023, Alg. 2–3 and Eq. 8).

    ``nodes`` are r_k = (λ_k − λ_0)/h of the outputs entering the update besides the newest
    one before the step (the corrector's new output has r = 1); memoised, as the grid repeats
    across batches. ρ solves R ρ = b with
    R_ik = r_k^i and b_i = (i+1)! h φ_{i+2}(−h)/B(h), B(h) = −h (bh1) or e^{−h} − 1 (bh2);
    with a single node ρ = 1/2, as in the official code.
    """
    hh = -h
    phi1 = math.expm1(hh)
    b_h = hh if variant == "bh1" else phi1
    n = len(nodes)
    if n <= 1:
        return phi1, b_h, (0.5,) * n
    hphi, fact, b = phi1 / hh - 1.0, 1, []
    for i in range(1, n + 1):
        b.append(hphi * fact / b_h)
        fact *= i + 1
        hphi = hphi / hh - 1.0 / fact
    return (
        phi1,
        b_h,
        tuple(
            float(r)
            for r in np.linalg.solve(np.vander(np.asarray(nodes), n, increasing=True).T, np.asarray(b))
        ),
    )


def unipc_update(
    x: Tensor,
    sig_ratio: float,
    a_t: float,
    h: float,
    ms: list[Tensor],
    lams: tuple[float, ...],
    variant: str,
    new: Tensor | None = None,
) -> Tensor:
    """UniP (``new=None``) or UniC (``new`` = the output at the target) from ``x`` at λ = lams[0].

    x_t = (σ_t/σ_s) x − α_t (e^{−h} − 1) m_0 − α_t B(h) Σ_k ρ_k (m_k − m_0)/r_k, summing over
    the older outputs ``ms[1:]`` at ``lams[1:]`` and, for the corrector, ``new`` at r = 1.
    """
    nodes = [(lam - lams[0]) / h for lam in lams[1 : len(ms)]]
    diffs = [(m - ms[0]) / r for m, r in zip(ms[1:], nodes)]
    if new is not None:
        diffs.append(new - ms[0])
        nodes.append(1.0)
    phi1, b_h, rho = unipc_weights(h, tuple(nodes), variant)
    out = sig_ratio * x - a_t * phi1 * ms[0]
    for r, d in zip(rho, diffs):
        out = out - a_t * b_h * r * d
    return out


class UniPC(_DataPrediction):
    """UniPC-p: UniP predictor of order p, UniC corrector reusing each new output (no extra NFE).

    The output at the predicted point corrects that point before the next predictor step;
    warm-up uses lower orders and the last point is not corrected (no further evaluation).
    ``variant``: ``bh1`` or ``bh2`` (B(h)); ``corrector=False`` gives UniP alone (UniP-2
    with bh2 is DPM-Solver++ 2M). Subclasses choose per-step orders and corrector use
    (:meth:`plan`) and may modify the newest output before it is used (:meth:`compensate`).
    """

    cite = "Zhao et al. 2023, UniPC Alg. 2-3 (B(h) variant)"

    def __init__(
        self,
        schedule: VPSchedule,
        order: int = 2,
        variant: str = "bh2",
        corrector: bool = True,
        thresholding: bool = False,
        threshold_ratio: float = 0.995,
        sample_max_value: float | None = None,
    ) -> None:
        super().__init__(schedule, thresholding, threshold_ratio, sample_max_value)
        if order not in (1, 2, 3):
            raise ConfigError(f"unipc order: must be 1, 2 or 3, got {order!r}")
        if variant not in ("bh1", "bh2"):
            raise ConfigError(f"unipc variant: unknown {variant!r} (fix: use bh1 or bh2)")
        self.order = int(order)
        self.variant = variant
        self.corrector = bool(corrector)

    def plan(self, index: int) -> tuple[int, bool]:
        """(predictor order, corrector before the step?) of step ``index``."""
        return self.order, self.corrector

    def compensate(self, m: Tensor, state: State, s: float, index: int) -> Tensor:
        """The newest output as used in step ``index`` (identity here; DC-Solver overrides)."""
        return m

    def step(
        self, D: Denoiser, x: Tensor, state: State, s: Tensor, t: Tensor, noise: PerSampleNoise | None = None
    ) -> tuple[Tensor, State]:
        _, sig_s, a_t, sig_t, h = self.coefficients(s, t)
        index = int(state.get("step", 0))
        order, corrector = self.plan(index)
        m_raw = self.predict(D, x, s)
        m = self.compensate(m_raw, state, float(s), index)
        if corrector and "x_last" in state:
            _, sig_0, a_s, _, h_c = self.coefficients(state["t_last"], s)
            prev = history(state, "x0")[: state["order"]]
            x = unipc_update(
                state["x_last"], sig_s / sig_0, a_s, h_c, prev, state["lam"], self.variant, new=m
            )
        new = push_history(state, {"x0": m_raw, "lam": (self.lam(s),), "time": (float(s),)}, 3)
        ms = [m] + history(new, "x0")[1:]
        p = min(order, len(ms))
        x_next = unipc_update(x, sig_t / sig_s, a_t, h, ms[:p], new["lam"], self.variant)
        new.update(x_last=x, t_last=float(s), order=p, step=index + 1)
        return x_next, new
