"""3D CT stage verbs: train the slice prior; reconstruct volumes of one task with one method.

``sample`` writes one store per (task, method): posterior samples, mean and std of every
evaluation volume with the FBP and TV baselines of the same views, volume by volume. Each
finished volume is kept in ``<output>.parts/`` under a key of everything it depends on, so a
killed job resumes from its last completed volume; the parts are removed once the store is
assembled.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from diffinv.errors import ConfigError, InputError
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
from diffinv.stages.ct3d import task_method
from diffinv.stages.ct3d.volumes import (
    CTStore,
    Normalisation,
    SliceDenoiser,
    Task,
    Volume,
    normalised_problem_data,
    view_angles_deg,
)
from diffinv.stages.slices import volume_diagnostics, write_volumes

TV_DIMS = (1, 2, 3)  # z, y, x of a (batch, z, y, x) volume: 3D anisotropic TV


def train(args: argparse.Namespace, cfg: dict[str, Any], device: str) -> None:
    """``diffinv train ct3d``: the 2D slice prior on the training volumes (truth or dense FBP)."""
    from diffinv.diffusion.schedule import VPSchedule
    from diffinv.diffusion.training import TrainConfig, train_prior

    ct = cfg["ct3d"]
    store = CTStore(Path(args.data), ct["data"])
    images = store.training_images(ct["data"]["train_on"], ct["data"]["filter"])
    prior = ct["prior"]
    if prior["train"]["batch_size"] > images.shape[0]:
        raise ConfigError(
            f"ct3d.prior.train.batch_size: {prior['train']['batch_size']} is more than the "
            f"{images.shape[0]} training slices (fix: set it to at most {images.shape[0]})"
        )
    norm = Normalisation.of(images.numpy())
    network = {"size": list(images.shape[-2:]), "channels": 1, **prior["network"]}
    info = {
        "source": str(args.data),
        "images": int(images.shape[0]),
        "train_on": ct["data"]["train_on"],
        "volumes": [f"{store.source}:{a}-{b}" for a, b in store.bounds[: store.train_volumes]],
        "normalisation": {"offset": norm.offset, "scale": norm.scale},
        "representation": "axial slices, x_n = (x - offset) / scale",
    }
    train_prior(
        norm.to_prior(images),
        Path(args.output),
        network,
        VPSchedule(**prior["schedule"]),
        TrainConfig(**prior["train"], seed=cfg["seed"]),
        prior["clip"],
        info,
        device,
        not args.quiet,
    )
    print(f"wrote {args.output}")


def load_prior(folder: Path, image_shape: tuple[int, int], device: str) -> tuple[Any, Normalisation]:
    """The checkpoint's denoiser and normalisation; refused if trained on another grid."""
    from diffinv.diffusion.networks import checkpoint_config, load_denoiser

    cfg = checkpoint_config(folder)
    size = tuple(int(s) for s in cfg["network"]["size"])
    norm = (cfg.get("data") or {}).get("normalisation")
    if norm is None or cfg["network"].get("channels") != 1:
        raise InputError(folder / "config.json", "not a CT slice prior", "train it with 'diffinv train ct3d'")
    if size != tuple(image_shape):
        raise InputError(
            folder / "config.json",
            f"the prior was trained on {size[0]}x{size[1]} slices, the volumes are "
            f"{image_shape[0]}x{image_shape[1]}",
            "use a prior trained on this grid, or set ct3d.data.image_size",
        )
    return load_denoiser(folder, device), Normalisation(norm["offset"], norm["scale"])


