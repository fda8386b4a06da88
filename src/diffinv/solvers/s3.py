"""S³-style solver search: per-step timesteps, orders and corrector use for a fixed NFE budget."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from diffinv.diffusion.denoisers import Denoiser
from diffinv.diffusion.schedule import VPSchedule
from diffinv.errors import ConfigError
from diffinv.solvers.base import integrate
from diffinv.solvers.calibration import (
    CalibrationCache,
    calibration_start,
    planned_grid,
    reference_trajectory,
)
from diffinv.solvers.unipc import UniPC

CHOICES = ((2, True), (1, True), (3, True), (2, False), (3, False))  # (predictor order, corrector)
# global warps u ↦ u^γ of the λ-positions tried before the local search; dense below 1, where the
# demo MRI prior's 10-step error is lowest and changes by up to 2x between neighbouring γ (measured)
WARPS = (0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8, 0.9, 1.15, 1.4, 1.7, 2.0)


class S3(UniPC):
    """S³-style searched UniPC: timesteps and per-step (order, corrector) chosen on calibration samples.

    Liu et al. 2023 (arXiv 2312.07243), §4: the unified sampler framework (USF) makes each
    step's solver a choice, and S³ searches those choices for a fixed NFE. Here the choices
    are the UniP order (1–3) and the UniC corrector per block of steps (``blocks`` blocks)
    and the timesteps, as a monotone piecewise-linear warp of the grid's λ-positions with
    ``blocks`` knots. The search first tries a few global power warps of the grid, then
    greedy coordinate descent (``sweeps`` passes, knot moves
    halving each pass) on the RMSE of the final sample of ``calibration_size`` seeded
    trajectories to a third-order UniPC reference with
    ``reference_substeps`` per step, started from UniPC-2 on the given grid, so the result is
    never worse than UniPC on the calibration batch. Unlike S³ no learned predictor is used.
    The plan is cached per configuration in ``cache`` (JSON), or given as ``plan``
    (``{"orders": [...], "correctors": [...], "times": [...] or null}``).
    """

    cite = "Liu et al. 2023, USF/S3 §4 (greedy search variant)"

    def __init__(
        self,
        schedule: VPSchedule,
        plan: dict[str, Any] | None = None,
        cache: str | None = None,
        blocks: int = 5,
        sweeps: int = 1,
        reference_substeps: int = 10,
        calibration_seed: int = 0,
        calibration_size: int = 64,
        tag: str = "",
        variant: str = "bh2",
    ) -> None:
        super().__init__(schedule, order=2, variant=variant)
        if blocks < 1 or sweeps < 0:
            raise ConfigError("s3: need blocks >= 1 and sweeps >= 0")
        self.fixed_plan = plan
        self.cache = CalibrationCache(cache)
        self.blocks = int(blocks)
        self.sweeps = int(sweeps)
        self.reference_substeps = int(reference_substeps)
        self.calibration_seed = int(calibration_seed)
        self.calibration_size = int(calibration_size)
        self.tag = str(tag)
        self.orders: list[int] | None = None
        self.correctors: list[bool] = []

    def plan(self, index: int) -> tuple[int, bool]:
        if self.orders is None:
            raise ConfigError("s3: call solver.prepare(D, grid, x) before stepping (sample() does)")
        return self.orders[index], self.correctors[index]

    def _use(self, plan: dict[str, Any], grid: Tensor) -> Tensor:
        steps = len(grid) - 1
        if len(plan.get("orders", ())) != steps or len(plan.get("correctors", ())) != steps:
            raise ConfigError(f"s3 plan: need 'orders' and 'correctors' with one entry per step ({steps})")
        if any(o not in (1, 2, 3) for o in plan["orders"]):
            raise ConfigError(f"s3 plan: orders must be 1, 2 or 3, got {plan['orders']}")
        self.orders = [int(o) for o in plan["orders"]]
        self.correctors = [bool(c) for c in plan["correctors"]]
        return planned_grid(plan.get("times"), grid, "s3 plan")

    def prepare(self, D: Denoiser, grid: Tensor, x: Tensor) -> Tensor:
        if self.fixed_plan is not None:
            return self._use(self.fixed_plan, grid)
        found = self.cache.get_or_fit(
            lambda: self.search(D, grid, x),
            "s3",
            grid,
            x,
            D,
            blocks=self.blocks,
            sweeps=self.sweeps,
            substeps=self.reference_substeps,
            seed=self.calibration_seed,
            size=self.calibration_size,
            tag=self.tag,
            variant=self.variant,
        )
        return self._use(found, grid)

    def _times(self, grid: Tensor, knots: np.ndarray) -> Tensor:
        """The grid with its λ-positions u warped by the piecewise-linear map through ``knots``."""
        lam = self.schedule.lam(grid)
        u = ((lam - lam[0]) / (lam[-1] - lam[0])).numpy()
        warped = np.interp(u, np.linspace(0, 1, len(knots)), knots)
        times = self.schedule.t_of_lambda(lam[0] + torch.as_tensor(warped) * (lam[-1] - lam[0]))
        times[0], times[-1] = grid[0], grid[-1]
        return times

    @torch.no_grad()
    def search(self, D: Denoiser, grid: Tensor, like: Tensor) -> dict[str, Any]:
        """Greedy coordinate search of block choices and warp knots on one calibration batch."""
        steps = len(grid) - 1
        nb = min(self.blocks, steps)
        block_of = [i * nb // steps for i in range(steps)]
        x = calibration_start(
            self.schedule, like, float(grid[0]), self.calibration_seed, self.calibration_size
        )
        target = reference_trajectory(D, x, grid, self.reference_substeps)[-1]

        def loss(choice: list[int], knots: np.ndarray) -> float:
            self.orders = [CHOICES[choice[block_of[i]]][0] for i in range(steps)]
            self.correctors = [CHOICES[choice[block_of[i]]][1] for i in range(steps)]
            out = integrate(self, D, x, self._times(grid, knots))
            err = float((out - target).pow(2).mean().sqrt())
            return err if np.isfinite(err) else float("inf")

        choice, knots = [0] * nb, np.linspace(0.0, 1.0, nb + 1)
        best = baseline = loss(choice, knots)
        for gamma in WARPS:  # stage 0: global power warps of the λ-positions
            trial = knots**gamma
            if (value := loss(choice, trial)) < best:
                best, knots = value, trial
        delta = 0.5
        for _ in range(self.sweeps):
            for b in range(nb):
                for c in range(1, len(CHOICES)):
                    trial = choice[:b] + [c] + choice[b + 1 :]
                    if (value := loss(trial, knots)) < best:
                        best, choice = value, trial
            for k in range(1, nb):
                for sign in (-1.0, 1.0):
                    trial = knots.copy()
                    gap = trial[k + 1] - trial[k] if sign > 0 else trial[k] - trial[k - 1]
                    trial[k] += sign * delta * gap
                    if (value := loss(choice, trial)) < best:
                        best, knots = value, trial
            delta /= 2
        times = self._times(grid, knots)
        return {
            "orders": [CHOICES[choice[block_of[i]]][0] for i in range(steps)],
            "correctors": [CHOICES[choice[block_of[i]]][1] for i in range(steps)],
            "times": [float(t) for t in times],
            "loss": best,
            "baseline_loss": baseline,
        }
