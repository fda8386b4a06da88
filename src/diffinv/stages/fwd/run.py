"""fwd stage verbs: train the forward-model network on observations only; sample held-out slices.

``train`` reads the training volumes through :func:`.data.load_observations` (the store opened
without ``truth``) and never imports :mod:`.evaluate`. ``sample`` writes one store of posterior
samples, mean and std of every evaluation volume, slice by slice through the shared core
(:func:`~diffinv.stages.core.sample_case` with any solver plug-in over :class:`.model.RenderedDenoiser`),
with the FBP of the same context views and the reference (truth, or the FBP of all views).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from diffinv.diffusion.schedule import VPSchedule
from diffinv.errors import ConfigError
from diffinv.operators.base import LinearOperator
from diffinv.operators.ct import fbp
from diffinv.stages.core import (
    CaseSeeds,
    Method,
    Problem,
    Sampling,
    posterior_variables,
    resume_key,
    sample_case,
    sampling_provenance,
    write_resumable,
)
from diffinv.stages.fwd.data import SliceObservations, case_rows, load_observations, operator_for
from diffinv.stages.fwd.model import (
    FwdModel,
    FwdTrain,
    RenderedDenoiser,
    ViewPlan,
    equispaced,
    load_fwd,
    train_fwd,
)

PLAN_KEYS = ("context_views", "target_views", "observed_views", "context_weight", "drop_context")


def volumes(data: Mapping[str, Any], evaluation: bool) -> list[int]:
    """Training volumes [0, train_volumes), or the next ``eval_volumes``."""
    n_train = int(data["train_volumes"])
    return list(range(n_train, n_train + int(data["eval_volumes"]))) if evaluation else list(range(n_train))


def train(args: argparse.Namespace, cfg: dict[str, Any], device: str) -> None:
    """``diffinv train fwd``: the signal network from the training volumes' sinograms only."""
    fwd = cfg["fwd"]
    data, options = fwd["data"], dict(fwd["train"])
    obs = load_observations(Path(args.data), volumes(data, False), data["volume_slices"], data["image_size"])
    plan = ViewPlan(**{k: options.pop(k) for k in PLAN_KEYS})
    if options["batch_size"] > len(obs.case_ids):
        raise ConfigError(
            f"fwd.train.batch_size: {options['batch_size']} is more than the {len(obs.case_ids)} training "
            f"slices (fix: set it to at most {len(obs.case_ids)})"
        )
    info = {
        "source": str(args.data),
        "slices": len(obs.case_ids),
        "volumes": volumes(data, False),
        "noise_std": obs.noise_std,
        "noise_model": obs.noise_model,
        "representation": "signal: axial slices x_n = (x - offset) / scale; observations (y_n) / obs_scale",
        "supervision": "observations only (store opened without 'truth')",
    }
    train_fwd(
        obs,
        Path(args.output),
        dict(fwd["network"]),
        VPSchedule(**fwd["schedule"]),
        plan,
        FwdTrain(**options, seed=cfg["seed"]),
        data["filter"],
        info,
        device,
        not args.quiet,
    )
    print(f"wrote {args.output}")


def target_views(n_angles: int, context: np.ndarray, views: int | None) -> np.ndarray:
    """The sampling target set: ``views`` evenly over the scan, half a step from the context's
    pattern, without the context views; ``None``: every view outside the context."""
    pattern = np.arange(n_angles) if views is None else equispaced(n_angles, views, 0.5)
    out = np.setdiff1d(pattern, context)
    if len(out) == 0:
        raise ConfigError(
            f"fwd.sampling.target_views: {views} leaves no view outside the context (fix: more)"
        )
    return out


class TargetSpace(LinearOperator):
    """The identity on target observations (…, n_target, n_det): the particles' space.

    The target views are not measured at sampling (their observation is what is diffused), so
    a problem over them carries no data: only guidance ``none`` is accepted, and the relative
    residual the stage reports is the context's (:func:`reconstruct`).
    """

    def A(self, x: Tensor) -> Tensor:
        """x."""
        return x

    def A_adjoint(self, y: Tensor) -> Tensor:
        """y."""
        return y


