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
from diffinv.operators.mri import MRIOperator, estimate_sensitivities, ifft2c, sampling_mask
from diffinv.search import SearchMethod, make_search
from diffinv.solvers import CountingDenoiser, PerSampleNoise, Solver, make_solver, sample
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


def prepare_case(kspace: np.ndarray, acquired: np.ndarray, label: str, num_low: int) -> MRICase:
    """Sensitivities, normalisation and (if fully sampled) the reference image of one slice."""
    k = torch.from_numpy(np.ascontiguousarray(kspace)).to(torch.complex64)
    coils, _, width = k.shape
    window = torch.zeros(width, dtype=torch.float32)
    start = (width - num_low + 1) // 2
    window[start : start + num_low] = 1.0
    low = ifft2c(k * window)
    sens = estimate_sensitivities(k, num_low) if coils > 1 else None
    low_combined = (low.abs() ** 2).sum(0).sqrt()
    scale = float(torch.quantile(low_combined.flatten(), 0.99))
    if not np.isfinite(scale) or scale <= 0:
        raise InputError(label, "calibration lines hold no signal", "check the k-space and num_low_frequency")
    acq = torch.from_numpy(np.asarray(acquired, bool))
    truth = None
    if bool(acq.all()):
        img = ifft2c(k)
        img = (sens.conj() * img).sum(0) if sens is not None else img[0]
        truth = complex_to_channels(img / scale)
    return MRICase(label, k / scale, sens, acq, truth, scale, num_low)


def load_cases(store: Path, center_fraction: float, limit: int | None = None) -> list[MRICase]:
    """Cases of an ingested fastMRI store (first ``limit`` slices)."""
    ds = open_zarr(store)
    n = ds.sizes["slice"] if limit is None else min(limit, ds.sizes["slice"])
    width = ds.sizes["phase"]
    cases = []
    for i in range(n):
        sl = ds.isel(slice=i)
        num_low = int(sl["num_low_frequency"]) or max(2, int(round(width * center_fraction)))
        label = f"{sl['file'].item()}:{int(sl['slice_in_file'])}"
        cases.append(prepare_case(sl["kspace"].values, sl["mask"].values, label, num_low))
    return cases


def training_images(store: Path, center_fraction: float) -> Tensor:
    """(N, 2, H, W) normalised reference images of every fully sampled slice of a store."""
    images = [c.truth for c in load_cases(store, center_fraction) if c.truth is not None]
    if not images:
        raise InputError(store, "no fully sampled slices to train on", "train on fastMRI train/val files, not test files")
    return torch.stack(images)


def case_seed(seed: int, case: int, particle: int) -> int:
    """Seed of one posterior sample: independent of batch size and of other cases."""
    return int(np.random.SeedSequence([seed, case, particle]).generate_state(1, np.uint64)[0] >> 1)


def no_prior_reconstruction(op: MRIOperator, y: Tensor, x_init: Tensor, clip: float | None, cg_steps: int, iterations: int, tol: float = 1e-6) -> Tensor:
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
) -> dict[str, Any]:
    """Posterior samples and baselines for one case at one acceleration (normalised units)."""
    width = case.kspace.shape[-1]
    if bool(case.acquired.all()):
        mask = sampling_mask(sampling["mask"]["kind"], width, acceleration, center_fraction, seed=case_seed(seed, case_index, 0) % 2**32)
    else:
        mask = case.acquired  # prospectively undersampled file: use its own mask
    sens = case.sensitivities[None].to(device) if case.sensitivities is not None else None
    op = MRIOperator(mask.to(device), sens)
    y1 = op.mask * (case.kspace[None] if sens is not None else case.kspace).to(device)
    clip = getattr(prior, "clip", None)
    zero_filled = op.A_adjoint(y1)
    cg_steps = int(method.get("guidance_options", {}).get("cg_steps", 5))
    no_prior = no_prior_reconstruction(op, y1, zero_filled, clip, cg_steps, sampling["no_prior_iterations"])

    counter = CountingDenoiser(prior)
    solver = make_solver(method["solver"], prior.schedule, **method.get("solver_options", {}))
    grid = prior.schedule.grid(sampling["steps"], sampling["grid"])
    samples, hal, resid, ess = [], [], [], []
    n, bs = sampling["samples"], sampling["batch_size"]
    shape = (2,) + tuple(case.kspace.shape[-2:])
    search = make_search(method["search"], op, y1, **method.get("search_options", {})) if method.get("search") else None
    start = time.perf_counter()
    for b0 in range(0, n, bs):
        idx = range(b0, min(n, b0 + bs))
        y = y1.expand((len(idx),) + tuple(y1.shape[1:]))
        if search is None:
            noise = PerSampleNoise([case_seed(seed, case_index, 1 + i) for i in idx], device)
            guidance = make_guidance(method["guidance"], op, y, **method.get("guidance_options", {}))
            x_t = noise.randn(shape) * float(prior.schedule.sigma(grid[0]))
            tracker = HallucinationScore(len(grid) - 1, sampling["hallucination_steps"])
            with torch.no_grad():
                x = sample(solver, guidance(counter), x_t, grid, noise, callback=tracker)
            hal.append(tracker.score().cpu())
        else:
            x, h, e = _search_batch(search, solver, counter, method, op, y1, grid, [case_seed(seed, case_index, 1 + i) for i in idx], shape, device)
            hal.append(h)
            ess.append(e)
        with torch.no_grad():
            if sampling["final_dc"]:
                x = op.project(x, y)
        samples.append(x.cpu())
        resid.append((op.residual(x, y) / op.residual(torch.zeros_like(x), y).clamp_min(1e-12)).cpu())
    wall = time.perf_counter() - start
    return {
        "ess": torch.cat(ess) if ess and search.population else None,
        "samples": torch.cat(samples),
        "zero_filled": zero_filled[0].cpu(),
        "no_prior": no_prior[0].cpu(),
        "mask": mask.cpu(),
        "hallucination_score": torch.cat(hal),
        "relative_residual": torch.cat(resid),
        "nfe": counter.nfe,
        "wall_time_s": wall,
    }


