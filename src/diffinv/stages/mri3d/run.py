"""3D MRI stage verb: reconstruct the volumes of an MRI store at one acceleration with one method.

``sample`` writes one store per (acceleration, method): posterior samples, mean and std of every
volume with the zero-filled (Aᴴy) and 3D TV baselines under the same mask, volume by volume.
Each finished volume is kept in ``<output>.parts/`` under a key of everything it depends on, so a
killed job resumes from its last completed volume (as the 3D CT stage does).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from diffinv.complex import channels_to_complex
from diffinv.errors import ConfigError, InputError
from diffinv.operators.mri3d import MRI3DOperator, variable_density_mask_2d
from diffinv.operators.tv import select_tv_lambda, tv_admm
from diffinv.stages.core import (
    CaseSamples,
    CaseSeeds,
    Method,
    Problem,
    Sampling,
    posterior_variables,
    sample_case,
)
from diffinv.stages.mri3d.volumes import MRIVolume, VolumeSource
from diffinv.stages.slices import SliceDenoiser, volume_diagnostics, write_volumes

TV_DIMS = (1, 3, 4)  # z, y, x of (batch, z, channel, y, x): 3D anisotropic TV of the real and imaginary parts


def load_prior(folder: Path, grid: tuple[int, int], data: Path, device: str) -> Any:
    """The MRI stage's 2-channel slice prior (``diffinv train mri``), refused otherwise."""
    from diffinv.diffusion.networks import checkpoint_config
    from diffinv.stages.mri.run import load_prior as load_mri_prior

    if checkpoint_config(folder)["network"].get("channels", 2) != 2:
        raise InputError(
            folder / "config.json",
            "not a 2-channel (real, imag) MRI prior",
            "train it with 'diffinv train mri'",
        )
    return load_mri_prior(folder, grid, data, device)


def to_complex(x: torch.Tensor, scale: float) -> np.ndarray:
    """Normalised (…, 2, H, W) volumes as complex64 in the data's units."""
    return (channels_to_complex(x.cpu()) * scale).numpy().astype(np.complex64)


