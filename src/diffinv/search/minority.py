"""Minority guidance: steer sampling towards low-density (minority) regions of the prior."""

from __future__ import annotations

import torch
from torch import Tensor

from diffinv.diffusion.denoisers import Denoiser
from diffinv.errors import ConfigError
from diffinv.guidance.base import score_guided
from diffinv.operators.base import LinearOperator
from diffinv.search.base import CountingMemo, SearchMethod, SearchResult
from diffinv.search.rewards import Reward
from diffinv.solvers.base import PerSampleNoise, Solver, sample


def minority_score(D: Denoiser, x0: Tensor, t: float = 0.06, draws: int = 5, seed: int = 0) -> Tensor:
    """l(x0) = mean_j ‖x0 − D(α_t x0 + σ_t ε_j, t)‖² / dim: Tweedie reconstruction loss, high off the
    data mode.

    Um et al. 2024 (ICLR), Eq. 6, with the squared error in place of LPIPS (t = 60/1000,
    5 draws as in the paper). Noise draws are fixed by ``seed`` and shared by every row, so the
    score is a smooth function of x0 alone, whatever the batch.
    """
    g = torch.Generator().manual_seed(seed)
    sch = D.schedule
    tt = torch.full((x0.shape[0],), float(t), dtype=torch.float64, device=x0.device)
    total = torch.zeros(x0.shape[0], dtype=x0.dtype, device=x0.device)
    for _ in range(draws):
        eps = torch.randn((1,) + tuple(x0.shape[1:]), generator=g, dtype=x0.dtype).to(x0.device)
        rec = D(float(sch.alpha(t)) * x0 + float(sch.sigma(t)) * eps, tt)
        total = total + ((x0 - rec) ** 2).reshape(x0.shape[0], -1).mean(1)
    return total / draws


class _MinorityDenoiser:
    def __init__(self, D: Denoiser, weight: float, t: float, draws: int) -> None:
        self.D, self.schedule, self.weight, self.t, self.draws = D, D.schedule, weight, t, draws

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        return score_guided(
            self.D, x, t, lambda x0, _: minority_score(self.D, x0, self.t, self.draws), self.weight
        )


class MinorityGuidance(SearchMethod):
    """Minority guidance: D_w = D + w (σ_t²/α_t) ∇_x l(D(x_t, t)), then the solver as usual.

    Um et al. 2024 (ICLR), Eq. 9 guides with a classifier trained on binned minority
    scores; here the minority score of the denoised estimate is differentiated directly
    (self-guided form, Um & Ye 2024). ``weight = 0`` is the base sampler. Each step costs
    1 + ``draws`` evaluations plus their backward pass. ``D`` must be differentiable (a prior
    denoiser, or guidance ``none``; score-style guidance returns detached estimates).
    """

    cite = "Um et al. 2024, minority guidance Eq. 9"

    def __init__(
        self,
        operator: LinearOperator | None = None,
        y: Tensor | None = None,
        reward: str | Reward | None = None,
        weight: float = 1.0,
        t: float = 0.06,
        draws: int = 5,
        **options,
    ) -> None:
        super().__init__(operator, y, reward, **options)
        if weight < 0 or draws < 1 or not 0 < t < 1:
            raise ConfigError("search minority: need weight >= 0, draws >= 1 and 0 < t < 1")
        self.weight, self.t, self.draws = float(weight), float(t), int(draws)

    def run(
        self, solver: Solver, D: Denoiser, x_T: Tensor, grid: Tensor, noise: PerSampleNoise
    ) -> SearchResult:
        counter, tracker = CountingMemo(D), self.tracker(grid)
        guided = counter if self.weight == 0 else _MinorityDenoiser(counter, self.weight, self.t, self.draws)
        x = sample(solver, guided, x_T, grid, noise, callback=tracker)
        with torch.no_grad():
            score = minority_score(D, x, self.t, self.draws)
        return self.result(x, counter.nfe, tracker, minority_score=score)
