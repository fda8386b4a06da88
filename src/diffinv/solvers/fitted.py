"""Fitted linear multistep solver: per-step coefficients distilled from a fine reference in closed form."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from diffinv.diffusion.denoisers import Denoiser
from diffinv.diffusion.schedule import VPSchedule
from diffinv.errors import ConfigError
from diffinv.solvers.base import (
    FunctionDenoiser,
    PerSampleNoise,
    Solver,
    State,
    denoise,
    history,
    push_history,
    sample,
)
from diffinv.solvers.calibration import CalibrationCache, calibration_start, planned_grid
from diffinv.solvers.unipc import UniPC

# global warps u ↦ u^γ of the grid's λ-positions tried by default (γ = 1 keeps the grid); on
# the demo MRI prior the 10-step error is lowest below 1 (measured; see benchmarks/solvers_convergence.py)
WARPS = (1.0, 0.8, 0.7, 0.6, 0.5)


def least_squares(columns: list[Tensor], target: Tensor) -> list[float]:
    """argmin_c ‖Σ_j c_j columns_j − target‖² over all entries, via float64 normal equations.

    A ridge of 1e-12 · mean diagonal keeps the solve defined when columns are collinear.
    """
    flat = torch.stack([c.reshape(-1) for c in columns]).double()
    gram = flat @ flat.T
    rhs = flat @ target.reshape(-1).double()
    gram = gram + 1e-12 * gram.diagonal().mean() * torch.eye(
        len(columns), dtype=gram.dtype, device=gram.device
    )
    return [float(v) for v in torch.linalg.solve(gram, rhs)]


class FittedMultistep(Solver):
    """Linear multistep, fitted coefficients and nodes: x_{i+1} = a_i x_i + σ_{i+1} Σ_{j<k} c_ij D(x_{i−j}).

    Generalises D-ODE (Kim, Tang & Yu 2024, arXiv 2309.16421), which distils a many-step
    teacher into one parameter per step of a base solver: here each step is a free linear
    combination of the state and the last ``history`` data predictions (k = ``history``),
    the form of the exponential integrators (DDIM is k = 1 with a = σ_{i+1}/σ_i,
    c = α_{i+1}/σ_{i+1} − α_i/σ_i), and the nodes are searched as in S³ (Liu et al. 2023).

    Calibration, once per configuration, on ``calibration_size`` seeded draws:

    1. The teacher, third-order UniPC with ``reference_steps`` λ-uniform steps (rounded up
       to a multiple of the lattice), is kept at a λ-uniform lattice of max(``lattice``,
       4 × steps) intervals; the solver's nodes are lattice points.
    2. Fit: the k + 1 coefficients of step i are the exact least-squares fit, over all
       entries of the batch, of the teacher's state at t_{i+1}, taken on the solver's own
       path (steps before i already fitted, as DC-Solver fits its ratios), so each step
       also corrects the error the earlier ones left. The fit's loss is the RMSE of the
       final state to the teacher's.
    3. Nodes: the grid's λ-positions warped u ↦ u^γ for each γ in ``warps`` (a warp that
       merges two nodes is skipped); the best start is improved by ``sweeps`` passes of
       coordinate search, moving one interior node by ±lattice/32 lattice points (halved
       each pass) and keeping moves that lower the loss.

    Costs the teacher run plus steps × (warps + 2 × steps × sweeps) batched NFE at most;
    the teacher's lattice states ((lattice + 1) × ``calibration_size`` draws) are held in
    memory. As for DC-Solver and S³ the calibration draws do not depend on the batch being
    sampled (a guided denoiser must broadcast its observation). The fit is cached in
    ``cache`` (JSON), or given as ``fit``
    (``{"coefficients": [[a, c_0, ...] per step], "times": [...] or null}``).
    """

    cite = "Kim et al. 2024, D-ODE (arXiv 2309.16421), generalised: k-term least-squares fit"

    def __init__(
        self,
        schedule: VPSchedule,
        history: int = 4,
        warps: list[float] | tuple[float, ...] = WARPS,
        fit: dict[str, Any] | None = None,
        cache: str | None = None,
        reference_steps: int = 500,
        lattice: int = 125,
        sweeps: int = 4,
        calibration_seed: int = 1,
        calibration_size: int = 32,
        tag: str = "",
    ) -> None:
        super().__init__(schedule)
        if history < 1:
            raise ConfigError(f"fitted_lms: history must be >= 1, got {history}")
        if not warps or any(float(g) <= 0 for g in warps):
            raise ConfigError(f"fitted_lms: warps must be positive exponents, got {warps}")
        self.depth = int(history)
        self.warps = tuple(float(g) for g in warps)
        self.fixed = fit
        self.cache = CalibrationCache(cache)
        if lattice < 2 or sweeps < 0:
            raise ConfigError(f"fitted_lms: need lattice >= 2 and sweeps >= 0, got {lattice} and {sweeps}")
        self.reference_steps = int(reference_steps)
        self.lattice = int(lattice)
        self.sweeps = int(sweeps)
        self.calibration_seed = int(calibration_seed)
        self.calibration_size = int(calibration_size)
        self.tag = str(tag)
        self.fitted: list[list[float]] | None = None

    def terms(self, x: Tensor, state: State, t: Tensor) -> list[Tensor]:
        """The state and σ_t × the newest-first data predictions of ``state`` (the fit's columns)."""
        sig_t = float(self.schedule.sigma(t))
        return [x] + [sig_t * m for m in history(state, "x0")]

    def step(
        self, D: Denoiser, x: Tensor, state: State, s: Tensor, t: Tensor, noise: PerSampleNoise | None = None
    ) -> tuple[Tensor, State]:
        if self.fitted is None:
            raise ConfigError("fitted_lms: call solver.prepare(D, grid, x) before stepping (sample() does)")
        index = int(state.get("step", 0))
        new = push_history(state, {"x0": denoise(D, x, s)}, self.depth)
        new["step"] = index + 1
        cols = self.terms(x, new, t)
        out = self.fitted[index][0] * cols[0]
        for c, col in zip(self.fitted[index][1:], cols[1:]):
            out = out + c * col
        return out, new

    def _use(self, fit: dict[str, Any], grid: Tensor) -> Tensor:
        steps = len(grid) - 1
        coefs = fit.get("coefficients")
        if coefs is None or len(coefs) != steps:
            raise ConfigError(f"fitted_lms fit: need 'coefficients' with one list per step ({steps})")
        for i, c in enumerate(coefs):
            if len(c) != 1 + min(i + 1, self.depth):
                raise ConfigError(
                    f"fitted_lms fit: step {i} needs {1 + min(i + 1, self.depth)} coefficients "
                    f"(history {self.depth}), got {len(c)}"
                )
        self.fitted = [[float(v) for v in c] for c in coefs]
        return planned_grid(fit.get("times"), grid, "fitted_lms fit")

    def prepare(self, D: Denoiser, grid: Tensor, x: Tensor) -> Tensor:
        if self.fixed is not None:
            return self._use(self.fixed, grid)
        found = self.cache.get_or_fit(
            lambda: self.calibrate(D, grid, x),
            "fitted_lms",
            grid,
            x,
            D,
            history=self.depth,
            warps=self.warps,
            reference_steps=self.reference_steps,
            lattice=self.lattice,
            sweeps=self.sweeps,
            seed=self.calibration_seed,
            size=self.calibration_size,
            tag=self.tag,
        )
        return self._use(found, grid)

    @staticmethod
    def node_indices(schedule: VPSchedule, grid: Tensor, gamma: float, lattice: int) -> list[int] | None:
        """Indices on a ``lattice``-interval λ-uniform lattice of the nodes of ``grid`` warped by
        ``gamma`` (``None`` where two nodes snap to the same index)."""
        lam = schedule.lam(grid)
        u = ((lam - lam[0]) / (lam[-1] - lam[0])).clamp(0, 1) ** gamma
        idx = torch.round(u * lattice).long().tolist()
        return idx if len(set(idx)) == len(idx) else None

    @torch.no_grad()
    def calibrate(self, D: Denoiser, grid: Tensor, like: Tensor) -> dict[str, Any]:
        """Teacher run on one calibration batch shaped like ``like``, best warp, then node search."""
        sch = self.schedule
        steps = len(grid) - 1
        lattice = max(self.lattice, 4 * steps)
        sub = max(1, math.ceil(self.reference_steps / lattice))
        lam0, lam1 = sch.lam(grid[0]), sch.lam(grid[-1])
        fine = sch.t_of_lambda(
            lam0 + (lam1 - lam0) * torch.linspace(0.0, 1.0, lattice * sub + 1, dtype=torch.float64)
        )
        fine[0], fine[-1] = grid[0], grid[-1]
        starts = {g: idx for g in self.warps if (idx := self.node_indices(sch, grid, g, lattice)) is not None}
        if not starts:
            raise ConfigError(
                f"fitted_lms: every warp {self.warps} puts two of the {steps} steps on one lattice node "
                "(fix: add 1.0 to warps)"
            )
        x = calibration_start(sch, like, float(grid[0]), self.calibration_seed, self.calibration_size)
        teacher = [x]

        def record(info: Any) -> None:
            if (info.index + 1) % sub == 0:
                teacher.append(info.x)

        sample(UniPC(sch, order=3), D, x, fine, callback=record)
        times = fine[::sub]

        def fit(idx: list[int]) -> tuple[float, list[list[float]]]:
            coefs, err = self.fit_path(D, x, times[idx], [teacher[i] for i in idx])
            return err, coefs

        (loss, coefs), warp, nodes = min(
            ((fit(idx), g, idx) for g, idx in starts.items()), key=lambda c: c[0][0]
        )
        warp_loss, move = loss, max(1, lattice // 32)
        for _ in range(self.sweeps):
            for k in range(1, steps):
                for sign in (-1, 1):
                    trial = list(nodes)
                    trial[k] += sign * move
                    if trial[k - 1] < trial[k] < trial[k + 1] and (found := fit(trial))[0] < loss:
                        (loss, coefs), nodes = found, trial
            move = max(1, move // 2)
        return {
            "coefficients": coefs,
            "times": [float(t) for t in times[nodes]],
            "warp": warp,
            "warp_loss": warp_loss,
            "loss": loss,
        }

    def fit_path(
        self, D: Denoiser, x: Tensor, times: Tensor, targets: list[Tensor]
    ) -> tuple[list[list[float]], float]:
        """Greedy on-path least-squares coefficients for ``times`` against the teacher states ``targets``."""
        self.fitted = []
        state = self.init_state()
        for i in range(len(times) - 1):
            m = denoise(D, x, times[i])
            probe = push_history(state, {"x0": m}, self.depth)
            self.fitted.append(least_squares(self.terms(x, probe, times[i + 1]), targets[i + 1]))
            x, state = self.step(
                FunctionDenoiser(self.schedule, lambda x_, t_, m=m: m), x, state, times[i], times[i + 1]
            )
        coefs, self.fitted = self.fitted, None
        err = float((x - targets[-1]).pow(2).mean().sqrt())
        return coefs, err if torch.isfinite(torch.tensor(err)) else float("inf")
