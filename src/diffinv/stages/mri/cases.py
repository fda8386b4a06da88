"""MRI reconstruction stage: posterior sampling of Cartesian (multi-coil) MRI slices.

Per slice (a *case*): coil sensitivities from the calibration lines, a normalisation
scale (99th percentile of the calibration-only image magnitude, available for both
training and undersampled data), retrospective undersampling, guided diffusion sampling
of several posterior samples with one seed per sample, zero-filled and no-prior
baselines, and an xarray Dataset following the zarr contract.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from diffinv.complex import channels_to_complex, complex_to_channels
from diffinv.config import method_name
from diffinv.diffusion.denoisers import Denoiser
from diffinv.errors import InputError
from diffinv.guidance import make_guidance
from diffinv.io.store import open_zarr, provenance, set_provenance
from diffinv.operators.base import inner
from diffinv.operators.mri import MRIOperator, center_mask, estimate_sensitivities, ifft2c, sampling_mask
from diffinv.search import SearchMethod, make_search
from diffinv.solvers import CountingDenoiser, PerSampleNoise, Solver, make_solver, sample
from diffinv.solvers.base import derive_seed
from diffinv.uncertainty import HallucinationScore


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


def load_cases(
    store: Path, center_fraction: float, limit: int | None = None, chunk: int = 256
) -> list[MRICase]:
    """Cases of an ingested fastMRI store (first ``limit`` slices), read ``chunk`` slices at a time."""
    ds = open_zarr(store)
    n = ds.sizes["slice"] if limit is None else min(limit, ds.sizes["slice"])
    width = ds.sizes["phase"]
    labels = [f"{f}:{int(i)}" for f, i in zip(ds["file"].values[:n], ds["slice_in_file"].values[:n])]
    num_low_all = ds["num_low_frequency"].values[:n]
    default_low = max(2, int(round(width * center_fraction)))
    cases: list[MRICase] = []
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        block = ds.isel(slice=slice(start, stop))
        kspace, acquired = block["kspace"].values, block["mask"].values
        lows = [int(v) or default_low for v in num_low_all[start:stop]]
        for low in sorted(set(lows)):
            idx = [i for i, v in enumerate(lows) if v == low]
            cases += prepare_cases(kspace[idx], acquired[idx], [labels[start + i] for i in idx], low)
    order = {label: i for i, label in enumerate(labels)}
    return sorted(cases, key=lambda c: order[c.label])


def training_images(store: Path, center_fraction: float) -> Tensor:
    """(N, 2, H, W) normalised reference images of every fully sampled slice of a store."""
    images = [c.truth for c in load_cases(store, center_fraction) if c.truth is not None]
    if not images:
        raise InputError(
            store, "no fully sampled slices to train on", "train on fastMRI train/val files, not test files"
        )
    return torch.stack(images)


def case_seed(seed: int, case: int, particle: int) -> int:
    """Seed of one posterior sample: independent of batch size and of other cases."""
    return derive_seed(seed, case, particle)


def case_mask(
    case: MRICase, case_index: int, acceleration: int, kind: str, center_fraction: float, seed: int
) -> Tensor:
    """The retrospective mask of a fully sampled case, or the file's own mask otherwise."""
    if not bool(case.acquired.all()):
        return case.acquired  # prospectively undersampled file
    return sampling_mask(
        kind,
        case.kspace.shape[-1],
        acceleration,
        center_fraction,
        seed=case_seed(seed, case_index, 0) % 2**32,
    )


def case_operator(case: MRICase, mask: Tensor, device: str) -> tuple[MRIOperator, Tensor]:
    """The (multi-coil) operator of a case under ``mask`` and its measurement y (batch of 1)."""
    sens = case.sensitivities[None].to(device) if case.sensitivities is not None else None
    op = MRIOperator(mask.to(device), sens)
    return op, op.mask * (case.kspace[None] if sens is not None else case.kspace).to(device)


def baselines(
    case: MRICase, mask: Tensor, clip: float | None, cg_steps: int, iterations: int, device: str
) -> tuple[Tensor, Tensor]:
    """Zero-filled (Aᴴy) and no-prior reconstructions of a case under ``mask`` (normalised units)."""
    op, y = case_operator(case, mask, device)
    zero_filled = op.A_adjoint(y)
    return zero_filled[0].cpu(), no_prior_reconstruction(op, y, zero_filled, clip, cg_steps, iterations)[
        0
    ].cpu()


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


