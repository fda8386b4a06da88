"""MRI stage verbs: train the slice prior; sample posteriors into a store, block by block."""

from __future__ import annotations

import argparse
from collections.abc import Collection, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from torch import Tensor

from diffinv.complex import channels_to_complex
from diffinv.diffusion.denoisers import Denoiser
from diffinv.errors import ConfigError, InputError
from diffinv.io.store import set_provenance
from diffinv.stages.core import (
    CaseSamples,
    CaseSeeds,
    Method,
    Sampling,
    posterior_variables,
    progress,
    sampling_provenance,
)
from diffinv.stages.core import sample_case as core_sample_case
from diffinv.stages.mri.cases import (
    CaseSource,
    MRICase,
    baselines,
    case_mask,
    case_problem,
    slice_indices,
    training_images,
)
from diffinv.stages.mri.cs import LambdaChoice, choose_lambda, cs_long_name, cs_reconstruction


def reconstruct_case(
    case: MRICase, prior: Denoiser, mask: Tensor, method: Method, sampling: Sampling, seed: int, device: str
) -> CaseSamples:
    """Posterior samples of one case under ``mask`` (normalised units), seeded by the case's label."""
    problem = case_problem(case, mask, device)
    return core_sample_case(problem, prior, method, sampling, CaseSeeds.of(seed, case.label), device)


def to_complex(x: Tensor, scale: float) -> np.ndarray:
    """Normalised two-channel images as complex64 in the data's units."""
    return (channels_to_complex(x) * scale).numpy().astype(np.complex64)


def reconstruct_blocks(
    cases: Collection[MRICase],
    prior: Denoiser,
    acceleration: int,
    method: Method,
    settings: dict[str, Any],
    center_fraction: float,
    seed: int,
    device: str,
    record: dict[str, Any],
    cs: LambdaChoice | None = None,
) -> Iterator[xr.Dataset]:
    """Posterior Datasets of ``settings['case_block']`` cases at a time (zarr contract, design §4).

    ``settings`` is the validated ``mri.sampling`` section. ``cases`` may be a lazy
    :class:`CaseSource`: memory then holds one block of samples and one chunk of k-space.
    Every block carries the same attributes and provenance. With ``cs`` (λ chosen on
    training slices, :func:`~diffinv.stages.mri.cs.choose_lambda`) the blocks also hold
    the compressed-sensing baseline ``cs``, reconstructed a block at a time.
    """
    sampling = Sampling.from_config(settings)
    block = settings["case_block"]
    clip = getattr(prior, "clip", None)
    attrs: dict[str, Any] = {"acceleration": acceleration, "method": method.name}
    extra: dict[str, Any] = {"acceleration": acceleration}
    if cs is not None:
        attrs.update(cs_lambda=cs.value, cs_lambda_grid=cs.grid, cs_grid_ssim=cs.ssim)
        extra["cs"] = cs.as_dict()
    prov = sampling_provenance(record, prior, method, sampling, seed, device, **extra)
    bar = progress(len(cases), f"sample mri {acceleration}x {method.name}")
    remaining = iter(cases)
    while part := list(islice(remaining, block)):
        results, masks, zero_filled, no_prior = [], [], [], []
        for case in part:
            seeds = CaseSeeds.of(seed, case.label)
            mask = case_mask(case, acceleration, settings["mask"]["kind"], center_fraction, seeds)
            res = reconstruct_case(case, prior, mask, method, sampling, seed, device)
            zf, npr = baselines(
                case, mask, clip, settings["no_prior_cg_steps"], settings["no_prior_iterations"], device
            )
            results.append(res)
            masks.append(mask.cpu())
            zero_filled.append(to_complex(zf, case.scale))
            no_prior.append(to_complex(npr, case.scale))
            bar.update(1)
        ds = _block_dataset(part, results, masks, zero_filled, no_prior)
        if cs is not None:
            images = cs_reconstruction(part, masks, cs, device)
            ds["cs"] = (
                ("case", "y", "x"),
                np.stack([to_complex(x, c.scale) for x, c in zip(images, part)]),
                {"long_name": cs_long_name(cs.value), "units": "a.u."},
            )
        ds.attrs.update(attrs)
        yield set_provenance(ds, prov)
    bar.close()


