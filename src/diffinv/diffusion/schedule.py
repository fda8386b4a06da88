"""Variance-preserving noise schedules and timestep grids.

Notation (``reference/samplers.md`` §0): x_t = α_t x0 + σ_t ε with α_t² + σ_t² = 1,
λ_t = log(α_t / σ_t), and t ∈ [t_min, t_max] ⊂ (0, 1] runs from data (t≈0) to noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from diffinv.errors import ConfigError

ScheduleKind = Literal["cosine", "linear"]
GridKind = Literal["time_uniform", "logsnr", "karras"]


@dataclass(frozen=True)
class VPSchedule:
    """VP schedule: cosine (Nichol & Dhariwal 2021, Eq. 17) or linear-β (Ho et al. 2020).

    Parameters
    ----------
    kind : ``"cosine"`` or ``"linear"``.
    beta_min, beta_max : linear-β endpoints of the continuous-time β(t) (Song et al. 2021).
    cosine_s : cosine offset s.
    t_min, t_max : the time interval sampled; ``t_max < 1`` keeps λ finite for cosine.
    """

    kind: ScheduleKind = "cosine"
    beta_min: float = 0.1
    beta_max: float = 20.0
    cosine_s: float = 0.008
    t_min: float = 1e-3
    t_max: float = 0.999

    def __post_init__(self) -> None:
        if self.kind not in ("cosine", "linear"):
            raise ConfigError(f"schedule.kind: unknown {self.kind!r} (fix: use 'cosine' or 'linear')")
        if not 0.0 < self.t_min < self.t_max <= 1.0:
            raise ConfigError("schedule: need 0 < t_min < t_max <= 1")

    # -- α, σ, λ --------------------------------------------------------------------
    def log_alpha(self, t: Tensor | float) -> Tensor:
        """log α_t."""
        t = torch.as_tensor(t, dtype=torch.float64)
        if self.kind == "linear":
            return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min
        s = self.cosine_s
        f = torch.cos((t + s) / (1 + s) * math.pi / 2)
        return torch.log(f.clamp_min(1e-12)) - math.log(math.cos(s / (1 + s) * math.pi / 2))

    def alpha(self, t: Tensor | float) -> Tensor:
        """α_t (signal scale)."""
        return self.log_alpha(t).exp()

    def sigma(self, t: Tensor | float) -> Tensor:
        """σ_t = sqrt(1 - α_t²) (noise scale)."""
        return (-torch.expm1(2 * self.log_alpha(t))).clamp_min(0).sqrt()

    def lam(self, t: Tensor | float) -> Tensor:
        """λ_t = log(α_t/σ_t), half the log signal-to-noise ratio."""
        la = self.log_alpha(t)
        return la - 0.5 * torch.log(-torch.expm1(2 * la))

    def t_of_lambda(self, lam: Tensor | float) -> Tensor:
        """Inverse of :meth:`lam` (closed form for both kinds; DPM-Solver, Lu et al. 2022, App. D)."""
        lam = torch.as_tensor(lam, dtype=torch.float64)
        log_alpha = -0.5 * torch.nn.functional.softplus(-2 * lam)  # log α = -½ log(1 + e^{-2λ})
        if self.kind == "linear":
            db = self.beta_max - self.beta_min
            return (-self.beta_min + torch.sqrt(self.beta_min**2 - 4 * db * log_alpha)) / db
        s = self.cosine_s
        c0 = math.log(math.cos(s / (1 + s) * math.pi / 2))
        return 2 * (1 + s) / math.pi * torch.acos(torch.exp(log_alpha + c0)) - s

    # -- grids ----------------------------------------------------------------------
    def grid(
        self, steps: int, kind: GridKind = "logsnr", rho: float = 7.0, t_start: float | None = None
    ) -> Tensor:
        """Decreasing times t_0 = t_start (default t_max) > ... > t_steps = t_min (float64).

        ``time_uniform``: uniform in t; ``logsnr``: uniform in λ (DPM-Solver);
        ``karras``: uniform in σ̃^{1/ρ} with σ̃ = e^{-λ} (Karras et al. 2022, Eq. 5).
        ``t_start`` < t_max skips the noisiest steps, spending them nearer the data
        (Come-Closer-Diffuse-Faster, Chung, Sim & Ye 2022, Sec. 3).
        """
        if steps < 1:
            raise ConfigError(f"steps: must be >= 1, got {steps}")
        t_hi = self.t_max if t_start is None else float(t_start)
        if not self.t_min < t_hi <= self.t_max:
            raise ConfigError(
                f"t_start: must lie in ({self.t_min:g}, {self.t_max:g}], got {t_start} "
                "(fix: a later start, e.g. 0.5, or null for the full grid)"
            )
        u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
        if kind == "time_uniform":
            return t_hi + (self.t_min - t_hi) * u
        lam_lo, lam_hi = self.lam(t_hi), self.lam(self.t_min)
        if kind == "logsnr":
            return self.t_of_lambda(lam_lo + (lam_hi - lam_lo) * u)
        if kind == "karras":
            smax, smin = torch.exp(-lam_lo) ** (1 / rho), torch.exp(-lam_hi) ** (1 / rho)
            sig = (smax + (smin - smax) * u) ** rho
            return self.t_of_lambda(-torch.log(sig))
        raise ConfigError(f"grid: unknown {kind!r} (fix: use time_uniform, logsnr or karras)")

    def add_noise(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = α_t x0 + σ_t ε, with ``t`` of shape (batch,)."""
        shape = (-1,) + (1,) * (x0.ndim - 1)
        a = self.alpha(t).to(x0.dtype).reshape(shape)
        s = self.sigma(t).to(x0.dtype).reshape(shape)
        return a * x0 + s * noise