def reconstruct_case(
    case: MRICase,
    case_index: int,
    prior: Denoiser,
    acceleration: int,
    method: dict[str, Any],
    sampling: dict[str, Any],
    center_fraction: float,
    seed: int,
    device: str,
    mask: Tensor | None = None,
) -> dict[str, Any]:
    """Posterior samples of one case at one acceleration (normalised units).

    ``mask`` overrides the configured mask (used by the ADS stage's fixed-mask baselines).
    """
    if mask is None:
        mask = case_mask(case, case_index, acceleration, sampling["mask"]["kind"], center_fraction, seed)
    op, y1 = case_operator(case, mask, device)
    counter = CountingDenoiser(prior)
    solver = make_solver(method["solver"], prior.schedule, **method.get("solver_options", {}))
    grid = prior.schedule.grid(sampling["steps"], sampling["grid"])
    samples, hal, resid, ess = [], [], [], []
    n, bs = sampling["samples"], sampling["batch_size"]
    shape = (2,) + tuple(case.kspace.shape[-2:])
    search = (
        make_search(method["search"], op, y1, **method.get("search_options", {}))
        if method.get("search")
        else None
    )
    start = time.perf_counter()
    for b0 in range(0, n, bs):
        seeds = [case_seed(seed, case_index, 1 + i) for i in range(b0, min(n, b0 + bs))]
        y = y1.expand((len(seeds),) + tuple(y1.shape[1:]))
        if search is None:
            noise = PerSampleNoise(seeds, device)
            guidance = make_guidance(
                method["guidance"], op, y1, **method.get("guidance_options", {})
            )  # broadcasts: calibrated solvers use their own batch
            x_t = noise.randn(shape) * float(prior.schedule.sigma(grid[0]))
            tracker = HallucinationScore(len(grid) - 1, sampling["hallucination_steps"])
            with torch.no_grad():
                x = sample(solver, guidance(counter), x_t, grid, noise, callback=tracker)
            hal.append(tracker.score().cpu())
        else:
            x, h, e = _search_batch(search, solver, counter, method, op, y1, grid, seeds, shape, device)
            hal.append(h)
            ess.append(e)
        with torch.no_grad():
            if sampling["final_dc"]:
                x = op.project(x, y)
        samples.append(x.cpu())
        resid.append((op.residual(x, y) / inner(y, y).sqrt().clamp_min(1e-12)).cpu())
    wall = time.perf_counter() - start
    return {
        "ess": torch.cat(ess) if ess and search.population else None,
        "samples": torch.cat(samples),
        "mask": mask.cpu(),
        "hallucination_score": torch.cat(hal),
        "relative_residual": torch.cat(resid),
        "nfe": counter.nfe,
        "wall_time_s": wall,
    }