def _task(ct: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """The ``ct3d.tasks`` entry named ``name``."""
    found = [t for t in ct["tasks"] if t["name"] == name]
    if not found:
        names = ", ".join(t["name"] for t in ct["tasks"])
        raise ConfigError(f"--task {name!r} is not in ct3d.tasks (fix: use one of {names})")
    return found[0]


class Reconstruction:
    """The reconstructions of one task with one method on the evaluation volumes of a store."""

    def __init__(self, args: argparse.Namespace, cfg: dict[str, Any], device: str) -> None:
        ct = cfg["ct3d"]
        self.cfg, self.ct, self.device = cfg, ct, device
        task = _task(ct, args.task)
        (entry,) = ct["sampling"]["methods"]
        entry = task_method(task, entry)  # the task's own options over the method's
        self.entry, self.method = entry, Method.from_config(entry)
        self.task = Task.from_config(task)
        self.store = CTStore(Path(args.data), ct["data"])
        prior, self.norm = load_prior(Path(args.prior), self.store.image_shape, device)
        self.nonnegative = bool(ct["sampling"]["nonnegative"])
        floor = self.norm.to_prior(torch.zeros(())).item() if self.nonnegative else None
        self.prior = SliceDenoiser(prior, ct["sampling"]["slice_batch"], floor)
        overrides = {k: entry[k] for k in ("steps", "samples", "grid") if entry.get(k) is not None}
        if "t_start" in entry:  # null is a value here: the full grid, whatever the section's start
            overrides["t_start"] = entry["t_start"]
        self.sampling = Sampling.from_config(ct["sampling"], **overrides)
        self.init: str = entry.get("init", "zero")  # what the particles start from (schema $defs/init)
        self.views = self.task.select(self.store.angles)
        self.op = self.store.operator(self.views)
        self.filter = ct["data"]["filter"]
        self.tv_lambda, self.tv_grid = self._tv_lambda()
        self.record = {
            "step": "sample ct3d",
            "config": cfg,
            "data": str(args.data),
            "prior": str(args.prior),
            "task": self.task.name,
        }

    def _tv_lambda(self) -> tuple[float, dict[str, float]]:
        """λ of the TV baseline: the best of the grid on the first training volume (its own views)."""
        tv = self.ct["baselines"]["tv"]
        if len(tv["lambdas"]) == 1:
            return float(tv["lambdas"][0]), {}
        volume = self.store.volume(self.store.bounds[0])
        reference = self.store.reference(volume, self.ct["data"]["reference"], self.filter)
        dev = self.device
        y = (volume.sinogram[None, :, self.views] / self.store.pixel_size).to(dev)
        start = self.store.fbp(volume.sinogram[:, self.views], self.views, self.filter)[None].to(dev)
        best, table = select_tv_lambda(
            self.op, reference[None].to(dev), y, tv["lambdas"], **self._tv_options(start)
        )
        return float(best), {f"{k:g}": float(v) for k, v in table.items()}

    def _tv_options(self, start: torch.Tensor) -> dict[str, Any]:
        tv = self.ct["baselines"]["tv"]
        return {
            "x_init": start,
            "rho": tv["rho"],
            "iters": tv["iterations"],
            "cg_steps": tv["cg_steps"],
            "dims": TV_DIMS,
        }

    def case(self, volume: Volume) -> xr.Dataset:
        """Posterior samples and baselines of one volume, as a store block (volume dim of 1)."""
        sino = volume.sinogram[:, self.views]
        y_n = normalised_problem_data(sino, self.op, self.store.pixel_size, self.norm)
        problem = Problem(self.op, y_n.to(self.device), tuple(y_n.shape[1:2]) + self.store.image_shape)
        fbp = self.store.fbp(sino, self.views, self.filter)
        y = (sino[None] / self.store.pixel_size).to(self.device)  # TV runs where the sampler runs
        tv = tv_admm(self.op, y, lam=self.tv_lambda, **self._tv_options(fbp[None].to(self.device)))[0].cpu()
        init = {"zero": None, "fbp": fbp, "tv": tv}[self.init]
        before = self.prior.slices
        res = sample_case(
            problem,
            self.prior,
            self.method,
            self.sampling,
            CaseSeeds.of(self.cfg["seed"], volume.label),
            self.device,
            x_init=None if init is None else self.norm.to_prior(init).to(self.device),
        )
        slices = (self.prior.slices - before) / self.sampling.samples
        reference = self.store.reference(volume, self.ct["data"]["reference"], self.filter)
        return self._block(volume, res, slices, fbp, tv, reference)

    def _block(
        self,
        volume: Volume,
        res: CaseSamples,
        slices: float,
        fbp: torch.Tensor,
        tv: torch.Tensor,
        reference: torch.Tensor,
    ) -> xr.Dataset:
        units = self.image_units
        samples = self.norm.to_data(res.samples)
        if self.nonnegative:  # the physical constraint, also after the last data-consistency step
            samples = samples.clamp_min(0)
        samples = samples.numpy().astype(np.float32)[None]
        dims = ("volume", "sample", "z", "y", "x")
        variables: dict[str, Any] = posterior_variables(samples, dims, what="attenuation")
        for name in variables:
            variables[name][2]["units"] = units
        image = ("volume", "z", "y", "x")
        kind = self.ct["data"]["reference"]
        variables.update(
            reference=(
                image,
                reference.numpy()[None],
                {
                    "long_name": "ground truth" if kind == "truth" else "FBP of all views (dense scan)",
                    "units": units,
                },
            ),
            fbp=(
                image,
                fbp.numpy()[None],
                {
                    "long_name": f"filtered back-projection ({self.filter}) of the task's views",
                    "units": units,
                },
            ),
            tv=(
                image,
                tv.numpy()[None],
                {
                    "long_name": f"3D TV-regularised least squares (ADMM), lambda {self.tv_lambda:g}",
                    "units": units,
                },
            ),
            **volume_diagnostics(res, slices),
        )
        z0, z1 = volume.rows
        ny, nx = self.store.image_shape
        p, length = self.store.pixel_size, self.length_units
        centre = lambda n: (np.arange(n) - (n - 1) / 2) * p  # noqa: E731
        return xr.Dataset(
            variables,
            coords={
                "volume": ("volume", [volume.label], {"long_name": "volume (source:first-last projection)"}),
                "sample": ("sample", np.arange(samples.shape[1]), {"long_name": "posterior sample"}),
                "z": ("z", np.arange(z0, z1), {"long_name": "axial slice (projection index)", "units": "1"}),
                "y": ("y", -centre(ny), {"long_name": "y (up, row centres)", "units": length}),
                "x": ("x", centre(nx), {"long_name": "x (right, column centres)", "units": length}),
            },
        )

    @property
    def length_units(self) -> str:
        """Length unit of the store's detector coordinate (m, or pixel)."""
        return str(self.store.ds.attrs.get("detector_units", "pixel"))

    @property
    def image_units(self) -> str:
        """Units of the reconstructed attenuation."""
        if "mu_max" in self.store.ds.attrs:
            return "1 (attenuation / mu_max)"
        return f"{self.length_units}^-1"

    def attrs(self) -> dict[str, Any]:
        """Store attributes (CF-style geometry and the job's choices)."""
        return {
            "stage": "ct3d",
            "task": self.task.name,
            "method": self.entry["name"],
            "method_plugins": self.method.name,
            "guidance_options": json.dumps(self.method.guidance_options),
            "sampling_grid": json.dumps(
                {
                    "steps": self.sampling.steps,
                    "grid": self.sampling.grid,
                    "t_start": self.sampling.t_start,
                    "init": self.init,
                }
            ),
            "views": int(len(self.views)),
            "angles_deg": view_angles_deg(self.store.angles[self.views]),
            "voxel_size": [1.0, self.store.pixel_size, self.store.pixel_size],
            "voxel_size_units": f"z: slice index; y, x: {self.length_units}",
            "reference": self.ct["data"]["reference"],
            "tv_lambda": self.tv_lambda,
            "tv_lambda_grid_mse": json.dumps(self.tv_grid),
            "normalisation": json.dumps({"offset": self.norm.offset, "scale": self.norm.scale}),
        }

    def write(self, out: Path) -> Path:
        """Write the store, one block per volume, resumable from its last completed volume."""
        return write_volumes(
            self,
            out,
            self.store.eval_bounds,
            self.store.volume,
            f"sample ct3d {self.task.name} {self.entry['name']}",
        )


def sample(args: argparse.Namespace, cfg: dict[str, Any], device: str) -> None:
    """``diffinv sample ct3d``: posterior store of one task with one method, volume by volume."""
    job = Reconstruction(args, cfg, device)
    out = job.write(Path(args.output))
    print(
        f"wrote {out} ({len(job.store.eval_bounds)} volumes, task {job.task.name}, "
        f"method {job.entry['name']})"
    )