def _block_dataset(
    cases: Sequence[MRICase],
    results: Sequence[CaseSamples],
    masks: Sequence[Tensor],
    zero_filled: Sequence[np.ndarray],
    no_prior: Sequence[np.ndarray],
) -> xr.Dataset:
    samples = np.stack([to_complex(r.samples, c.scale) for r, c in zip(results, cases)])
    dims = ("case", "sample", "y", "x")
    image = dims[:1] + dims[2:]
    variables: dict[str, Any] = posterior_variables(samples, dims)
    variables.update(
        zero_filled=(
            image,
            np.stack(zero_filled),
            {"long_name": "zero-filled reconstruction (A^H y)", "units": "a.u."},
        ),
        no_prior=(
            image,
            np.stack(no_prior),
            {
                "long_name": "no-prior baseline: data consistency + value constraint to convergence",
                "units": "a.u.",
            },
        ),
        mask=(
            ("case", "x"),
            np.stack([m.numpy() for m in masks]),
            {"long_name": "acquired phase-encode columns"},
        ),
        hallucination_score=(
            ("case", "sample"),
            np.stack([r.hallucination_score.numpy() for r in results]),
            {
                "long_name": "variance of x0 predictions over the final steps (Aithal et al. 2024)",
                "units": "normalised^2",
            },
        ),
        relative_residual=(
            ("case", "sample"),
            np.stack([r.relative_residual.numpy() for r in results]),
            {"long_name": "||y - A x|| / ||y||", "units": "1"},
        ),
        scale=(
            ("case",),
            np.array([c.scale for c in cases]),
            {"long_name": "normalisation scale (q99 of the calibration image)", "units": "a.u."},
        ),
        nfe=(
            ("case",),
            np.array([r.nfe for r in results], np.float64),
            {
                "long_name": "denoiser evaluations per posterior sample (population rows included)",
                "units": "1",
            },
        ),
        calibration_nfe=(
            ("case",),
            np.array([r.calibration_nfe for r in results], np.int64),
            {"long_name": "denoiser evaluations spent calibrating the solver (0 when cached)", "units": "1"},
        ),
        wall_time_s=(
            ("case",),
            np.array([r.wall_time_s for r in results], np.float64),
            {"long_name": "wall time of posterior sampling", "units": "s"},
        ),
    )
    if all(r.ess is not None for r in results):
        variables["ess"] = (
            ("case", "sample"),
            np.stack([r.ess.numpy() for r in results]),
            {
                "long_name": "effective sample size of the particle population behind each sample",
                "units": "particles",
            },
        )
    if all(c.truth is not None for c in cases):
        variables["truth"] = (
            ("case", "y", "x"),
            np.stack([to_complex(c.truth, c.scale) for c in cases]),
            {"long_name": "reference image from fully sampled k-space", "units": "a.u."},
        )
    return xr.Dataset(
        variables,
        coords={
            "case": ("case", [c.label for c in cases], {"long_name": "slice (file:index)"}),
            "sample": ("sample", np.arange(samples.shape[1]), {"long_name": "posterior sample"}),
            "y": ("y", np.arange(samples.shape[2]), {"long_name": "readout pixel", "units": "pixel"}),
            "x": ("x", np.arange(samples.shape[3]), {"long_name": "phase-encode pixel", "units": "pixel"}),
        },
    )


def reconstruct(
    cases: Sequence[MRICase],
    prior: Denoiser,
    acceleration: int,
    method: Method,
    settings: dict[str, Any],
    center_fraction: float,
    seed: int,
    device: str,
    record: dict[str, Any],
    cs: LambdaChoice | None = None,
) -> xr.Dataset:
    """All blocks of :func:`reconstruct_blocks` in memory (tests, benchmarks, notebooks)."""
    args = (cases, prior, acceleration, method, settings, center_fraction, seed, device, record, cs)
    blocks = list(reconstruct_blocks(*args))
    ds = xr.concat(blocks, dim="case", data_vars="minimal", coords="minimal", compat="override")
    ds.attrs = dict(blocks[0].attrs)
    return ds


def load_prior(folder: Path, grid: Sequence[int], data: Path, device: str) -> Denoiser:
    """The checkpoint's denoiser, refused with one line if it was trained on another grid than ``data``."""
    from diffinv.diffusion.networks import checkpoint_config, load_denoiser

    size = [int(s) for s in checkpoint_config(folder)["network"]["size"]]
    grid = [int(g) for g in grid]
    if size != grid:
        raise InputError(
            folder / "config.json",
            f"the prior was trained on {size[0]}x{size[1]} images but {data} holds {grid[0]}x{grid[1]}",
            "use a prior trained on this grid, or ingest with mri.data.kspace_crop set to the prior's size",
        )
    return load_denoiser(folder, device)


