"""Search interface: population and search methods that drive a solver's step kernel.

``SearchMethod(operator, y, reward=..., **options).run(solver, D, x_T, grid, noise)``
returns a :class:`SearchResult` with one sample per *run*. ``x_T`` holds
``runs × particles_per_run`` rows: consecutive blocks of ``particles_per_run`` rows form
one independent population. NFE counts every per-particle denoiser evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from diffinv.diffusion.denoisers import Denoiser
from diffinv.errors import ConfigError
from diffinv.operators.base import LinearOperator
from diffinv.search.rewards import Reward, load_reward
from diffinv.solvers.base import PerSampleNoise, Solver, derive_seed
from diffinv.uncertainty import HallucinationScore


@dataclass
class SearchResult:
    """Samples and diagnostics of a search: one sample per run."""

    x: Tensor  # (runs, ...)
    nfe: int  # per-particle denoiser evaluations, all runs together
    reward: Tensor  # (runs,) reward of each sample
    ess: Tensor | None = None  # (runs,) effective sample size (population methods)
    diagnostics: dict[str, Tensor] = field(default_factory=dict)

    @property
    def nfe_per_sample(self) -> float:
        """Evaluations per returned sample."""
        return self.nfe / max(1, self.x.shape[0])


class CountingMemo:
    """Denoiser wrapper counting per-particle evaluations, with one primed result replayed for free.

    Search methods often already know D(x, s) for the exact tensor the solver will
    denoise next (the value of the chosen candidate); :meth:`prime` stores it so that the
    solver's own call costs nothing (identity of ``x`` and equality of ``t`` are checked).
    A solver that rebuilds the denoiser it was given (T-Stitch's small prior, DDRM's prior
    under its guidance) gets a memo from :meth:`rewrap` that adds to the same count.
    """

    def __init__(self, denoiser: Denoiser, tally: list[int] | None = None) -> None:
        self.denoiser = denoiser
        self.schedule = denoiser.schedule
        self._tally = [0] if tally is None else tally
        self._primed: tuple[Tensor, float, Tensor] | None = None

    @property
    def nfe(self) -> int:
        """Per-particle evaluations so far, by this memo and those rebuilt from it."""
        return self._tally[0]

    def rewrap(self, inner: Denoiser) -> CountingMemo:
        """A memo around ``inner`` counting into the same total (the primed value is D's, not kept)."""
        return CountingMemo(inner, self._tally)

    def prime(self, x: Tensor, t: float, x0: Tensor) -> None:
        """Remember that D(x, t) = x0."""
        self._primed = (x, float(t), x0)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        if self._primed is not None and x is self._primed[0] and bool((t == self._primed[1]).all()):
            return self._primed[2]
        self._tally[0] += x.shape[0]
        return self.denoiser(x, t)


class PopulationNoise:
    """Noise for ``runs`` populations of ``n`` particles, one generator per population.

    Row ``r·n + j`` is slot j of population r; each call draws (n, *shape) from the
    population's own generator (in blocks of ``block`` calls, one generator call per
    block), so a population's draws do not depend on the other populations in the batch.
    Resampling inside a population keeps the slots, hence :meth:`select` returns the same
    object. The same generators drive resampling (:func:`systematic_resample`).
    """

    def __init__(self, seeds: list[int], n: int, device: torch.device | str = "cpu", block: int = 16) -> None:
        self.n, self.block, self.device = int(n), int(block), torch.device(device)
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self._cache: dict[tuple, tuple[Tensor, int]] = {}

    @classmethod
    def like(cls, noise: PerSampleNoise, n: int) -> PopulationNoise:
        """Populations of n consecutive particles of ``noise``, each seeded from its first particle's seed."""
        return cls(noise.seeds[::n], n, noise.device)

    def __len__(self) -> int:
        return self.n * len(self.generators)

    def randn(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Tensor:
        """(runs·n, *shape) standard normal draws."""
        key = (tuple(shape), dtype)
        buf, used = self._cache.get(key, (None, self.block))
        if used == self.block:
            buf = torch.stack(
                [
                    torch.randn((self.block, self.n) + tuple(shape), generator=g, dtype=dtype)
                    for g in self.generators
                ],
                1,
            )
            used = 0
        self._cache[key] = (buf, used + 1)
        return buf[used].reshape((-1,) + tuple(shape)).to(self.device)

    def select(self, index: Tensor) -> PopulationNoise:
        """Resampling within populations keeps the slots: the same streams."""
        return self


def host_reward(reward: Reward) -> Reward:
    """``reward`` with float64 values on the CPU, where searches keep weights, indices and generators."""

    def on_host(x: Tensor) -> Tensor:
        return reward(x).to(device="cpu", dtype=torch.float64)

    return on_host


def shared_noise(noise: PerSampleNoise, generators: list[torch.Generator]) -> PerSampleNoise:
    """A noise source drawing from the given generator objects (streams are shared, not copied)."""
    out = PerSampleNoise([0] * len(generators), noise.device)
    out.generators = generators
    return out


def expand_noise(noise: PerSampleNoise, m: int) -> PerSampleNoise:
    """Noise for m candidates per particle: candidate 0 uses the particle's own stream, the others fresh ones.

    Rows are ordered (particle, candidate), matching ``repeat_interleave(m)``; with m = 1
    the draws equal the particle's own, so a search with one candidate reproduces its base sampler.
    """
    gens = []
    for seed, gen in zip(noise.seeds, noise.generators):
        gens.append(gen)
        for j in range(1, m):
            gens.append(torch.Generator().manual_seed(derive_seed(seed, j)))
    return shared_noise(noise, gens)


def effective_sample_size(log_w: Tensor) -> Tensor:
    """ESS = (Σw)²/Σw² per row of log-weights (Kong 1992)."""
    w = torch.softmax(log_w, dim=-1)
    return 1.0 / (w**2).sum(-1)


def systematic_resample(log_w: Tensor, generators: list[torch.Generator], rows: Tensor) -> Tensor:
    """Flat indices (runs·N,) of a systematic resampling in each row of (runs, N) log-weights (Kitagawa 1996).

    Only the rows where the boolean ``rows`` is set are resampled (the others keep their
    particles); each draws its uniform from its own generator, so a row's result does not
    depend on the other rows.
    """
    runs, n = log_w.shape
    cdf = torch.softmax(log_w.to(torch.float64), dim=-1).cumsum(-1)
    cdf[:, -1] = 1.0
    u0 = torch.tensor(
        [
            [float(torch.rand((), generator=g, dtype=torch.float64)) if w else 0.0]
            for g, w in zip(generators, rows.tolist())
        ],
        dtype=torch.float64,
    )
    u = (u0 + torch.arange(n, dtype=torch.float64)) / n
    idx = torch.searchsorted(cdf, u).clamp_max(n - 1)
    idx = torch.where(rows[:, None], idx, torch.arange(n)[None])
    return (idx + n * torch.arange(runs)[:, None]).reshape(-1)


def pick_per_run(log_w: Tensor, generators: list[torch.Generator]) -> Tensor:
    """Flat index of one particle per row of (runs, N) log-weights, drawn ∝ exp(log_w) (row's generator)."""
    probs = torch.softmax(log_w, -1)
    n = log_w.shape[1]
    return torch.stack(
        [torch.multinomial(p, 1, generator=g)[0] for p, g in zip(probs, generators)]
    ) + n * torch.arange(log_w.shape[0])


def best_per_run(values: Tensor, per_run: int) -> Tensor:
    """Flat index of the highest value in each block of ``per_run`` rows."""
    v = values.reshape(-1, per_run)
    return v.argmax(1) + per_run * torch.arange(v.shape[0])


class SearchMethod:
    """Base class of search plug-ins; subclasses implement :meth:`run`.

    ``particles_per_run`` is how many rows of ``x_T`` one run consumes. ``reward`` is a
    callable, ``"data_consistency"`` (default) or ``"module:function"``.
    """

    cite: str = ""
    population: bool = False

    def __init__(
        self,
        operator: LinearOperator | None = None,
        y: Tensor | None = None,
        reward: str | Reward | None = None,
        hallucination_steps: int = 5,
        seed: int = 0,
    ) -> None:
        self.operator = operator
        self.y = y
        self.reward = host_reward(load_reward(reward, operator, y))
        self.hallucination_steps = int(hallucination_steps)
        self.seed = int(seed)

    @property
    def particles_per_run(self) -> int:
        """Rows of ``x_T`` per run."""
        return 1

    def runs(self, x_T: Tensor) -> int:
        """Number of runs in ``x_T``; an error unless it is a whole multiple of ``particles_per_run``."""
        n = self.particles_per_run
        if x_T.shape[0] % n:
            raise ConfigError(
                f"search {type(self).__name__}: x_T has {x_T.shape[0]} rows, "
                f"not a multiple of {n} particles per run"
            )
        return x_T.shape[0] // n

    def tracker(self, grid: Tensor) -> HallucinationScore:
        """The hallucination-score callback over the last steps of ``grid``."""
        return HallucinationScore(len(grid) - 1, self.hallucination_steps)

    def run(
        self, solver: Solver, D: Denoiser, x_T: Tensor, grid: Tensor, noise: PerSampleNoise
    ) -> SearchResult:
        """Search from ``x_T`` over ``grid`` with ``solver``'s kernel on denoiser ``D``."""
        raise NotImplementedError

    def result(
        self,
        x: Tensor,
        nfe: int,
        tracker: HallucinationScore | None,
        ess: Tensor | None = None,
        **extra: Tensor,
    ) -> SearchResult:
        """Package samples with reward, hallucination score, data residual and ESS."""
        diagnostics = dict(extra)
        if tracker is not None:
            diagnostics["hallucination_score"] = tracker.score()
        if self.operator is not None and self.y is not None:
            diagnostics["residual"] = self.operator.residual(x, self.y)
        if ess is not None:
            diagnostics["ess"] = ess
        return SearchResult(x, int(nfe), self.reward(x), ess, diagnostics)


def reindex_tracker(tracker: HallucinationScore, index: Tensor) -> None:
    """Follow a resampling or selection in the stored x0 predictions (genealogy of the survivors)."""
    tracker.predictions = [p[index] for p in tracker.predictions]


def make_search(name: str, operator: LinearOperator | None, y: Tensor | None, **options: Any) -> SearchMethod:
    """Instantiate the search plug-in ``name``; unknown options are an error."""
    from diffinv.plugins import load

    cls = load("search", name)
    try:
        return cls(operator, y, **options)
    except TypeError as exc:
        raise ConfigError(f"search {name!r}: bad options {sorted(options)} ({exc})") from exc
