"""T-Stitch: a small denoiser for the first steps, the large one for the rest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffinv.diffusion.denoisers import Denoiser
from diffinv.diffusion.schedule import VPSchedule
from diffinv.errors import ConfigError
from diffinv.solvers.base import State, WrappedSolver


def rebind(D: Denoiser, inner: Denoiser) -> Denoiser:
    """``D`` with its innermost prior replaced by ``inner``: a guided denoiser (one exposing
    ``guidance`` and ``denoiser``, as guidance plug-ins return) is rebuilt around ``inner``."""
    guidance = getattr(D, "guidance", None)
    if guidance is not None and hasattr(D, "denoiser"):
        return guidance(rebind(D.denoiser, inner))
    return inner


class TStitch(WrappedSolver):
    """T-Stitch: the small denoiser drives the first round(r·N) of N steps, then the large one.

    Pan et al. 2024 (arXiv 2402.14167), §3: both models share the schedule and the data
    space. Guidance is kept: a guided denoiser is rebuilt around the small prior.
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
        self.switch: int | None = None

    def prepare(self, D: Denoiser, grid: Tensor, x: Tensor) -> Tensor:
        self.switch = round(self.fraction * (len(grid) - 1))
        if isinstance(self.small, torch.nn.Module):
            self.small.to(x.device)
        return super().prepare(D, grid, x)

    def wrap(self, D: Denoiser, own: State, s: Tensor) -> tuple[Denoiser, State]:
        if self.switch is None:
            raise ConfigError("tstitch: call solver.prepare(D, grid, x) before stepping (sample() does)")
        index = int(own.get("tstitch_step", 0))
        use = rebind(D, self.small) if index < self.switch else D
        return use, {"tstitch_step": index + 1}
