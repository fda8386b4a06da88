"""The posterior-sampling core shared by every stage.

A stage reduces each *case* (one slice, one volume chunk, one field) to a
:class:`Problem` (operator, observation, particle shape) and calls :func:`sample_case`
with a prior, a :class:`Method` (solver, guidance, optional search, named in the config)
and :class:`Sampling` settings. The core owns the step loop, the network precision, seeds,
NFE accounting, final data consistency and the per-sample diagnostics, and returns a typed
:class:`CaseSamples`. :func:`posterior_variables` turns samples into the store variables
every stage writes (samples, mean, std).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from diffinv.diffusion.denoisers import Denoiser
from diffinv.errors import ConfigError, DiffinvError
from diffinv.guidance import make_guidance
from diffinv.operators.base import LinearOperator, inner
from diffinv.search import make_search
from diffinv.solvers import PerSampleNoise, Solver, make_solver
from diffinv.solvers.base import StepInfo, derive_seed, integrate
from diffinv.uncertainty import HallucinationScore

Precision = Literal["fp32", "bf16", "fp16"]
AUTOCAST_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Method:
    """A solver plug-in, a guidance plug-in and optionally a search plug-in, with their options."""

    solver: str
    guidance: str
    search: str | None = None
    solver_options: Mapping[str, Any] = field(default_factory=dict)
    guidance_options: Mapping[str, Any] = field(default_factory=dict)
    search_options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, entry: Mapping[str, Any]) -> Method:
        """A method from a config entry ``{solver, guidance, search?, *_options}``."""
        return cls(
            entry["solver"],
            entry["guidance"],
            entry.get("search"),
            dict(entry.get("solver_options") or {}),
            dict(entry.get("guidance_options") or {}),
            dict(entry.get("search_options") or {}),
        )

    @property
    def name(self) -> str:
        """SOLVER-GUIDANCE, or SOLVER-GUIDANCE-SEARCH."""
        return "-".join([self.solver, self.guidance] + ([self.search] if self.search else []))

    def as_dict(self) -> dict[str, Any]:
        """The config entry (for provenance)."""
        out = {"solver": self.solver, "guidance": self.guidance}
        out.update(solver_options=dict(self.solver_options), guidance_options=dict(self.guidance_options))
        if self.search:
            out.update(search=self.search, search_options=dict(self.search_options))
        return out


@dataclass(frozen=True)
class Sampling:
    """How many samples, in which batches, over which grid, at which network precision."""

    samples: int
    batch_size: int
    steps: int
    grid: str = "logsnr"
    final_dc: bool = True
    hallucination_steps: int = 5
    precision: Precision = "fp32"
    allow_nonfinite: bool = False
    t_start: float | None = None  # first grid time (None: the schedule's t_max); see VPSchedule.grid

    @classmethod
    def from_config(cls, section: Mapping[str, Any], **overrides: Any) -> Sampling:
        """Settings from a validated ``sampling`` config section (other keys are ignored)."""
        keys = (
            "samples",
            "batch_size",
            "steps",
            "grid",
            "final_dc",
            "hallucination_steps",
            "precision",
            "allow_nonfinite",
            "t_start",
        )
        return cls(**{**{k: section[k] for k in keys if k in section}, **overrides})


@dataclass
class Problem:
    """One case's observation model: ``y ≈ operator.A(x)``, x with event ``shape``.

    ``y`` keeps a batch axis of 1, so that it broadcasts against any number of particles
    (calibrated solvers and searches evaluate batches of their own size).
    """

    operator: LinearOperator
    y: Tensor
    shape: tuple[int, ...]


@dataclass
class CaseSamples:
    """Posterior samples of one case and what it cost."""

    samples: Tensor  # (n, *shape), on the CPU
    nfe: float  # denoiser evaluations per posterior sample (population rows included)
    calibration_nfe: int  # evaluations spent fitting calibrated solvers (amortised by their cache)
    wall_time_s: float
    hallucination_score: Tensor  # (n,)
    relative_residual: Tensor  # (n,) ||y - A x|| / ||y||
    ess: Tensor | None = None  # (n,) population methods only
    x0: Tensor | None = None  # (n, *shape) last data prediction (plain solvers)


class RowCounter:
    """Counts denoiser evaluations per particle row (the NFE unit of every stage).

    :meth:`rewrap` gives a counter around another denoiser adding to the same total, so a
    solver that swaps the prior (T-Stitch's small model) is counted too.
    """

    def __init__(self, denoiser: Denoiser, tally: list[int] | None = None) -> None:
        self.denoiser = denoiser
        self.schedule = denoiser.schedule
        self._tally = [0] if tally is None else tally

    @property
    def rows(self) -> int:
        """Rows evaluated so far, by this counter and its rewraps."""
        return self._tally[0]

    def rewrap(self, inner: Denoiser) -> RowCounter:
        """A counter around ``inner`` adding to the same total."""
        return RowCounter(inner, self._tally)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self._tally[0] += int(x.shape[0])
        return self.denoiser(x, t)


def case_key(case_id: str) -> int:
    """A stable 63-bit integer of a case's identity (file and index, never its position)."""
    return int.from_bytes(hashlib.sha256(case_id.encode()).digest()[:8], "big") >> 1


@dataclass(frozen=True)
class CaseSeeds:
    """Seeds of one case: ``SeedSequence([seed, key, k])`` with ``key = case_key(case_id)``.

    k = 1 + j for posterior sample j, k = 0 for the case's own randomness (its
    undersampling mask). Results depend on the case's identity only: not on its position
    among the inputs, the batch size, or which job of a split run handles it.
    """

    seed: int
    key: int

    @classmethod
    def of(cls, seed: int, case_id: str) -> CaseSeeds:
        """The seeds of the case named ``case_id``."""
        return cls(int(seed), case_key(case_id))

    @property
    def mask(self) -> int:
        """Seed of the case's own randomness (its undersampling mask)."""
        return derive_seed(self.seed, self.key, 0)

    def samples(self, start: int, stop: int) -> list[int]:
        """Seeds of posterior samples ``start`` … ``stop - 1``."""
        return [derive_seed(self.seed, self.key, 1 + j) for j in range(start, stop)]


@contextlib.contextmanager
def network_precision(prior: Denoiser, precision: Precision) -> Iterator[None]:
    """Run the prior's network calls under autocast (``bf16``/``fp16``) for the duration.

    Only the network sees the lower precision: a :class:`NetworkDenoiser` converts its
    output back to the particles' dtype before the x0 algebra, and solvers, guidance and
    data consistency stay in float32/float64.
    """
    if precision == "fp32":
        yield
        return
    if not hasattr(prior, "autocast"):
        raise ConfigError(
            f"precision {precision!r}: the prior {type(prior).__name__} has no network (fix: use fp32)"
        )
    previous = prior.autocast
    prior.autocast = AUTOCAST_DTYPES[precision]
    try:
        yield
    finally:
        prior.autocast = previous


def network_dtype(prior: Denoiser) -> str:
    """The dtype of the prior's parameters (``float64`` for closed-form priors)."""
    params = getattr(prior, "parameters", None)
    first = next(iter(params()), None) if callable(params) else None
    return str(first.dtype).removeprefix("torch.") if first is not None else "float64"


def progress(total: int, desc: str) -> Any:
    """A progress bar over ``total`` cases on stderr (rate and time left; the rule's log under
    Snakemake); call ``update(1)`` after each case and ``close()`` at the end."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="case", mininterval=2.0, dynamic_ncols=True)


SEED_POLICY = (
    "numpy SeedSequence([seed, key, 1 + sample]) per posterior sample and SeedSequence([seed, key, 0]) "
    "for the case's own randomness (its mask), key = first 63 bits of SHA-256 of the case identity"
)


def sampling_provenance(
    record: Mapping[str, Any],
    prior: Denoiser,
    method: Method,
    sampling: Sampling,
    seed: int,
    device: str | torch.device,
    **fields: Any,
) -> dict[str, Any]:
    """Provenance of a sampling job: ``record`` and ``fields`` plus method, seeds, device,
    the network's dtype and the precision it ran at."""
    from diffinv.io.store import provenance

    return provenance(
        **{**record, **fields},
        method=method.as_dict(),
        device=str(device),
        dtype=network_dtype(prior),
        precision=sampling.precision,
        seed=seed,
        seeds=SEED_POLICY,
        nfe_unit="denoiser evaluations per posterior sample (store variable nfe)",
    )


def resume_key(*parts: Any) -> str:
    """A short hash of everything a resumable block depends on (config, inputs, method, prior)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_resumable(
    cases: Sequence[Callable[[], Any]],
    out: Path,
    append_dim: str,
    key: str,
    record: Mapping[str, Any],
    desc: str,
) -> Path:
    """Write one block per case (``cases[k]()`` returns an ``xarray.Dataset``) to the store ``out``,
    concatenated along ``append_dim``, keeping each finished block in ``<out>.parts/`` under ``key``.

    A rerun with the same key reuses the finished blocks, so a killed job resumes from its last
    completed case; the store appears atomically once complete, and the parts are then removed.
    """
    from diffinv.io.store import is_diffinv_store, open_zarr, set_provenance, write_zarr, write_zarr_blocks

    parts = out.with_name(out.name + ".parts")
    parts.mkdir(parents=True, exist_ok=True)

    def blocks() -> Iterator[Any]:
        bar = progress(len(cases), desc)
        for k, make in enumerate(cases):
            part = parts / f"block{k:04d}.zarr"
            if is_diffinv_store(part) and open_zarr(part).attrs.get("resume_key") == key:
                block = open_zarr(part).load()
            else:
                block = make()
                block.attrs["resume_key"] = key
                write_zarr(set_provenance(block, record), part)
            bar.update(1)
            yield block
        bar.close()

    write_zarr_blocks(blocks(), out, append_dim)
    shutil.rmtree(parts, ignore_errors=True)
    return out


OnStep = Callable[[StepInfo], "Problem | None"]


def sample_case(
    problem: Problem,
    prior: Denoiser,
    method: Method,
    sampling: Sampling,
    seeds: CaseSeeds,
    device: str | torch.device,
    on_step: OnStep | None = None,
    x_init: Tensor | None = None,
) -> CaseSamples:
    """Posterior samples of one case: the one sampling loop of every stage.

    Samples are drawn in batches of ``sampling.batch_size``; sample j always uses
    ``seeds.samples(j, j+1)`` (a search's population for sample j derives from it), so
    results do not depend on the batch size. ``on_step`` (plain solvers only) is called
    after every step and may return a new :class:`Problem`, used from the next step on
    (active acquisition); the final data consistency then uses the last problem.
    NFE counts every denoiser evaluation of a particle row, divided by the samples
    returned: a population of 16 particles over 20 steps costs 320 per sample.
    ``x_init`` (prior units, ``problem.shape``): an estimate of x that the particles start from,
    diffused to the first grid time, α(t0) x_init + σ(t0) ε (Come-Closer-Diffuse-Faster, Chung
    et al. CVPR 2022); None starts from the diffused zero image σ(t0) ε.
    """
    if on_step is not None and method.search:
        raise ConfigError(
            f"method {method.name}: a search cannot run with per-step acquisition (fix: drop search)"
        )
    counter = RowCounter(prior)
    solver = make_solver(method.solver, prior.schedule, **method.solver_options)
    search = (
        make_search(method.search, problem.operator, problem.y, **method.search_options)
        if method.search
        else None
    )
    n, bs = sampling.samples, sampling.batch_size
    parts: dict[str, list[Tensor]] = {"samples": [], "hal": [], "resid": [], "ess": [], "x0": []}
    calibration = 0
    start = time.perf_counter()
    with network_precision(prior, sampling.precision):
        for b0 in range(0, n, bs):
            noise = PerSampleNoise(seeds.samples(b0, min(n, b0 + bs)), device)
            batch = _Batch(problem, counter, method, solver, sampling, noise, x_init)
            x = batch.search(search) if search is not None else batch.plain(on_step)
            calibration += batch.calibration
            with torch.no_grad():
                final = batch.problem
                if sampling.final_dc:
                    x = final.operator.project(x, final.y)
                resid = final.operator.residual(x, final.y) / inner(final.y, final.y).sqrt().clamp_min(1e-12)
            if not sampling.allow_nonfinite and not bool(torch.isfinite(x).all()):
                bad = int((~torch.isfinite(x)).sum())
                raise DiffinvError(
                    f"method {method.name}: {bad} non-finite values in samples {b0}-{b0 + x.shape[0] - 1} "
                    "(fix: check the prior's training loss and the method's options, e.g. a smaller "
                    "step size or guidance weight; sampling.allow_nonfinite: true writes them anyway)"
                )
            parts["samples"].append(x.cpu())
            parts["hal"].append(batch.hallucination.cpu())
            parts["resid"].append(resid.cpu())
            if batch.ess is not None:
                parts["ess"].append(batch.ess)
            if batch.x0 is not None:
                parts["x0"].append(batch.x0.cpu())
    return CaseSamples(
        samples=torch.cat(parts["samples"]),
        nfe=(counter.rows - calibration) / n,
        calibration_nfe=calibration,
        wall_time_s=time.perf_counter() - start,
        hallucination_score=torch.cat(parts["hal"]),
        relative_residual=torch.cat(parts["resid"]),
        ess=torch.cat(parts["ess"]) if parts["ess"] else None,
        x0=torch.cat(parts["x0"]) if parts["x0"] else None,
    )


class _Batch:
    """One batch of posterior samples of a case, with a plain solver or a search."""

    def __init__(
        self,
        problem: Problem,
        counter: RowCounter,
        method: Method,
        solver: Solver,
        sampling: Sampling,
        noise: PerSampleNoise,
        x_init: Tensor | None = None,
    ) -> None:
        self.problem, self.counter, self.method, self.solver = problem, counter, method, solver
        self.sampling, self.noise, self.x_init = sampling, noise, x_init
        self.calibration = 0  # rows evaluated by solver.prepare (calibration passes)
        self.hallucination = torch.full((len(noise),), float("nan"))
        self.ess: Tensor | None = None
        self.x0: Tensor | None = None

    def guided(self, problem: Problem) -> Denoiser:
        """The conditional denoiser of ``problem`` over the counted prior."""
        options = self.method.guidance_options
        return make_guidance(self.method.guidance, problem.operator, problem.y, **options)(self.counter)

    def _start(self, noise: PerSampleNoise, D: Denoiser) -> tuple[Tensor, Tensor]:
        """Initial particles at the first grid time and the (prepared) grid."""
        schedule = self.counter.schedule
        grid = schedule.grid(self.sampling.steps, self.sampling.grid, t_start=self.sampling.t_start)
        x = noise.randn(self.problem.shape) * float(schedule.sigma(grid[0]))
        if self.x_init is not None:
            if tuple(self.x_init.shape) != tuple(self.problem.shape):
                raise ValueError(f"x_init has shape {tuple(self.x_init.shape)}, not {self.problem.shape}")
            x = x + float(schedule.alpha(grid[0])) * self.x_init.to(x)
        before = self.counter.rows
        with torch.no_grad():
            grid = self.solver.prepare(D, grid, x)
        self.calibration = self.counter.rows - before
        return x, grid

    def plain(self, on_step: OnStep | None) -> Tensor:
        """Integrate the batch; ``on_step`` may swap the problem between steps."""
        D = self.guided(self.problem)
        x, grid = self._start(self.noise, D)
        tracker = HallucinationScore(len(grid) - 1, self.sampling.hallucination_steps)

        def callback(info: StepInfo) -> Denoiser | None:
            tracker(info)
            self.x0 = info.x0
            new = on_step(info) if on_step is not None else None
            if new is None:
                return None
            self.problem = new
            return self.guided(new)

        with torch.no_grad():
            x = integrate(self.solver, D, x, grid, self.noise, callback)
        self.hallucination = tracker.score()
        return x

    def search(self, search: Any) -> Tensor:
        """Run the search plug-in: one sample per run of ``particles_per_run`` rows."""
        per_run = search.particles_per_run
        noise = PerSampleNoise(
            [derive_seed(s, j) for s in self.noise.seeds for j in range(per_run)], self.noise.device
        )
        D = self.guided(self.problem)
        x, grid = self._start(noise, D)
        with torch.no_grad():
            res = search.run(self.solver, D, x, grid, noise)
        runs = res.x.shape[0]
        self.hallucination = res.diagnostics.get("hallucination_score", self.hallucination).cpu()
        if search.population:
            self.ess = (res.ess if res.ess is not None else torch.full((runs,), float("nan"))).cpu()
        return res.x


def posterior_variables(
    samples: np.ndarray, dims: Sequence[str], sample_dim: str = "sample", what: str = "image"
) -> dict[str, tuple[tuple[str, ...], np.ndarray, dict[str, str]]]:
    """The ``samples``, ``mean`` and ``std`` variables of a store, from complex or real samples.

    ``std`` is the sample standard deviation (ddof 1) of the magnitude for complex samples.
    """
    axis = list(dims).index(sample_dim)
    reduced = tuple(d for d in dims if d != sample_dim)
    complex_ = np.iscomplexobj(samples)
    kind = "complex " if complex_ else ""
    spread = np.abs(samples) if complex_ else samples
    return {
        "samples": (
            tuple(dims),
            samples,
            {"long_name": f"posterior samples ({kind}{what})", "units": "a.u."},
        ),
        "mean": (
            reduced,
            samples.mean(axis),
            {"long_name": f"posterior mean ({kind}{what})", "units": "a.u."},
        ),
        "std": (
            reduced,
            spread.std(axis, ddof=1).astype(np.float32),
            {"long_name": f"posterior std of the {'magnitude ' if complex_ else ''}{what}", "units": "a.u."},
        ),
    }