class Reconstruction:
    """The reconstructions of the volumes of an MRI store at one acceleration with one method.

    ``prior`` (a 2D denoiser of (B, 2, H, W) slices) replaces loading ``args.prior`` (tests).
    """

    def __init__(self, args: argparse.Namespace, cfg: dict[str, Any], device: str, prior: Any = None) -> None:
        m3 = cfg["mri3d"]
        self.cfg, self.m3, self.device = cfg, m3, device
        (entry,) = m3["sampling"]["methods"]
        self.entry, self.method = entry, Method.from_config(entry)
        self.acceleration = int(args.acceleration)
        self.mask_options = m3["sampling"]["mask"]
        cf = cfg["mri"]["data"]["center_fraction"]
        self.source = VolumeSource(Path(args.data), cf, m3["data"], self.mask_options["center_fraction"])
        if prior is None:
            prior = load_prior(Path(args.prior), self.source.grid, Path(args.data), device)
        self.prior = SliceDenoiser(prior, m3["sampling"]["slice_batch"])
        overrides = {k: entry[k] for k in ("steps", "samples") if entry.get(k) is not None}
        self.sampling = Sampling.from_config(m3["sampling"], **overrides)
        train = getattr(args, "train_data", None)
        self.tv_lambda, self.tv_grid = self._tv_lambda(Path(train) if train else None, cf)
        self.record = {
            "step": "sample mri3d",
            "config": cfg,
            "data": str(args.data),
            "train_data": str(train),
            "prior": str(getattr(args, "prior", None)),
            "acceleration": self.acceleration,
        }

    def mask(self, volume: MRIVolume) -> torch.Tensor:
        """The (kz, k_phase) mask of a volume, seeded by its identity."""
        seed = CaseSeeds.of(self.cfg["seed"], volume.label).mask
        z, w = volume.kspace.shape[0], volume.kspace.shape[-1]
        opts = self.mask_options
        return variable_density_mask_2d(
            (z, w), self.acceleration, opts["center_fraction"], seed, opts["power"]
        )

    def problem(self, volume: MRIVolume, mask: torch.Tensor) -> Problem:
        """Operator and data y = M ⊙ k (batch of 1) of a volume under ``mask``."""
        sens = volume.sensitivities.to(self.device) if volume.sensitivities is not None else None
        op = MRI3DOperator(mask.to(self.device), sens)
        k = volume.kspace if sens is not None else volume.kspace[:, 0]
        y = op.mask * k[None].to(self.device)
        return Problem(op, y, tuple(volume.truth.shape))

    def _tv_options(self) -> dict[str, Any]:
        tv = self.m3["baselines"]["tv"]
        return {"rho": tv["rho"], "iters": tv["iterations"], "cg_steps": tv["cg_steps"], "dims": TV_DIMS}

    def _tv_lambda(self, train: Path | None, center_fraction: float) -> tuple[float, dict[str, float]]:
        """λ of the TV baseline: the best of the grid (MSE) on the first volume of ``--train-data``."""
        tv = self.m3["baselines"]["tv"]
        if len(tv["lambdas"]) == 1:
            return float(tv["lambdas"][0]), {}
        if train is None:
            raise ConfigError(
                "mri3d.baselines.tv.lambdas: a grid needs --train-data to choose lambda on "
                "(fix: pass the training store, or give one lambda)"
            )
        data = {"depth": self.source.depth, "volumes": 1}
        source = VolumeSource(train, center_fraction, data, self.mask_options["center_fraction"])
        volume = source.volume(source.labels[0])
        problem = self.problem(volume, self.mask(volume))
        start = problem.operator.A_adjoint(problem.y)
        truth = volume.truth[None].to(self.device)
        best, table = select_tv_lambda(
            problem.operator, truth, problem.y, tv["lambdas"], start, **self._tv_options()
        )
        return float(best), {f"{k:g}": float(v) for k, v in table.items()}

    def case(self, volume: MRIVolume) -> xr.Dataset:
        """Posterior samples and baselines of one volume, as a store block (volume dim of 1)."""
        mask = self.mask(volume)
        problem = self.problem(volume, mask)
        before = self.prior.slices
        seeds = CaseSeeds.of(self.cfg["seed"], volume.label)
        res = sample_case(problem, self.prior, self.method, self.sampling, seeds, self.device)
        slices = (self.prior.slices - before) / self.sampling.samples
        with torch.no_grad():
            zero_filled = problem.operator.A_adjoint(problem.y)[0]
            start = zero_filled[None]
            tv = tv_admm(problem.operator, problem.y, start, self.tv_lambda, **self._tv_options())[0]
        return self._block(volume, mask, res, slices, zero_filled, tv)

    def _block(
        self,
        volume: MRIVolume,
        mask: torch.Tensor,
        res: CaseSamples,
        slices: float,
        zero_filled: torch.Tensor,
        tv: torch.Tensor,
    ) -> xr.Dataset:
        s = volume.scale
        samples = to_complex(res.samples, s)[None]
        dims = ("volume", "sample", "z", "y", "x")
        variables: dict[str, Any] = posterior_variables(samples, dims)
        image = ("volume", "z", "y", "x")
        variables.update(
            truth=(
                image,
                to_complex(volume.truth, s)[None],
                {"long_name": "reference from fully sampled k-space", "units": "a.u."},
            ),
            zero_filled=(
                image,
                to_complex(zero_filled, s)[None],
                {"long_name": "zero-filled reconstruction (A^H y)", "units": "a.u."},
            ),
            tv=(
                image,
                to_complex(tv, s)[None],
                {
                    "long_name": f"3D TV-regularised least squares (ADMM), lambda {self.tv_lambda:g}",
                    "units": "a.u.",
                },
            ),
            mask=(
                ("volume", "kz", "kx"),
                mask.numpy()[None],
                {"long_name": "acquired (kz, k_phase) points; every readout line of each is kept"},
            ),
            scale=(
                ("volume",),
                np.array([s]),
                {
                    "long_name": "normalisation scale (q99 of the calibration-block magnitude)",
                    "units": "a.u.",
                },
            ),
            slice_in_file=(("volume", "z"), volume.slices[None], {"long_name": "slice index in the file"}),
            **volume_diagnostics(res, slices),
        )
        depth, ny, nx = samples.shape[2:]
        freq = lambda n: np.arange(n) - n // 2  # noqa: E731
        return xr.Dataset(
            variables,
            coords={
                "volume": ("volume", [volume.label], {"long_name": "volume (file)"}),
                "sample": ("sample", np.arange(samples.shape[1]), {"long_name": "posterior sample"}),
                "z": ("z", np.arange(depth), {"long_name": "slice position in the volume", "units": "slice"}),
                "y": ("y", np.arange(ny), {"long_name": "readout pixel", "units": "pixel"}),
                "x": ("x", np.arange(nx), {"long_name": "phase-encode pixel", "units": "pixel"}),
                "kz": (
                    "kz",
                    freq(depth),
                    {"long_name": "slice-direction frequency (centred)", "units": "1/FOV_z"},
                ),
                "kx": ("kx", freq(nx), {"long_name": "phase-encode frequency (centred)", "units": "1/FOV_x"}),
            },
        )

    def attrs(self) -> dict[str, Any]:
        """Store attributes: the job's choices and the observation model."""
        return {
            "stage": "mri3d",
            "acceleration": self.acceleration,
            "method": self.entry["name"],
            "method_plugins": self.method.name,
            "operator": "A x = M F3(S x): centred orthonormal 3D FFT, (kz, k_phase) mask, every readout kept",
            "coils": "multi-coil (sensitivities per slice)"
            if self.source.cases.ds.sizes["coil"] > 1
            else "single coil",
            "mask": json.dumps(
                {"kind": "variable density (1 - r)^power, fully sampled centre", **self.mask_options}
            ),
            "normalisation": "one scale per volume: q99 of the calibration-block image magnitude (RSS)",
            "tv_lambda": self.tv_lambda,
            "tv_lambda_grid_mse": json.dumps(self.tv_grid),
        }

    def write(self, out: Path) -> Path:
        """Write the store, one block per volume, resumable from its last completed volume."""
        return write_volumes(
            self,
            out,
            self.source.labels,
            self.source.volume,
            f"sample mri3d {self.acceleration}x {self.entry['name']}",
        )


def sample(args: argparse.Namespace, cfg: dict[str, Any], device: str) -> None:
    """``diffinv sample mri3d``: posterior store of one method at one acceleration, volume by volume."""
    job = Reconstruction(args, cfg, device)
    out = job.write(Path(args.output))
    print(f"wrote {out} ({len(job.source)} volumes, {job.acceleration}x, method {job.entry['name']})")
