"""Solver interface, per-sample noise, NFE counting and the generic sampling loop.

A solver advances particles from time ``s`` to a less noisy time ``t`` with
``step(D, x, state, s, t, noise) -> (x, state)``; multistep history lives in ``state``
(a dict whose tensors have the particle axis first, so population methods can index it
with :func:`select_state`). Every solver stores its latest data prediction in
``state["x0"]`` for diagnostics.

Solvers that need the whole grid or a calibration pass (T-Stitch, DC-Solver, S³) do it in
:meth:`Solver.prepare`, which :func:`sample` calls once before the loop; code that drives
:meth:`Solver.step` itself must call ``grid = solver.prepare(D, grid, x)`` first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diffinv.diffusion.denoisers import Denoiser
from diffinv.diffusion.schedule import VPSchedule
from diffinv.errors import ConfigError

State = dict[str, Any]


def derive_seed(*entropy: int) -> int:
    """A 63-bit seed from a tuple of integers (numpy ``SeedSequence``): independent streams per tuple."""
    return int(np.random.SeedSequence([int(e) for e in entropy]).generate_state(1, np.uint64)[0] >> 1)


class PerSampleNoise:
    """Gaussian noise drawn from one generator per particle, so draws do not depend on the batch.

    Particle ``i`` always receives the same stream for a given ``seeds[i]``, whether it
    is sampled alone or in a batch of any size (cf. EDM's per-sample generators).
    """

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu") -> None:
        self.seeds = [int(s) for s in seeds]
        self.generators = [torch.Generator().manual_seed(s) for s in self.seeds]
        self.device = torch.device(device)

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
        """(n_particles, *shape) standard normal draws."""
        draws = [torch.randn(tuple(shape), generator=g, dtype=dtype) for g in self.generators]
        return torch.stack(draws).to(self.device)

    def select(self, index: Tensor) -> PerSampleNoise:
        """Noise for a re-indexed population (children get fresh seeds derived from their parent's)."""
        idx = index.tolist()
        child_seeds = [int(torch.randint(0, 2**62, (1,), generator=self.generators[i]).item()) for i in idx]
        return PerSampleNoise(child_seeds, self.device)


class CountingDenoiser:
    """Wraps a denoiser and counts network function evaluations (per batch call)."""

    def __init__(self, denoiser: Denoiser) -> None:
        self.denoiser = denoiser
        self.schedule = denoiser.schedule
        self.nfe = 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.nfe += 1
        return self.denoiser(x, t)


class Solver:
    """Base class of solver plug-ins: subclasses implement :meth:`step`.

    Class attributes: ``nfe_per_step`` (denoiser calls per step), ``stochastic``
    (whether ``step`` consumes noise), ``cite``.
    """

    nfe_per_step: int = 1
    stochastic: bool = False
    cite: str = ""

    def __init__(self, schedule: VPSchedule) -> None:
        self.schedule = schedule

    def init_state(self) -> State:
        """The empty multistep history."""
        return {}

    def prepare(self, D: Denoiser, grid: Tensor, x: Tensor) -> Tensor:
        """Hook run once before sampling ``x`` over ``grid``; returns the grid to integrate on.

        The default does nothing. Grid-aware or calibrated solvers record the grid, fit or
        load their parameters here, and may return a searched grid with the same endpoints
        and number of steps.
        """
        return grid

    def step(
        self, D: Denoiser, x: Tensor, state: State, s: Tensor, t: Tensor, noise: PerSampleNoise | None = None
    ) -> tuple[Tensor, State]:
        """Advance ``x`` from time ``s`` to time ``t < s``."""
        raise NotImplementedError

    def lam(self, t: Tensor | float) -> float:
        """λ_t as a Python float, memoised like :meth:`coefficients`."""
        memo = self.__dict__.setdefault("_lam_memo", {})
        key = float(t)
        if key not in memo:
            memo[key] = float(self.schedule.lam(t))
        return memo[key]

    def coefficients(self, s: Tensor | float, t: Tensor | float) -> tuple[float, float, float, float, float]:
        """(α_s, σ_s, α_t, σ_t, h = λ_t − λ_s) as Python floats (float64 algebra).

        Memoised per (s, t): the schedule's scalar tensor algebra otherwise costs more host
        time per step than a small network's kernel launches on a GPU (measured).
        """
        memo = self.__dict__.setdefault("_coefficient_memo", {})
        key = (float(s), float(t))
        if key not in memo:
            sch = self.schedule
            memo[key] = (
                float(sch.alpha(s)),
                float(sch.sigma(s)),
                float(sch.alpha(t)),
                float(sch.sigma(t)),
                float(sch.lam(t) - sch.lam(s)),
            )
        return memo[key]


def _time(t: Tensor | float, x: Tensor) -> Tensor:
    return torch.as_tensor(t, dtype=torch.float64).expand(x.shape[0])


def denoise(D: Denoiser, x: Tensor, t: Tensor | float) -> Tensor:
    """``D(x, t)`` with ``t`` broadcast to the batch."""
    return D(x, _time(t, x))


def select_state(state: State, index: Tensor) -> State:
    """Re-index the particle axis of every tensor in a solver state."""
    return {k: (v[index] if isinstance(v, Tensor) and v.ndim > 0 else v) for k, v in state.items()}


@dataclass
class StepInfo:
    """What a callback sees after each step."""

    index: int
    t: float
    x: Tensor
    x0: Tensor | None


def sample(
    solver: Solver,
    D: Denoiser,
    x: Tensor,
    grid: Tensor,
    noise: PerSampleNoise | None = None,
    callback: Callable[[StepInfo], None] | None = None,
) -> Tensor:
    """Integrate from ``grid[0]`` to ``grid[-1]`` with ``solver`` over denoiser ``D``.

    Runs :meth:`Solver.prepare` (which may return a searched grid), then :func:`integrate`.
    """
    return integrate(solver, D, x, solver.prepare(D, grid, x), noise, callback)


def integrate(
    solver: Solver,
    D: Denoiser,
    x: Tensor,
    grid: Tensor,
    noise: PerSampleNoise | None = None,
    callback: Callable[[StepInfo], Denoiser | None] | None = None,
) -> Tensor:
    """The step loop of :func:`sample` on a prepared solver.

    ``callback`` sees every step; a denoiser it returns replaces ``D`` from the next step on.
    """
    if solver.stochastic and noise is None:
        raise ConfigError(f"solver {type(solver).__name__} is stochastic: pass noise=PerSampleNoise(seeds)")
    state = solver.init_state()
    for i in range(len(grid) - 1):
        x, state = solver.step(D, x, state, grid[i], grid[i + 1], noise)
        new = callback(StepInfo(i, float(grid[i + 1]), x, state.get("x0"))) if callback is not None else None
        if new is not None:
            D = new  # the callback changed the observation (active acquisition)
    return x


def push_history(state: State, new: State, depth: int) -> State:
    """Shift multistep history by one entry, keeping ``depth`` entries.

    A tensor ``new[k]`` becomes ``k`` and the old ``k``, ``k_1``, ... become ``k_1``,
    ``k_2``, ... (particle axis first, so :func:`select_state` re-indexes them); a tuple
    ``new[k]`` (per-entry scalars shared by all particles, e.g. ``lam``, ``time``) is
    prepended to ``state[k]``. Keys of ``state`` not in ``new`` are dropped.
    """
    out: State = {}
    for k, v in new.items():
        if isinstance(v, tuple):
            out[k] = (v + tuple(state.get(k, ())))[:depth]
            continue
        names = [k] + [f"{k}_{j}" for j in range(1, depth)]
        for j in range(depth - 1, 0, -1):
            if names[j - 1] in state:
                out[names[j]] = state[names[j - 1]]
        out[k] = v
    return out


def history(state: State, key: str) -> list[Tensor]:
    """The stored tensors of ``key``, newest first (see :func:`push_history`)."""
    out = []
    while (name := key if not out else f"{key}_{len(out)}") in state:
        out.append(state[name])
    return out


class FunctionDenoiser:
    """A denoiser given as a function of (x, t), carrying the schedule of the one it wraps."""

    def __init__(self, schedule: VPSchedule, fn: Callable[[Tensor, Tensor], Tensor]) -> None:
        self.schedule = schedule
        self.fn = fn

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        return self.fn(x, t)


class WrappedSolver(Solver):
    """Base class of solvers that run a named base solver on a transformed denoiser.

    Subclasses implement :meth:`wrap`, which returns the transformed denoiser for one step
    and their own state (keys starting with ``prefix``, kept apart from the base state).
    """

    prefix: str = "wrap_"

    def __init__(
        self, schedule: VPSchedule, base: str = "dpmpp_2m", base_options: dict[str, Any] | None = None
    ) -> None:
        super().__init__(schedule)
        if not isinstance(base_options or {}, dict):
            raise ConfigError(f"{type(self).__name__}: base_options must be a mapping, got {base_options!r}")
        self.base = make_solver(base, schedule, **(base_options or {}))
        self.stochastic = self.base.stochastic
        self.nfe_per_step = self.base.nfe_per_step

    def prepare(self, D: Denoiser, grid: Tensor, x: Tensor) -> Tensor:
        return self.base.prepare(D, grid, x)

    def wrap(self, D: Denoiser, own: State, s: Tensor) -> tuple[Denoiser, State]:
        """The denoiser the base solver sees on the step from ``s``, and the new own state."""
        raise NotImplementedError

    def step(
        self, D: Denoiser, x: Tensor, state: State, s: Tensor, t: Tensor, noise: PerSampleNoise | None = None
    ) -> tuple[Tensor, State]:
        own = {k: v for k, v in state.items() if k.startswith(self.prefix)}
        inner = {k: v for k, v in state.items() if not k.startswith(self.prefix)}
        wrapped, own = self.wrap(D, own, s)
        x, inner = self.base.step(wrapped, x, inner, s, t, noise)
        return x, {**inner, **own}


def make_solver(name: str, schedule: VPSchedule, **options: Any) -> Solver:
    """Instantiate the solver plug-in ``name`` with ``options``; unknown options are an error."""
    from diffinv.plugins import load

    cls = load("solver", name)
    try:
        return cls(schedule, **options)
    except TypeError as exc:
        raise ConfigError(f"solver {name!r}: bad options {sorted(options)} ({exc})") from exc
