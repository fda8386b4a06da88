"""T-Stitch: a small denoiser for the first steps, the large one for the rest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffinv.diffusion.denoisers import Denoiser, rewrap, wrapped
from diffinv.diffusion.schedule import VPSchedule
from diffinv.errors import ConfigError
from diffinv.solvers.base import State, WrappedSolver


def rebind(D: Denoiser, inner: Denoiser) -> Denoiser:
    """``D`` with its innermost prior replaced by ``inner``: every wrapper around it (guidance,
    a search's evaluation counter; see :func:`~diffinv.diffusion.denoisers.wrapped`) is rebuilt."""
    outer = wrapped(D)
    return inner if outer is None else rewrap(D, rebind(outer, inner))


class TStitch(WrappedSolver):
    """T-Stitch: the small denoiser drives the first round(r·N) of N steps, then the large one.

    Pan et al. 2024 (arXiv 2402.14167), §3: both models share the schedule and the data
    space. Guidance is kept: a guided denoiser is rebuilt around the small prior. The switch
    is a time of the prepared grid, so steps taken from a fresh state (tree and
    beam searches) use the right model.
    ``small`` is a denoiser object (Python use) or ``small_checkpoint`` a checkpoint folder
    (config use). r = 0 is the large model alone, r = 1 the small one.
    """

    cite = "Pan et al. 2024, T-Stitch §3"
    prefix = "tstitch_"

    def __init__(
        self,
        schedule: VPSchedule,
        base: str = "dpmpp_2m",
        base_options: dict[str, Any] | None = None,
        fraction: float = 0.0,
        small: Denoiser | None = None,
        small_checkpoint: str | None = None,
    ) -> None:
        super().__init__(schedule, base, base_options)
        if not 0.0 <= fraction <= 1.0:
            raise ConfigError(f"tstitch fraction: must be in [0, 1], got {fraction}")
        if small is None and small_checkpoint is not None:
            from diffinv.diffusion.networks import load_denoiser

            small = load_denoiser(Path(small_checkpoint))
        if small is None and fraction > 0:
            raise ConfigError("tstitch: fraction > 0 needs a small denoiser (fix: set small_checkpoint)")
        self.fraction = float(fraction)
        self.small = small
        self.switch: float | None = None  # steps from a time above it use the small denoiser

    def prepare(self, D: Denoiser, grid: Tensor, x: Tensor) -> Tensor:
        if isinstance(self.small, torch.nn.Module):
            self.small.to(x.device)
        grid = super().prepare(D, grid, x)
        self.switch = float(grid[round(self.fraction * (len(grid) - 1))])
        return grid

    def wrap(self, D: Denoiser, own: State, s: Tensor) -> tuple[Denoiser, State]:
        if self.switch is None:
            raise ConfigError("tstitch: call solver.prepare(D, grid, x) before stepping (sample() does)")
        return (rebind(D, self.small) if float(s) > self.switch else D), {}
