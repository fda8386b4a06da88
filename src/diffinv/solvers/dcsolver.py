"""DC-Solver: UniPC with dynamic compensation of the newest output (Zhao et al., ECCV 2024)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from diffinv.diffusion.denoisers import Denoiser
from diffinv.diffusion.schedule import VPSchedule
from diffinv.errors import ConfigError
from diffinv.solvers.base import FunctionDenoiser, State, history, integrate
from diffinv.solvers.calibration import CalibrationCache, calibration_start, reference_trajectory
from diffinv.solvers.unipc import UniPC


def lagrange_at(t: float, nodes: list[float], values: list[Tensor]) -> Tensor:
    """The Lagrange interpolant through (``nodes``, ``values``) evaluated at ``t``."""
    out = torch.zeros_like(values[0])
    for j, (tj, vj) in enumerate(zip(nodes, values)):
        w = 1.0
        for k, tk in enumerate(nodes):
            if k != j:
                w *= (t - tk) / (tj - tk)
        out = out + w * vj
    return out


def best_ratio(f0: Tensor, f1: Tensor, f2: Tensor, target: Tensor) -> float:
    """argmin_ρ ‖f(ρ) − target‖² for f quadratic in ρ, given f(0), f(1), f(2) (exact: roots of a cubic)."""
    c = (f2 - 2 * f1 + f0) / 2
    b = f1 - f0 - c
    e = f0 - target
    sums = [float((u * v).sum()) for u, v in ((c, c), (b, c), (b, b), (e, c), (e, b))]
    cc, bc, bb, ec, eb = sums
    roots = np.roots([2 * cc, 3 * bc, bb + 2 * ec, eb])
    cand = [float(r.real) for r in roots if abs(r.imag) < 1e-9] or [1.0]
    loss = [float(((e + b * r + c * r * r) ** 2).sum()) for r in cand]
    return cand[int(np.argmin(loss))]


class DCSolver(UniPC):
    """DC-Solver: before step i, the newest output is replaced by the quadratic Lagrange
    interpolant in t of the last three outputs at t̃ = ρ_i t_{i−1} + (1 − ρ_i) t_{i−2}.

    Zhao et al. 2024 (ECCV), §4.1, Eq. 9–10. The ratios ρ_i minimise ‖x_i(ρ_i) − x_i^ref‖²
    on ``calibration_size`` calibration trajectories (seed ``calibration_seed``;
    reference: third-order UniPC with ``reference_substeps`` per step), fitted greedily step
    by step; since x_i is quadratic in ρ_i the minimiser is exact (the paper runs AdamW on
    the same objective; no network gradient is needed). If the greedy ratios end up worse
    than ρ ≡ 1 on the calibration batch (seen at ≤ 6 steps), ρ ≡ 1 is kept. Ratios are cached per
    configuration and denoiser in ``cache`` (JSON) or given as ``ratios``; ρ ≡ 1 is UniPC.
    """

    cite = "Zhao et al. 2024, DC-Solver Eq. 9-10"

    def __init__(
        self,
        schedule: VPSchedule,
        order: int = 2,
        variant: str = "bh2",
        ratios: list[float] | None = None,
        cache: str | None = None,
        reference_substeps: int = 10,
        calibration_seed: int = 0,
        calibration_size: int = 64,
        tag: str = "",
    ) -> None:
        super().__init__(schedule, order=order, variant=variant)
        self.fixed = None if ratios is None else [float(r) for r in ratios]
        self.cache = CalibrationCache(cache)
        self.reference_substeps = int(reference_substeps)
        self.calibration_seed = int(calibration_seed)
        self.calibration_size = int(calibration_size)
        self.tag = str(tag)
        self.ratios: list[float] | None = None

    def compensate(self, m: Tensor, state: State, s: float, index: int) -> Tensor:
        if self.ratios is None:
            raise ConfigError("dc_solver: call solver.prepare(D, grid, x) before stepping (sample() does)")
        rho = self.ratios[index]
        prev = history(state, "x0")
        if rho == 1.0 or len(prev) < 2:
            return m
        times = [s, *state["time"][:2]]
        return lagrange_at(rho * s + (1 - rho) * times[1], times, [m, *prev[:2]])

    def prepare(self, D: Denoiser, grid: Tensor, x: Tensor) -> Tensor:
        steps = len(grid) - 1
        if self.fixed is not None:
            if len(self.fixed) != steps:
                raise ConfigError(f"dc_solver ratios: need one per step ({steps}), got {len(self.fixed)}")
            self.ratios = self.fixed
            return grid
        entry = self.cache.get_or_fit(
            lambda: {"ratios": self.fit(D, grid, x), "steps": steps, "tag": self.tag},
            "dc_solver",
            grid,
            x,
            D,
            order=self.order,
            variant=self.variant,
            substeps=self.reference_substeps,
            seed=self.calibration_seed,
            size=self.calibration_size,
            tag=self.tag,
        )
        self.ratios = entry["ratios"]
        return grid

    @torch.no_grad()
    def fit(self, D: Denoiser, grid: Tensor, like: Tensor) -> list[float]:
        """Greedy per-step ratios on a calibration batch like ``like`` (N + 1 NFE beyond the reference)."""
        x = start = calibration_start(
            self.schedule, like, float(grid[0]), self.calibration_seed, self.calibration_size
        )
        ref = reference_trajectory(D, x, grid, self.reference_substeps)
        self.ratios = [1.0] * (len(grid) - 1)
        state = self.init_state()
        for i in range(len(grid) - 1):
            m = D(x, grid[i].expand(x.shape[0]))
            fixed = FunctionDenoiser(self.schedule, lambda x_, t_, m=m: m)
            if len(history(state, "x0")) >= 2:
                outs = []
                for rho in (0.0, 1.0, 2.0):
                    self.ratios[i] = rho
                    outs.append(self.step(fixed, x, state, grid[i], grid[i + 1])[0])
                self.ratios[i] = best_ratio(*outs, ref[i + 1])
            x, state = self.step(fixed, x, state, grid[i], grid[i + 1])
        fitted = list(self.ratios)
        self.ratios = [1.0] * len(fitted)
        plain = integrate(self, D, start, grid)
        if float((x - ref[-1]).pow(2).mean()) > float((plain - ref[-1]).pow(2).mean()):
            return self.ratios  # greedy ratios worse end to end (very few steps): keep UniPC
        return fitted
