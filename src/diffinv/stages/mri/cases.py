"""MRI cases: slices of an ingested fastMRI store, their observation model and baselines.

Per slice (a *case*): coil sensitivities from the calibration lines, a normalisation
scale (99th percentile of the calibration-only image magnitude, available for both
training and undersampled data), the retrospective mask seeded by the case's identity,
the operator and measurement, and the zero-filled and no-prior baselines.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from diffinv.complex import complex_to_channels
from diffinv.errors import ConfigError, InputError
from diffinv.io.store import open_zarr
from diffinv.operators.mri import MRIOperator, center_mask, estimate_sensitivities, ifft2c, sampling_mask
from diffinv.stages.core import CaseSeeds, Problem


@dataclass
class MRICase:
    """One slice on the reconstruction grid, normalised by ``scale``."""

    label: str
    kspace: Tensor  # (C, H, W) complex, divided by scale
    sensitivities: Tensor | None  # (C, H, W) or None (single coil)
    acquired: Tensor  # (W,) bool: columns present in the file
    truth: Tensor | None  # (2, H, W) normalised, when fully sampled
    scale: float
    num_low: int


def prepare_cases(
    kspace: np.ndarray, acquired: np.ndarray, labels: Sequence[str], num_low: int
) -> list[MRICase]:
    """Sensitivities, normalisation and (if fully sampled) reference images of a batch of slices.

    ``kspace`` is (S, C, H, W) complex, ``acquired`` (S, W) bool; ``num_low`` calibration
    lines (shared by the batch).
    """
    k = torch.from_numpy(np.ascontiguousarray(kspace)).to(torch.complex64)
    coils, width = k.shape[1], k.shape[-1]
    window = center_mask(width, num_low).to(torch.float32)
    low_combined = (ifft2c(k * window).abs() ** 2).sum(1).sqrt()
    scales = torch.quantile(low_combined.flatten(1), 0.99, dim=1)
    sens = estimate_sensitivities(k, num_low) if coils > 1 else None
    full = ifft2c(k)
    full = (sens.conj() * full).sum(1) if sens is not None else full[:, 0]
    cases = []
    for i, label in enumerate(labels):
        scale = float(scales[i])
        if not np.isfinite(scale) or scale <= 0:
            raise InputError(
                label, "calibration lines hold no signal", "check the k-space and num_low_frequency"
            )
        acq = torch.from_numpy(np.asarray(acquired[i], bool))
        truth = complex_to_channels(full[i] / scale) if bool(acq.all()) else None
        cases.append(
            MRICase(label, k[i] / scale, sens[i] if sens is not None else None, acq, truth, scale, num_low)
        )
    return cases


@dataclass
class CaseSource:
    """The slices of an ingested fastMRI store: their count and grid, read lazily in chunks."""

    store: Path
    center_fraction: float
    limit: int | None = None
    chunk: int = 256

    def __post_init__(self) -> None:
        ds = open_zarr(self.store)
        missing = [v for v in ("kspace", "mask", "file", "slice_in_file", "num_low_frequency") if v not in ds]
        if missing:
            raise InputError(
                self.store,
                f"not an ingested fastMRI store (no {', '.join(missing)})",
                "pass a store written by 'diffinv ingest fastmri'",
            )
        self.ds = ds
        self.count = ds.sizes["slice"] if self.limit is None else min(self.limit, ds.sizes["slice"])
        self.grid = (ds.sizes["readout"], ds.sizes["phase"])

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[MRICase]:
        """Cases in store order; memory holds one chunk of k-space at a time."""
        for start in range(0, self.count, self.chunk):
            yield from self.take(range(start, min(self.count, start + self.chunk)))

    def take(self, indices: Iterable[int]) -> list[MRICase]:
        """The cases at store positions ``indices``, in store order (read together)."""
        ds = self.ds
        idx = sorted({int(i) for i in indices})
        files, numbers = ds["file"].values[idx], ds["slice_in_file"].values[idx]
        labels = [f"{f}:{int(i)}" for f, i in zip(files, numbers)]
        default_low = max(2, int(round(self.grid[1] * self.center_fraction)))
        lows = [int(v) or default_low for v in ds["num_low_frequency"].values[idx]]
        block = ds.isel(slice=idx)
        kspace, acquired = block["kspace"].values, block["mask"].values
        cases: list[MRICase] = []
        for low in sorted(set(lows)):
            pos = [i for i, v in enumerate(lows) if v == low]
            cases += prepare_cases(kspace[pos], acquired[pos], [labels[i] for i in pos], low)
        order = {label: i for i, label in enumerate(labels)}
        return sorted(cases, key=lambda c: order[c.label])


def slice_indices(spec: int | Sequence[int] | None, total: int, key: str, store: Path) -> range:
    """Store positions selected by a config ``key`` out of ``total`` slices of ``store``.

    ``None``: all; ``N``: the first N (all when fewer); ``[start, stop]`` or
    ``[start, stop, step]``: Python's ``range``, refused unless non-empty and within the store.
    """
    if spec is None:
        return range(total)
    if isinstance(spec, int):
        return range(min(spec, total))
    start, stop, step = (*spec, 1, 1)[:3] if len(spec) in (2, 3) else (0, 0, 0)
    if len(spec) not in (2, 3) or step < 1 or not 0 <= start < stop <= total:
        raise ConfigError(
            f"{key}: {list(spec)} is not a non-empty [start, stop(, step)] slice range within the "
            f"{total} slices of {store} (fix: e.g. [0, {total}, 2])"
        )
    return range(start, stop, step)


def load_cases(
    store: Path, center_fraction: float, limit: int | None = None, chunk: int = 256
) -> list[MRICase]:
    """Cases of an ingested fastMRI store (first ``limit`` slices), read ``chunk`` slices at a time."""
    return list(CaseSource(store, center_fraction, limit, chunk))


def training_images(store: Path, center_fraction: float) -> Tensor:
    """(N, 2, H, W) normalised reference images of every fully sampled slice of a store."""
    images = [c.truth for c in load_cases(store, center_fraction) if c.truth is not None]
    if not images:
        raise InputError(
            store, "no fully sampled slices to train on", "train on fastMRI train/val files, not test files"
        )
    return torch.stack(images)


def tuning_cases(store: Path, center_fraction: float, count: int) -> list[MRICase]:
    """``count`` fully sampled slices spread evenly over a (training) store, for tuning baselines."""
    source = CaseSource(store, center_fraction)
    picks = np.unique(np.linspace(0, len(source) - 1, min(count, len(source))).round().astype(int))
    cases = [c for c in source.take(picks.tolist()) if c.truth is not None]
    if not cases:
        raise InputError(
            store, "no fully sampled slices to tune the CS baseline on", "pass the training store"
        )
    return cases


def case_mask(
    case: MRICase, acceleration: int, kind: str, center_fraction: float, seeds: CaseSeeds
) -> Tensor:
    """The retrospective mask of a fully sampled case (seeded by its identity), or the file's own mask."""
    if not bool(case.acquired.all()):
        return case.acquired  # prospectively undersampled file
    return sampling_mask(kind, case.kspace.shape[-1], acceleration, center_fraction, seed=seeds.mask % 2**32)