@dataclass
class SliceResult:
    """Posterior signals of one slice (data units) and their diagnostics."""

    samples: Tensor  # (n, ny, nx)
    nfe: float
    wall_time_s: float
    context_residual: Tensor  # (n,) ‖y_ctx − A_ctx x‖ / ‖y_ctx‖


def context_image(model: FwdModel, sinogram: Tensor, views: np.ndarray) -> Tensor:
    """FBP (normalised units, (1, 1, ny, nx)) of the ``views`` of one slice's sinogram (pixel units)."""
    g = model.geometry
    mask = torch.zeros((1, g.op.n_angles), dtype=torch.bool)
    mask[0, torch.as_tensor(views)] = True
    return g.image(g.to_model(sinogram[None]), g.view_weights(mask))


def reconstruct(
    model: FwdModel,
    obs: SliceObservations,
    index: int,
    context: np.ndarray,
    target: np.ndarray,
    method: Method,
    sampling: Sampling,
    guidance_scale: float,
    seed: int,
    device: str,
    nonnegative: bool = True,
) -> SliceResult:
    """Posterior signals of slice ``index`` of ``obs`` from its ``context`` views, diffusing the
    observation of the ``target`` views (fixed over the steps); the signal S is read at the final
    particles (t_min), one more network evaluation per sample; ``nonnegative`` clamps it at 0
    (attenuation, as the ct3d stage)."""
    if method.guidance != "none" or method.search:
        raise ConfigError(
            f"fwd.sampling.method: guidance {method.guidance!r}, search {method.search!r}, but "
            "the diffused target views carry no data (fix: guidance none, no search; the context "
            "conditions the network)"
        )
    sino = torch.from_numpy(obs.sinograms[index])
    D = RenderedDenoiser(model, context_image(model, sino, context).to(device), target, guidance_scale)
    shape = (len(target), obs.sinograms.shape[-1])
    problem = Problem(TargetSpace(), torch.zeros((1, *shape), device=device), shape)
    res = sample_case(problem, D, method, sampling, CaseSeeds.of(seed, obs.case_ids[index]), device)
    t_min = torch.full((res.samples.shape[0],), model.schedule.t_min, dtype=torch.float64)
    with torch.no_grad():
        signal = model.geometry.norm.to_data(D.signal(res.samples.to(device), t_min)[:, 0].cpu())
    if nonnegative:
        signal = signal.clamp_min(0)
    op = operator_for(obs, context)
    y = sino[context][None]
    resid = (op.A(signal) - y).flatten(1).norm(dim=1) / y.norm()
    return SliceResult(signal, res.nfe + 1, res.wall_time_s, resid)


def _slice_fbp(obs: SliceObservations, local: np.ndarray, views: np.ndarray, filter: str) -> Tensor:
    """FBP (data units, (n, ny, nx)) of ``views`` of the slices ``local`` of ``obs``."""
    sino = torch.from_numpy(obs.sinograms[local][:, views])
    return fbp(sino, operator_for(obs, views), filter)  # type: ignore[arg-type]


