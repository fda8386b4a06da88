"""Sequential Monte Carlo over solver steps: a twisted bootstrap filter and MCGdiff."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffinv.diffusion.denoisers import Denoiser
from diffinv.errors import ConfigError
from diffinv.operators.base import LinearOperator
from diffinv.operators.svd import as_svd
from diffinv.search.base import (
    CountingMemo,
    PopulationNoise,
    SearchMethod,
    SearchResult,
    effective_sample_size,
    pick_per_run,
    reindex_tracker,
    systematic_resample,
)
from diffinv.search.rewards import Reward
from diffinv.solvers.base import PerSampleNoise, Solver, StepInfo, denoise, select_state


class SMC(SearchMethod):
    """Particle filter on the solver's stochastic kernel, twisted by log g_t = κ_t r(x̂0(x_t)).

    Target p(x0) exp(r(x0)); with the data-consistency reward that is the posterior. The
    tempering κ_t = ν²/(ν² + γ σ_t²/α_t²), ν = max(σ_y, 1e-3), inflates the variance of
    a Gaussian likelihood by the denoiser's uncertainty as in SDA/TDS (Wu et al. 2023,
    TDS Alg. 1 without the twisted proposal); κ → 1 at the data end, so the weights are
    consistent whatever γ. Proposal = the solver's kernel (use a stochastic prior kernel
    such as ``ddpm``); weights are computed one step late from the x0 the next step
    produces, which selects (parent, child) pairs by the parent's weight at no extra NFE.
    """

    cite = "Wu et al. 2023, TDS Alg. 1 (bootstrap form)"
    population = True

    def __init__(
        self,
        operator: LinearOperator | None = None,
        y: Tensor | None = None,
        reward: str | Reward | None = None,
        particles: int = 16,
        ess_threshold: float = 0.5,
        gamma: float = 1.0,
        **options,
    ) -> None:
        super().__init__(operator, y, reward, **options)
        if particles < 1 or not 0 <= ess_threshold <= 1:
            raise ConfigError("search smc: need particles >= 1 and 0 <= ess_threshold <= 1")
        self.particles, self.ess_threshold, self.gamma = int(particles), float(ess_threshold), float(gamma)
        self.nu = max(operator.noise_std if operator is not None else 1.0, 1e-3)

    @property
    def particles_per_run(self) -> int:
        return self.particles

    def run(
        self, solver: Solver, D: Denoiser, x_T: Tensor, grid: Tensor, noise: PerSampleNoise
    ) -> SearchResult:
        if not solver.stochastic:
            raise ConfigError(
                "search smc: needs a stochastic solver (e.g. ddpm) so that resampled particles diverge"
            )
        runs, n = self.runs(x_T), self.particles
        counter, tracker = CountingMemo(D), self.tracker(grid)
        sch = counter.schedule
        x, state, noise = x_T, solver.init_state(), PopulationNoise.like(noise, n)
        log_w = torch.zeros(runs, n, dtype=torch.float64)
        prev = torch.zeros(runs * n, dtype=torch.float64)
        ess = torch.full((runs,), float(n), dtype=torch.float64)
        for i in range(len(grid) - 1):
            x, state = solver.step(counter, x, state, grid[i], grid[i + 1], noise)
            tracker(StepInfo(i, float(grid[i + 1]), x, state["x0"]))
            kappa = self.nu**2 / (
                self.nu**2 + self.gamma * float(sch.sigma(grid[i]) / sch.alpha(grid[i])) ** 2
            )
            logg = kappa * self.reward(state["x0"]).to(torch.float64)
            if i == len(grid) - 2:  # the last child is the sample: weight it by the exact target potential
                logg_final = self.reward(x).to(torch.float64)
                log_w += (logg_final - prev).reshape(runs, n)
                break
            log_w += (logg - prev).reshape(runs, n)
            prev = logg
            ess = effective_sample_size(log_w)
            low = ess < self.ess_threshold * n  # each run resamples on its own ESS
            if bool(low.any()):
                idx = systematic_resample(log_w, noise.generators, low)
                x, state, prev = x[idx], select_state(state, idx), prev[idx]
                reindex_tracker(tracker, idx)
                log_w[low] = 0.0
        ess = effective_sample_size(log_w)
        pick = pick_per_run(log_w, noise.generators)
        reindex_tracker(tracker, pick)
        return self.result(x[pick], counter.nfe, tracker, ess)


class MCGdiff(SearchMethod):
    """MCGdiff: SMC in the operator's SVD coordinates with a locally optimal (Kalman) proposal.

    Cardoso, Janati, Le Corff & Moulines 2024 (ICLR), Alg. 1 for linear-Gaussian
    problems y = A x + σ_y n. Observed spectral coordinates carry the potential
    g_t(x_t) = N(α_t ȳ_i; x̄_{t,i}, σ_t² + α_t² σ_y²/s_i²), which equals the likelihood at
    the data end; the DDIM(η) kernel N(m, c²) (η = 1: DDPM) times g_t is sampled exactly, particles are
    weighted by its normaliser over g_s and resampled systematically when the ESS falls
    below ``ess_threshold``·N (resampling at every step, as the paper does, collapses the
    genealogy over 100 steps). Needs an
    SVD operator and the *prior* denoiser (guidance ``none``); it uses the DDIM(η) kernel
    of the solver's schedule rather than the solver's own update (it needs its mean and
    variance). The kernel's variance adds the x0 uncertainty (a_t − ·)² Var(x0|x_s) with
    Var(x0|x_s) = v σ_s²/(α_s² v + σ_s²) for data of variance v = ``x0_var`` (Bao et al.
    2022, Analytic-DPM, isotropic form): exact for Gaussian components of covariance v I,
    where plain DDPM loses 20% of the variance at 50 steps; ``x0_var=0`` is plain DDIM(η).
    """

    cite = "Cardoso et al. 2024, MCGdiff Alg. 1"
    population = True

    def __init__(
        self,
        operator: LinearOperator | None = None,
        y: Tensor | None = None,
        reward: str | Reward | None = None,
        particles: int = 64,
        eta: float = 1.0,
        x0_var: float = 1.0,
        ess_threshold: float = 0.5,
        **options,
    ) -> None:
        super().__init__(operator, y, reward, **options)
        if not 0 <= ess_threshold <= 1:
            raise ConfigError(f"search mcgdiff: ess_threshold must lie in [0, 1], got {ess_threshold}")
        self.ess_threshold = float(ess_threshold)
        if not 0 < eta <= 1:
            raise ConfigError(f"search mcgdiff: eta must lie in (0, 1], got {eta}")
        if x0_var < 0:
            raise ConfigError(f"search mcgdiff: x0_var must be >= 0, got {x0_var}")
        self.eta, self.x0_var = float(eta), float(x0_var)
        if operator is None or y is None:
            raise ConfigError("search mcgdiff: needs an operator with an SVD and y")
        if particles < 1:
            raise ConfigError("search mcgdiff: particles must be >= 1")
        self.svd = as_svd(operator)
        self.particles = int(particles)
        self.s = self.svd.singular_values.to(y.device)
        self.y_bar = self.svd.spectral_y(y)
        self.obs = self.s > 0
        sy = self.svd.noise_std
        self.level2 = torch.where(
            self.obs,
            (sy / torch.where(self.obs, self.s, torch.ones_like(self.s))) ** 2,
            torch.zeros_like(self.s),
        )

    @property
    def particles_per_run(self) -> int:
        return self.particles

    def _log_potential(self, xb: Tensor, a: float, sig: float) -> Tensor:
        """Σ_i log N(α ȳ_i; x̄_i, σ² + α² σ_y²/s_i²) over observed coordinates, per particle."""
        var = sig**2 + a**2 * self.level2
        lp = -0.5 * ((a * self.y_bar - xb) ** 2 / var + torch.log(2 * math.pi * var))
        return torch.where(self.obs, lp, torch.zeros_like(lp)).reshape(xb.shape[0], -1).sum(1)

    def run(
        self, solver: Solver, D: Denoiser, x_T: Tensor, grid: Tensor, noise: PerSampleNoise
    ) -> SearchResult:
        runs, n = self.runs(x_T), self.particles
        counter, tracker = CountingMemo(D), self.tracker(grid)
        sch = counter.schedule
        x, noise = x_T, PopulationNoise.like(noise, n)
        log_w = torch.zeros(runs, n, dtype=torch.float64)
        ess = min_ess = torch.full((runs,), float(n), dtype=torch.float64)
        for i in range(len(grid) - 1):
            s, t = grid[i], grid[i + 1]
            a_s, sig_s, a_t, sig_t = (
                float(v) for v in (sch.alpha(s), sch.sigma(s), sch.alpha(t), sch.sigma(t))
            )
            x0 = denoise(counter, x, s)
            c2 = (
                self.eta**2 * (sig_t / sig_s) ** 2 * max(0.0, 1 - (a_s / a_t) ** 2)
            )  # DDIM Eq. 16 (η = 1: DDPM)
            keep = math.sqrt(max(0.0, sig_t**2 - c2)) / sig_s
            m = a_t * x0 + keep * (x - a_s * x0)
            r2 = (
                self.x0_var * sig_s**2 / (a_s**2 * self.x0_var + sig_s**2)
            )  # Var(x0 | x_s) of N(μ, x0_var I) data
            c2 = c2 + (a_t - keep * a_s) ** 2 * r2
            mb, xb = self.svd.V_T(m), self.svd.V_T(x)
            v = sig_t**2 + a_t**2 * self.level2
            target = a_t * self.y_bar
            log_norm = -0.5 * ((target - mb) ** 2 / (c2 + v) + torch.log(2 * math.pi * (c2 + v)))
            log_norm = (
                torch.where(self.obs, log_norm, torch.zeros_like(log_norm)).reshape(x.shape[0], -1).sum(1)
            )
            if i > 0:  # x_T comes from p_T alone; later particles carry the potential g_s
                log_norm = log_norm - self._log_potential(xb, a_s, sig_s)
            log_w = log_w + log_norm.to(device="cpu", dtype=torch.float64).reshape(runs, n)
            ess = effective_sample_size(log_w)
            min_ess = torch.minimum(min_ess, ess)
            low = ess < self.ess_threshold * n  # each run resamples on its own ESS
            if bool(low.any()):
                idx = systematic_resample(log_w, noise.generators, low)
                mb, log_w = mb[idx], torch.where(low[:, None], torch.zeros_like(log_w), log_w)
                reindex_tracker(tracker, idx)
                x0 = x0[idx]
            tracker(StepInfo(i, float(t), x, x0))
            post_var = torch.where(self.obs, c2 * v / (c2 + v), torch.full_like(v, c2))
            post_mean = torch.where(self.obs, (mb * v + target * c2) / (c2 + v), mb)
            z = self.svd.V_T(noise.randn(x.shape[1:], x.dtype))
            x = self.svd.V(post_mean + post_var.sqrt() * z).to(
                x.dtype
            )  # float64 spectral algebra, particles keep their dtype
        ess = effective_sample_size(log_w)
        pick = pick_per_run(log_w, noise.generators)
        reindex_tracker(tracker, pick)
        return self.result(x[pick], counter.nfe, tracker, ess, min_ess=min_ess)
