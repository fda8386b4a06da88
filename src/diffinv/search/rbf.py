"""Rollover budget forcing (RBF): per-step particle budgets with rollover of unused evaluations."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffinv.diffusion.denoisers import Denoiser
from diffinv.errors import ConfigError
from diffinv.operators.base import LinearOperator
from diffinv.search.base import CountingMemo, SearchMethod, SearchResult, shared_noise
from diffinv.search.rewards import Reward
from diffinv.solvers.base import PerSampleNoise, Solver, StepInfo, denoise


class RBF(SearchMethod):
    """RBF: at each step draw kernel candidates until one's Tweedie x̂0 beats the current reward.

    Kim et al. 2025 (arXiv 2503.19385), §4: the ``budget`` of evaluations per sample is
    split evenly over the steps; a step stops at the first improving candidate (or keeps
    the best drawn when its share runs out) and rolls the unused share over to the next.
    Each candidate costs one evaluation (its x̂0 is reused by the next step), so the NFE
    per sample never exceeds the budget. Needs a stochastic one-step (SDE) kernel such as
    ``ddpm`` (multistep history is not carried across candidates).
    """

    cite = "Kim et al. 2025, RBF §4"

    def __init__(
        self,
        operator: LinearOperator | None = None,
        y: Tensor | None = None,
        reward: str | Reward | None = None,
        budget: int = 100,
        **options,
    ) -> None:
        super().__init__(operator, y, reward, **options)
        self.budget = int(budget)

    def run(
        self, solver: Solver, D: Denoiser, x_T: Tensor, grid: Tensor, noise: PerSampleNoise
    ) -> SearchResult:
        steps, b = len(grid) - 1, self.runs(x_T)
        if not solver.stochastic:
            raise ConfigError("search rbf: needs a stochastic solver (e.g. ddpm)")
        if self.budget < steps + 1:
            raise ConfigError(
                f"search rbf: budget {self.budget} is below one evaluation per step ({steps + 1})"
            )
        counter, tracker = CountingMemo(D), self.tracker(grid)
        share = (self.budget - 1) // steps
        x = x_T
        x0 = denoise(counter, x, grid[0])
        current = self.reward(x0).to(torch.float64)
        rollover = torch.zeros(b, dtype=torch.long)
        for i in range(steps):
            allowance = share + rollover
            used = torch.zeros(b, dtype=torch.long)
            best_v = torch.full((b,), -math.inf, dtype=torch.float64)
            best_x, best_x0 = x.clone(), x0.clone()
            active = torch.ones(b, dtype=torch.bool)
            while bool(active.any()):
                idx = active.nonzero()[:, 0]
                xa = x[idx]
                counter.prime(xa, float(grid[i]), x0[idx])
                sub = shared_noise(noise, [noise.generators[r] for r in idx.tolist()])
                cand, _ = solver.step(counter, xa, solver.init_state(), grid[i], grid[i + 1], sub)
                cx0 = denoise(counter, cand, grid[i + 1])
                v = self.reward(cx0).to(torch.float64)
                used[idx] += 1
                better = v > best_v[idx]
                best_v[idx[better]], best_x[idx[better]], best_x0[idx[better]] = (
                    v[better],
                    cand[better],
                    cx0[better],
                )
                active[idx[v > current[idx]]] = False
                active &= used < allowance
            rollover = allowance - used
            x, x0, current = best_x, best_x0, best_v
            tracker(StepInfo(i, float(grid[i + 1]), x, x0))
        return self.result(x, counter.nfe, tracker)