class Sampler:
    """``sample fwd``: the evaluation volumes, one slice per case, one store block per volume."""

    def __init__(self, args: argparse.Namespace, cfg: dict[str, Any], device: str) -> None:
        fwd = cfg["fwd"]
        self.cfg, self.fwd, self.device = cfg, fwd, device
        data, s = fwd["data"], fwd["sampling"]
        self.obs = load_observations(
            Path(args.data), volumes(data, True), data["volume_slices"], data["image_size"]
        )
        self.model = load_fwd(Path(args.model), self.obs, device)
        self.method = Method.from_config(s["method"])
        self.sampling = Sampling.from_config(s, final_dc=False)
        n = self.obs.n_angles
        self.context = equispaced(n, s["context_views"])
        self.target = target_views(n, self.context, s["target_views"])
        self.depth = int(data["volume_slices"])
        self.record = {"step": "sample fwd", "config": cfg, "data": str(args.data), "model": str(args.model)}

    def reference(self, local: np.ndarray) -> tuple[np.ndarray, str]:
        """The truth of the slices when the store has it (evaluation only), else the FBP of all views."""
        from diffinv.stages.fwd.evaluate import has_truth, load_truth

        store = Path(self.record["data"])
        if self.fwd["data"]["reference"] == "truth" and has_truth(store):
            return load_truth(store, [self.obs.case_ids[i] for i in local]), "ground truth"
        views = np.arange(self.obs.n_angles)
        return _slice_fbp(self.obs, local, views, self.fwd["data"]["filter"]).numpy(), "FBP of all views"

    def volume(self, j: int) -> xr.Dataset:
        """The block of the j-th evaluation volume: samples/mean/std, FBP of the context views,
        reference, diagnostics."""
        local = np.arange(j * self.depth, (j + 1) * self.depth)
        rows = case_rows([self.obs.case_ids[i] for i in local])
        s = self.fwd["sampling"]
        results = [
            reconstruct(
                self.model,
                self.obs,
                int(r),
                self.context,
                self.target,
                self.method,
                self.sampling,
                s["guidance_scale"],
                self.cfg["seed"],
                self.device,
                s["nonnegative"],
            )
            for r in local
        ]
        samples = torch.stack([r.samples for r in results], 1).numpy().astype(np.float32)[None]
        units = "1 (attenuation / mu_max)" if self.obs.length_units == "m" else f"{self.obs.length_units}^-1"
        variables: dict[str, Any] = posterior_variables(
            samples, ("volume", "sample", "z", "y", "x"), what="attenuation"
        )
        for name in variables:
            variables[name][2]["units"] = units
        reference, kind = self.reference(local)
        image = ("volume", "z", "y", "x")
        fbp_ctx = _slice_fbp(self.obs, local, self.context, self.fwd["data"]["filter"]).numpy()
        variables.update(
            reference=(image, reference[None], {"long_name": kind, "units": units}),
            fbp=(image, fbp_ctx[None], {"long_name": "FBP of the context views", "units": units}),
            relative_residual=(
                ("volume", "sample", "z"),
                torch.stack([r.context_residual for r in results], 1).numpy()[None],
                {"long_name": "||y_ctx - A_ctx x|| / ||y_ctx|| of each sample", "units": "1"},
            ),
            nfe=(("volume",), [results[0].nfe], {"long_name": "network evaluations per sample and slice"}),
            wall_time_s=(("volume",), [sum(r.wall_time_s for r in results)], {"units": "s"}),
        )
        ny, nx = self.obs.image_shape
        centre = lambda n: (np.arange(n) - (n - 1) / 2) * self.obs.pixel_size  # noqa: E731
        return xr.Dataset(
            variables,
            coords={
                "volume": ("volume", [f"{self.obs.source}:{rows[0]}-{rows[-1] + 1}"]),
                "sample": ("sample", np.arange(samples.shape[1])),
                "z": ("z", rows, {"long_name": "axial slice (projection index)", "units": "1"}),
                "y": ("y", -centre(ny), {"long_name": "y (up)", "units": self.obs.length_units}),
                "x": ("x", centre(nx), {"long_name": "x (right)", "units": self.obs.length_units}),
            },
            attrs=self.attrs(),
        )

    def attrs(self) -> dict[str, Any]:
        """Store attributes: stage, views, method, guidance scale."""
        s = self.fwd["sampling"]
        return {
            "stage": "fwd",
            "context_views": self.context.tolist(),
            "target_views": self.target.tolist(),
            "method_plugins": self.method.name,
            "guidance_scale": float(s["guidance_scale"]),
            "angles_deg": np.degrees(self.obs.angles_rad[self.context]).round(4).tolist(),
        }

    def write(self, out: Path) -> Path:
        """The store, one block per volume, resumable from its last completed volume."""
        n_vol = len(volumes(self.fwd["data"], True))
        record = sampling_provenance(
            self.record, self.model.net, self.method, self.sampling, self.cfg["seed"], self.device
        )
        key = resume_key(self.cfg, self.record, self.model.fingerprint())
        cases = [lambda j=j: self.volume(j) for j in range(n_vol)]
        return write_resumable(cases, out, "volume", key, record, "sample fwd")


def sample(args: argparse.Namespace, cfg: dict[str, Any], device: str) -> None:
    """``diffinv sample fwd``: posterior store of the evaluation volumes."""
    job = Sampler(args, cfg, device)
    out = job.write(Path(args.output))
    print(f"wrote {out}")