def case_problem(case: MRICase, mask: Tensor, device: str) -> Problem:
    """The (multi-coil) observation model of a case under ``mask``: operator and y (batch of 1)."""
    sens = case.sensitivities[None].to(device) if case.sensitivities is not None else None
    op = MRIOperator(mask.to(device), sens)
    y = op.mask * (case.kspace[None] if sens is not None else case.kspace).to(device)
    return Problem(op, y, (2,) + tuple(case.kspace.shape[-2:]))


def baselines(
    case: MRICase, mask: Tensor, clip: float | None, cg_steps: int, iterations: int, device: str
) -> tuple[Tensor, Tensor]:
    """Zero-filled (Aᴴy) and no-prior reconstructions of a case under ``mask`` (normalised units).

    They depend on the case, the mask and the sampling settings only, never on the method
    whose folder they are written in.
    """
    problem = case_problem(case, mask, device)
    zero_filled = problem.operator.A_adjoint(problem.y)
    no_prior = no_prior_reconstruction(problem.operator, problem.y, zero_filled, clip, cg_steps, iterations)
    return zero_filled[0].cpu(), no_prior[0].cpu()


def no_prior_reconstruction(
    op: MRIOperator,
    y: Tensor,
    x_init: Tensor,
    clip: float | None,
    cg_steps: int,
    iterations: int,
    tol: float = 1e-6,
) -> Tensor:
    """The no-prior baseline: data-consistency CG and the value constraint, alternated to convergence."""
    x = x_init
    for _ in range(iterations):
        x_new = op.solve_normal(y, x, steps=cg_steps)
        if clip is not None:
            x_new = x_new.clamp(-clip, clip)
        change = (x_new - x).norm() / x.norm().clamp_min(1e-12)
        x = x_new
        if change < tol:
            break
    return x
