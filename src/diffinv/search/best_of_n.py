"""Search over initial noise and paths with a verifier (Ma et al. 2025, inference-time scaling)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffinv.diffusion.denoisers import Denoiser
from diffinv.errors import ConfigError
from diffinv.operators.base import LinearOperator
from diffinv.search.base import (
    CountingMemo,
    SearchMethod,
    SearchResult,
    best_per_run,
    expand_noise,
    reindex_tracker,
)
from diffinv.search.rewards import Reward
from diffinv.solvers.base import PerSampleNoise, Solver, StepInfo, sample


class BestOfN(SearchMethod):
    """Random search: solve from N initial noises per run and keep the best verifier score.

    Ma et al. 2025 (arXiv 2501.09732), §3.1 "random search". Candidates are the rows of
    ``x_T`` (N per run), so growing N with the same seeds only adds candidates.
    """

    cite = "Ma et al. 2025, random search §3.1"

    def __init__(
        self,
        operator: LinearOperator | None = None,
        y: Tensor | None = None,
        reward: str | Reward | None = None,
        n: int = 8,
        **options,
    ) -> None:
        super().__init__(operator, y, reward, **options)
        if n < 1:
            raise ConfigError("search best_of_n: n must be >= 1")
        self.n = int(n)

    @property
    def particles_per_run(self) -> int:
        return self.n

    def run(
        self, solver: Solver, D: Denoiser, x_T: Tensor, grid: Tensor, noise: PerSampleNoise
    ) -> SearchResult:
        self.runs(x_T)
        counter, tracker = CountingMemo(D), self.tracker(grid)
        x = sample(solver, counter, x_T, grid, noise, callback=tracker)
        pick = best_per_run(self.reward(x), self.n)
        reindex_tracker(tracker, pick)
        return self.result(x[pick], counter.nfe, tracker)


class ZeroOrder(SearchMethod):
    """Zero-order search: N neighbours √(1−ρ²) x̃ + ρ z of a pivot noise x̃; move to the best if it improves.

    Ma et al. 2025 (arXiv 2501.09732), §3.1 "zero-order search" (neighbours keep the
    N(0, σ_T² I) marginal); ``iterations`` rounds, each N full solves.
    """

    cite = "Ma et al. 2025, zero-order search §3.1"

    def __init__(
        self,
        operator: LinearOperator | None = None,
        y: Tensor | None = None,
        reward: str | Reward | None = None,
        n: int = 4,
        iterations: int = 4,
        radius: float = 0.5,
        **options,
    ) -> None:
        super().__init__(operator, y, reward, **options)
        if n < 1 or iterations < 1 or not 0 < radius <= 1:
            raise ConfigError("search zero_order: need n >= 1, iterations >= 1 and 0 < radius <= 1")
        self.n, self.iterations, self.radius = int(n), int(iterations), float(radius)

    def run(
        self, solver: Solver, D: Denoiser, x_T: Tensor, grid: Tensor, noise: PerSampleNoise
    ) -> SearchResult:
        b, n = self.runs(x_T), self.n
        counter = CountingMemo(D)
        cand_noise = expand_noise(noise, n)
        pivot, best_x, best_r, best_h = x_T, None, torch.full((b,), -math.inf, dtype=torch.float64), None
        scale = float(counter.schedule.sigma(grid[0]))
        for _ in range(self.iterations):
            z = cand_noise.randn(x_T.shape[1:], x_T.dtype) * scale
            cands = math.sqrt(1 - self.radius**2) * pivot.repeat_interleave(n, 0) + self.radius * z
            tracker = self.tracker(grid)
            x = sample(solver, counter, cands, grid, cand_noise, callback=tracker)
            r = self.reward(x).to(torch.float64)
            pick = best_per_run(r, n)
            better = (r[pick] > best_r).to(x.device)
            shape = (-1,) + (1,) * (x.ndim - 1)
            pivot = torch.where(better.reshape(shape), cands[pick], pivot)
            best_x = x[pick] if best_x is None else torch.where(better.reshape(shape), x[pick], best_x)
            h = tracker.score()[pick]
            best_h = h if best_h is None else torch.where(better, h, best_h)
            best_r = torch.maximum(best_r, r[pick])
        return self.result(best_x, counter.nfe, None, hallucination_score=best_h)


class PathSearch(SearchMethod):
    """Search over paths: every ``interval`` steps, re-noise N beams into M children each and keep the N best.

    Children go ``back`` steps up the grid by forward diffusion and are solved forward
    again; the verifier scores their x0 predictions.

    Ma et al. 2025 (arXiv 2501.09732), §3.1 "search over paths". Multistep history
    restarts at each branching. The last segment ends with best-of-N.
    """

    cite = "Ma et al. 2025, search over paths §3.1"

    def __init__(
        self,
        operator: LinearOperator | None = None,
        y: Tensor | None = None,
        reward: str | Reward | None = None,
        n: int = 4,
        children: int = 4,
        interval: int = 5,
        back: int = 2,
        **options,
    ) -> None:
        super().__init__(operator, y, reward, **options)
        if min(n, children, interval, back) < 1 or back > interval:
            raise ConfigError(
                "search path_search: need n, children, interval, back >= 1 and back <= interval"
            )
        self.n, self.m, self.interval, self.back = int(n), int(children), int(interval), int(back)

    @property
    def particles_per_run(self) -> int:
        return self.n

    def _solve(
        self,
        solver: Solver,
        D: Denoiser,
        x: Tensor,
        grid: Tensor,
        noise: PerSampleNoise,
        first: int,
        last: int,
        tracker,
    ) -> tuple[Tensor, Tensor]:
        state = solver.init_state()
        for i in range(first, last):
            x, state = solver.step(D, x, state, grid[i], grid[i + 1], noise)
            tracker(StepInfo(i, float(grid[i + 1]), x, state.get("x0")))
        return x, state["x0"]

    def run(
        self, solver: Solver, D: Denoiser, x_T: Tensor, grid: Tensor, noise: PerSampleNoise
    ) -> SearchResult:
        runs, n, m = self.runs(x_T), self.n, self.m
        counter, sch, steps = CountingMemo(D), D.schedule, len(grid) - 1
        tracker = self.tracker(grid)
        child_noise = expand_noise(noise, m)
        k = min(self.interval, steps)
        x, _ = self._solve(solver, counter, x_T, grid, noise, 0, k, tracker)
        while k < steps:
            j = k - self.back
            a_k, s_k, a_j, s_j = (
                float(v)
                for v in (sch.alpha(grid[k]), sch.sigma(grid[k]), sch.alpha(grid[j]), sch.sigma(grid[j]))
            )
            ratio = a_j / a_k  # forward diffusion from t_k back to t_j
            kids = ratio * x.repeat_interleave(m, 0) + math.sqrt(
                max(0.0, s_j**2 - (ratio * s_k) ** 2)
            ) * child_noise.randn(x.shape[1:], x.dtype)
            saved = tracker.predictions
            tracker.predictions = [p.repeat_interleave(m, 0) for p in saved]
            kids, x0 = self._solve(solver, counter, kids, grid, child_noise, j, k, tracker)
            top = self.reward(x0).to(torch.float64).reshape(runs, n * m).topk(n, dim=1).indices
            keep = (top + n * m * torch.arange(runs)[:, None]).reshape(-1)
            reindex_tracker(tracker, keep)
            x = kids[keep]
            nxt = min(k + self.interval, steps)
            x, _ = self._solve(solver, counter, x, grid, noise, k, nxt, tracker)
            k = nxt
        pick = best_per_run(self.reward(x), n)
        reindex_tracker(tracker, pick)
        return self.result(x[pick], counter.nfe, tracker)