def _search_batch(search: SearchMethod, solver: Solver, counter: Denoiser, method: dict[str, Any], op: MRIOperator, y1: Tensor, grid: Tensor, seeds: list[int], shape: tuple[int, ...], device: str) -> tuple[Tensor, Tensor, Tensor]:
    """One batch of posterior samples from a search plug-in: samples, hallucination scores, ESS (NaN if none)."""
    per_run = search.particles_per_run
    noise = PerSampleNoise([int(np.random.SeedSequence([s, j]).generate_state(1, np.uint64)[0] >> 1) for s in seeds for j in range(per_run)], device)
    y = y1.expand((len(noise),) + tuple(y1.shape[1:]))
    guidance = make_guidance(method["guidance"], op, y, **method.get("guidance_options", {}))
    x_t = noise.randn(shape) * float(counter.schedule.sigma(grid[0]))
    with torch.no_grad():
        res = search.run(solver, guidance(counter), x_t, grid, noise)
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
    results = [reconstruct_case(c, i, prior, acceleration, method, sampling, center_fraction, seed, device) for i, c in enumerate(cases)]
    samples = np.stack([_to_complex(r["samples"], c.scale) for r, c in zip(results, cases)])
    magnitude = np.abs(samples)
    dims = ("case", "sample", "y", "x")
    ds = xr.Dataset(
        {
            "samples": (dims, samples, {"long_name": "posterior samples (complex image)", "units": "a.u."}),
            "mean": (dims[:1] + dims[2:], samples.mean(1), {"long_name": "posterior mean (complex)", "units": "a.u."}),
            "std": (dims[:1] + dims[2:], magnitude.std(1, ddof=1).astype(np.float32), {"long_name": "posterior std of the magnitude image", "units": "a.u."}),
            "zero_filled": (dims[:1] + dims[2:], np.stack([_to_complex(r["zero_filled"], c.scale) for r, c in zip(results, cases)]), {"long_name": "zero-filled reconstruction (A^H y)", "units": "a.u."}),
            "no_prior": (dims[:1] + dims[2:], np.stack([_to_complex(r["no_prior"], c.scale) for r, c in zip(results, cases)]), {"long_name": "no-prior baseline: data consistency + value constraint to convergence", "units": "a.u."}),
            "mask": (("case", "x"), np.stack([r["mask"].numpy() for r in results]), {"long_name": "acquired phase-encode columns"}),
            "hallucination_score": (("case", "sample"), np.stack([r["hallucination_score"].numpy() for r in results]), {"long_name": "variance of x0 predictions over the final steps (Aithal et al. 2024)", "units": "normalised^2"}),
            "relative_residual": (("case", "sample"), np.stack([r["relative_residual"].numpy() for r in results]), {"long_name": "||y - A x|| / ||y||", "units": "1"}),
            "scale": (("case",), np.array([c.scale for c in cases]), {"long_name": "normalisation scale (q99 of the calibration image)", "units": "a.u."}),
        },
        coords={
            "case": [c.label for c in cases],
            "sample": np.arange(samples.shape[1]),
            "y": ("y", np.arange(samples.shape[2]), {"long_name": "readout pixel", "units": "pixel"}),
            "x": ("x", np.arange(samples.shape[3]), {"long_name": "phase-encode pixel", "units": "pixel"}),
        },
    )
    if all(r["ess"] is not None for r in results):
        ds["ess"] = (("case", "sample"), np.stack([r["ess"].numpy() for r in results]), {"long_name": "effective sample size of the particle population behind each sample", "units": "particles"})
    if all(c.truth is not None for c in cases):
        ds["truth"] = (("case", "y", "x"), np.stack([_to_complex(c.truth, c.scale) for c in cases]), {"long_name": "reference image from fully sampled k-space", "units": "a.u."})
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
