"""Time-Shift sampler: evaluate the network at the time that matches the sample's variance."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from diffinv.diffusion.denoisers import Denoiser
from diffinv.diffusion.schedule import VPSchedule
from diffinv.errors import ConfigError
from diffinv.solvers.base import FunctionDenoiser, State, WrappedSolver


class TimeShift(WrappedSolver):
    """Time-Shift: while t > cutoff, query the network at the time whose noise level matches Var(x_t).

    Li et al. 2024 (ICLR), "Alleviating Exposure Bias via Time-Shift Sampling", Alg. 1:
    t_s = argmin_τ (Var(x_t) − σ_τ²)² over the ``resolution``-point time grid within
    |τ − t| ≤ ``window``, per particle. The base solver's coefficients stay on its grid: the
    network's ε̂(x, t_s) is turned into the data prediction at t, (x − σ_t ε̂)/α_t.
    Times are continuous (the paper's w = 30, c = 300 of 1000 steps are 0.03 and 0.3).
    A cutoff at or beyond t_max leaves the base solver unchanged.
    """

    cite = "Li et al. 2024, Time-Shift Sampler Alg. 1"
    prefix = "ts_"

    def __init__(
        self,
        schedule: VPSchedule,
        base: str = "dpmpp_2m",
        base_options: dict[str, Any] | None = None,
        window: float = 0.03,
        cutoff: float = 0.3,
        resolution: int = 1000,
    ) -> None:
        super().__init__(schedule, base, base_options)
        if window < 0 or resolution < 2:
            raise ConfigError("timeshift: need window >= 0 and resolution >= 2")
        self.window = float(window)
        self.cutoff = float(cutoff)
        self.taus = torch.linspace(schedule.t_min, schedule.t_max, int(resolution), dtype=torch.float64)
        self.tables: dict[str, tuple[Tensor, Tensor, Tensor, Tensor]] = {}

    def table(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(τ, σ_τ², α_τ, σ_τ) on the time grid, kept on ``device`` so a step needs no host sync."""
        key = str(device)
        if key not in self.tables:
            sch = self.schedule
            self.tables[key] = tuple(
                v.to(device)
                for v in (self.taus, sch.sigma(self.taus) ** 2, sch.alpha(self.taus), sch.sigma(self.taus))
            )  # type: ignore[assignment]
        return self.tables[key]

    def shifted_index(self, x: Tensor, t: float) -> Tensor:
        """Per-particle index into the time grid of t_s, for particles ``x`` at time ``t``.

        The index lives on the particles' device.
        """
        _, noise_var, _, _ = self.table(x.device)
        var = x.reshape(x.shape[0], -1).to(torch.float64).var(dim=1, unbiased=False)
        lo = int(torch.searchsorted(self.taus, torch.tensor(t - self.window, dtype=torch.float64)))
        hi = int(
            torch.searchsorted(self.taus, torch.tensor(t + self.window, dtype=torch.float64), right=True)
        )
        lo, hi = min(lo, len(self.taus) - 1), max(hi, lo + 1)
        return lo + ((var[:, None] - noise_var[None, lo:hi]) ** 2).argmin(dim=1)

    def shifted_time(self, x: Tensor, t: float) -> Tensor:
        """Per-particle t_s for particles ``x`` at time ``t``."""
        return self.table(x.device)[0][self.shifted_index(x, t)]

    def wrap(self, D: Denoiser, own: State, s: Tensor) -> tuple[Denoiser, State]:
        if float(s) <= self.cutoff:
            return D, own
        sch = self.schedule

        def shifted(x: Tensor, t: Tensor) -> Tensor:
            t0 = float(t.reshape(-1)[0])
            if t0 <= self.cutoff:
                return D(x, t)
            taus, _, alphas, sigmas = self.table(x.device)
            idx = self.shifted_index(x, t0)
            shape = (-1,) + (1,) * (x.ndim - 1)
            a_ts, s_ts = (v[idx].reshape(shape).to(x.dtype) for v in (alphas, sigmas))
            eps = (x - a_ts * D(x, taus[idx])) / s_ts
            return (x - float(sch.sigma(t0)) * eps) / float(sch.alpha(t0))

        return FunctionDenoiser(sch, shifted), own