def train(args: argparse.Namespace, cfg: dict[str, Any], device: str) -> None:
    """``diffinv train mri``: the slice prior on the fully sampled slices of ``--data``."""
    from diffinv.diffusion.schedule import VPSchedule
    from diffinv.diffusion.training import TrainConfig, train_prior

    mri = cfg["mri"]
    images = training_images(Path(args.data), mri["data"]["center_fraction"])
    prior = mri["prior"]
    if prior["train"]["batch_size"] > images.shape[0]:
        raise ConfigError(
            f"mri.prior.train.batch_size: {prior['train']['batch_size']} is more than the "
            f"{images.shape[0]} training slices of {args.data} (fix: set it to at most {images.shape[0]})"
        )
    network = {"size": list(images.shape[-2:]), "channels": 2, **prior["network"]}
    train_cfg = TrainConfig(**prior["train"], seed=cfg["seed"])
    info = {
        "source": str(args.data),
        "images": int(images.shape[0]),
        "normalisation": "q99 of the calibration-line image magnitude",
        "representation": "complex image as (real, imag) channels",
    }
    schedule = VPSchedule(**prior["schedule"])
    train_prior(
        images, Path(args.output), network, schedule, train_cfg, prior["clip"], info, device, not args.quiet
    )
    print(f"wrote {args.output}")


def sample(args: argparse.Namespace, cfg: dict[str, Any], device: str) -> None:
    """``diffinv sample mri``: posterior store of one method at one acceleration, written in blocks.

    The CS baseline's λ is chosen first, on slices of ``--train-data`` only.
    """
    from diffinv.io.store import write_zarr_blocks

    mri = cfg["mri"]
    (entry,) = mri["sampling"]["methods"]
    if getattr(args, "cases", None):
        cases = calibration_cases(Path(args.data), mri, args.cases)
    else:
        cases = evaluation_cases(Path(args.data), mri)
    prior = load_prior(Path(args.prior), cases.grid, Path(args.data), device)
    record = {
        "step": "sample mri",
        "config": cfg,
        "data": str(args.data),
        "train_data": str(args.train_data),
        "prior": str(args.prior),
    }
    sampling = mri["sampling"]
    # calibration slices (--cases) need samples and truth only: no CS baseline
    cs = (
        None
        if getattr(args, "cases", None)
        else choose_lambda(
            Path(args.train_data),
            args.acceleration,
            sampling["mask"]["kind"],
            mri["data"]["center_fraction"],
            sampling["cs"],
            cfg["seed"],
            device,
        )
    )
    blocks = reconstruct_blocks(
        cases,
        prior,
        args.acceleration,
        Method.from_config(entry),
        mri["sampling"],
        mri["data"]["center_fraction"],
        cfg["seed"],
        device,
        record,
        cs,
    )
    write_zarr_blocks(blocks, Path(args.output), "case")
    print(f"wrote {args.output} ({len(cases)} cases)")


class CaseSelection:
    """The slices at store positions ``indices`` of a :class:`CaseSource`, read a chunk at a time."""

    def __init__(self, source: CaseSource, indices: range) -> None:
        self.source, self.indices = source, indices
        self.grid = source.grid

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[MRICase]:
        chunk = self.source.chunk
        for first in range(0, len(self.indices), chunk):
            yield from self.source.take(self.indices[first : first + chunk])


def _slices_of(data: Path, mri: dict[str, Any]) -> CaseSource:
    return CaseSource(data, mri["data"]["center_fraction"], None, chunk=mri["sampling"]["case_block"])


def evaluation_cases(data: Path, mri: dict[str, Any]) -> CaseSelection:
    """The evaluation slices of ``data``: ``mri.data.cases`` (see :func:`slice_indices`)."""
    source = _slices_of(data, mri)
    return CaseSelection(source, slice_indices(mri["data"]["cases"], len(source), "mri.data.cases", data))


def calibration_cases(data: Path, mri: dict[str, Any], spec: Sequence[int]) -> CaseSelection:
    """The calibration slices ``spec`` = [start, stop(, step)] of ``data``, refused unless
    disjoint from the evaluation slices (``mri.data.cases``)."""
    source = _slices_of(data, mri)
    total = len(source)
    indices = slice_indices(list(spec), total, "mri.calibration.cases", data)
    evaluated = slice_indices(mri["data"]["cases"], total, "mri.data.cases", data)
    shared = sorted(set(indices) & set(evaluated))
    if shared:
        raise ConfigError(
            f"mri.calibration.cases: {list(spec)} shares {len(shared)} slice(s) of {data} (e.g. "
            f"{shared[0]}) with the evaluation slices mri.data.cases = {mri['data']['cases']} "
            "(fix: choose disjoint slices, e.g. mri.data.cases: [0, N, 2] and "
            "mri.calibration.cases: [1, N, 2])"
        )
    return CaseSelection(source, indices)


def calibrate(args: argparse.Namespace, cfg: dict[str, Any], device: str) -> None:
    """``diffinv calibrate mri``: λ on the calibration store's slices, bounds of the evaluation store's."""
    from diffinv.calibration import calibrate_from_arguments

    settings = cfg["mri"]["calibration"]
    calibrate_from_arguments(args, settings["level"], settings["score"])
