"""SVDD: derivative-free soft value-based decoding over a stochastic solver kernel."""

from __future__ import annotations

import torch
from torch import Tensor

from diffinv.diffusion.denoisers import Denoiser
from diffinv.errors import ConfigError
from diffinv.operators.base import LinearOperator
from diffinv.search.base import CountingMemo, SearchMethod, SearchResult, expand_noise
from diffinv.search.rewards import Reward
from diffinv.solvers.base import PerSampleNoise, Solver, StepInfo, denoise, derive_seed, select_state


class SVDD(SearchMethod):
    """SVDD-PM: at each step draw M candidates from the kernel, keep one by exp(v/α), v = r(D(x_t, t)).

    Li et al. 2024 (arXiv 2408.08252), Alg. 1 with the posterior-mean value estimate.
    ``alpha = 0`` keeps the best candidate (the image-experiment default, M = 20). The
    candidate's x0 is reused by the next step, so a step costs M evaluations. With
    M = 1 it reproduces the base sampler exactly (candidate 0 uses the particle's own noise).
    With ``alpha > 0`` each run draws its choices from its own generator (seeded from the
    run's noise seed and ``seed``), so results do not depend on the batch.
    """

    cite = "Li et al. 2024, SVDD Alg. 1"

    def __init__(
        self,
        operator: LinearOperator | None = None,
        y: Tensor | None = None,
        reward: str | Reward | None = None,
        candidates: int = 20,
        alpha: float = 0.0,
        **options,
    ) -> None:
        super().__init__(operator, y, reward, **options)
        if candidates < 1 or alpha < 0:
            raise ConfigError("search svdd: need candidates >= 1 and alpha >= 0")
        self.m, self.alpha = int(candidates), float(alpha)

    def run(
        self, solver: Solver, D: Denoiser, x_T: Tensor, grid: Tensor, noise: PerSampleNoise
    ) -> SearchResult:
        if not solver.stochastic and self.m > 1:
            raise ConfigError("search svdd: candidates need a stochastic solver (e.g. ddpm)")
        b, m = self.runs(x_T), self.m
        counter, tracker = CountingMemo(D), self.tracker(grid)
        cand_noise = expand_noise(noise, m)
        x, state = x_T, solver.init_state()
        x0 = denoise(counter, x, grid[0])
        choosers = [torch.Generator().manual_seed(derive_seed(s, self.seed)) for s in noise.seeds]
        for i in range(len(grid) - 1):
            rep = torch.arange(b).repeat_interleave(m)
            x_rep = x[rep]
            counter.prime(x_rep, float(grid[i]), x0[rep])
            cand, st = solver.step(counter, x_rep, select_state(state, rep), grid[i], grid[i + 1], cand_noise)
            cand_x0 = denoise(counter, cand, grid[i + 1])
            v = self.reward(cand_x0).to(torch.float64).reshape(b, m)
            if self.alpha == 0:
                j = v.argmax(1)
            else:
                probs = torch.softmax(v / self.alpha, 1)
                j = torch.cat([torch.multinomial(probs[r], 1, generator=choosers[r]) for r in range(b)])
            pick = j + m * torch.arange(b)
            x, state, x0 = cand[pick], select_state(st, pick), cand_x0[pick]
            tracker(StepInfo(i, float(grid[i + 1]), x, state.get("x0")))
        return self.result(x, counter.nfe, tracker)
