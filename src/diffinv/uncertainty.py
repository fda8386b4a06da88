"""Uncertainty diagnostics: hallucination score, interval coverage, error-vs-std calibration."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from diffinv.solvers.base import StepInfo


class HallucinationScore:
    """Solver callback: variance of the x0 predictions over the final ``last_k`` steps.

    Aithal et al. 2024 ("Understanding hallucinations in diffusion models through mode
    interpolation"), Eq. 5: Hal(x) = mean over dimensions of Var_t x̂0(x_t, t) over the
    last K steps of the trajectory. Returns one score per particle.
    """

    def __init__(self, total_steps: int, last_k: int = 5) -> None:
        self.first = max(0, total_steps - last_k)
        self.predictions: list[Tensor] = []

    def __call__(self, info: StepInfo) -> None:
        if info.index >= self.first and info.x0 is not None:
            self.predictions.append(info.x0.detach().to(torch.float64))

    def score(self) -> Tensor:
        """(particles,) scores; zeros if fewer than two predictions were seen."""
        if len(self.predictions) < 2:
            n = self.predictions[0].shape[0] if self.predictions else 0
            return torch.zeros(n, dtype=torch.float64)
        stack = torch.stack(self.predictions)
        return stack.var(dim=0).reshape(stack.shape[1], -1).mean(1)


def interval_coverage(
    samples: np.ndarray, truth: np.ndarray, levels: tuple[float, ...] = (0.5, 0.9, 0.95), axis: int = 0
) -> dict[float, float]:
    """Fraction of truth pixels inside the central posterior interval at each level.

    Intervals are empirical quantiles of ``samples`` along ``axis`` (the sample axis).
    A calibrated posterior gives coverage ≈ level.
    """
    out = {}
    for level in levels:
        lo = np.quantile(samples, (1 - level) / 2, axis=axis)
        hi = np.quantile(samples, (1 + level) / 2, axis=axis)
        out[level] = float(((truth >= lo) & (truth <= hi)).mean())
    return out


def error_vs_std(
    mean: np.ndarray, std: np.ndarray, truth: np.ndarray, bins: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Binned calibration: per std-quantile bin, (mean predicted std, RMS error)."""
    err = np.abs(mean - truth).ravel()
    s = std.ravel()
    edges = np.unique(np.quantile(s, np.linspace(0, 1, bins + 1)))
    which = np.clip(np.digitize(s, edges[1:-1]), 0, len(edges) - 2)
    pred = np.array([s[which == b].mean() for b in range(len(edges) - 1) if (which == b).any()])
    rmse = np.array(
        [np.sqrt((err[which == b] ** 2).mean()) for b in range(len(edges) - 1) if (which == b).any()]
    )
    return pred, rmse