def _search_batch(
    search: SearchMethod,
    solver: Solver,
    counter: Denoiser,
    method: dict[str, Any],
    op: MRIOperator,
    y1: Tensor,
    grid: Tensor,
    seeds: list[int],
    shape: tuple[int, ...],
    device: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """One batch of posterior samples from a search plug-in: samples, hallucination scores, ESS (NaN if none)."""
    per_run = search.particles_per_run
    noise = PerSampleNoise([derive_seed(s, j) for s in seeds for j in range(per_run)], device)
    # one observation shared by every row: searches evaluate subsets of rows (RBF, DTS), so the
    # guidance gets y with a broadcastable batch axis of 1, not one expanded to the population
    guidance = make_guidance(method["guidance"], op, y1, **method.get("guidance_options", {}))
    x_t = noise.randn(shape) * float(counter.schedule.sigma(grid[0]))
    guided = guidance(counter)
    with torch.no_grad():
        res = search.run(solver, guided, x_t, solver.prepare(guided, grid, x_t), noise)
    runs = res.x.shape[0]
    hal = res.diagnostics.get("hallucination_score", torch.full((runs,), float("nan")))
    ess = res.ess if res.ess is not None else torch.full((runs,), float("nan"))
    return res.x, hal.cpu(), ess.cpu()


def _to_complex(x: Tensor, scale: float) -> np.ndarray:
    return (channels_to_complex(x) * scale).numpy().astype(np.complex64)


def reconstruct(
    cases: Sequence[MRICase],
    prior: Denoiser,
    acceleration: int,
    method: dict[str, Any],
    sampling: dict[str, Any],
    center_fraction: float,
    seed: int,
    device: str,
    record: dict[str, Any],
) -> xr.Dataset:
    """Posterior Dataset for all cases at one acceleration (zarr contract, design §4)."""
    results = [
        reconstruct_case(c, i, prior, acceleration, method, sampling, center_fraction, seed, device)
        for i, c in enumerate(cases)
    ]
    cg_steps = int(method.get("guidance_options", {}).get("cg_steps", 5))
    for r, c in zip(results, cases):
        r["zero_filled"], r["no_prior"] = baselines(
            c, r["mask"], getattr(prior, "clip", None), cg_steps, sampling["no_prior_iterations"], device
        )
    samples = np.stack([_to_complex(r["samples"], c.scale) for r, c in zip(results, cases)])
    magnitude = np.abs(samples)
    dims = ("case", "sample", "y", "x")
    ds = xr.Dataset(
        {
            "samples": (dims, samples, {"long_name": "posterior samples (complex image)", "units": "a.u."}),
            "mean": (
                dims[:1] + dims[2:],
                samples.mean(1),
                {"long_name": "posterior mean (complex)", "units": "a.u."},
            ),
            "std": (
                dims[:1] + dims[2:],
                magnitude.std(1, ddof=1).astype(np.float32),
                {"long_name": "posterior std of the magnitude image", "units": "a.u."},
            ),
            "zero_filled": (
                dims[:1] + dims[2:],
                np.stack([_to_complex(r["zero_filled"], c.scale) for r, c in zip(results, cases)]),
                {"long_name": "zero-filled reconstruction (A^H y)", "units": "a.u."},
            ),
            "no_prior": (
                dims[:1] + dims[2:],
                np.stack([_to_complex(r["no_prior"], c.scale) for r, c in zip(results, cases)]),
                {
                    "long_name": "no-prior baseline: data consistency + value constraint to convergence",
                    "units": "a.u.",
                },
            ),
            "mask": (
                ("case", "x"),
                np.stack([r["mask"].numpy() for r in results]),
                {"long_name": "acquired phase-encode columns"},
            ),
            "hallucination_score": (
                ("case", "sample"),
                np.stack([r["hallucination_score"].numpy() for r in results]),
                {
                    "long_name": "variance of x0 predictions over the final steps (Aithal et al. 2024)",
                    "units": "normalised^2",
                },
            ),
            "relative_residual": (
                ("case", "sample"),
                np.stack([r["relative_residual"].numpy() for r in results]),
                {"long_name": "||y - A x|| / ||y||", "units": "1"},
            ),
            "scale": (
                ("case",),
                np.array([c.scale for c in cases]),
                {"long_name": "normalisation scale (q99 of the calibration image)", "units": "a.u."},
            ),
        },
        coords={
            "case": [c.label for c in cases],
            "sample": np.arange(samples.shape[1]),
            "y": ("y", np.arange(samples.shape[2]), {"long_name": "readout pixel", "units": "pixel"}),
            "x": ("x", np.arange(samples.shape[3]), {"long_name": "phase-encode pixel", "units": "pixel"}),
        },
    )
    if all(r["ess"] is not None for r in results):
        ds["ess"] = (
            ("case", "sample"),
            np.stack([r["ess"].numpy() for r in results]),
            {
                "long_name": "effective sample size of the particle population behind each sample",
                "units": "particles",
            },
        )
    if all(c.truth is not None for c in cases):
        ds["truth"] = (
            ("case", "y", "x"),
            np.stack([_to_complex(c.truth, c.scale) for c in cases]),
            {"long_name": "reference image from fully sampled k-space", "units": "a.u."},
        )
    ds.attrs["acceleration"] = acceleration
    ds.attrs["method"] = method_name(method)
    record = dict(record)
    record.update(
        nfe=int(sum(r["nfe"] for r in results)),
        nfe_per_sample=int(results[0]["nfe"] // max(1, -(-sampling["samples"] // sampling["batch_size"]))),
        wall_time_s=round(sum(r["wall_time_s"] for r in results), 3),
        device=device,
        dtype="float32",
        seed=seed,
        seeds="numpy SeedSequence([seed, case, 1 + sample]); mask seed SeedSequence([seed, case, 0])",
        acceleration=acceleration,
        method=method,
    )
    return set_provenance(ds, provenance(**record))
