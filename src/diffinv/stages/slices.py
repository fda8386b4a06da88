"""The 2D slice prior of the volume stages (3D CT, 3D MRI): a 2D denoiser on every axial slice."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from diffinv.diffusion.denoisers import content_hash, fingerprint


class SliceDenoiser:
    """A 2D prior on every axial slice of volume particles, ``slice_batch`` slices per call.

    Particles (n, Z, ny, nx) are one-channel slices (CT); (n, Z, C, ny, nx) are C-channel
    slices (e.g. the (real, imag) slices of 3D MRI).

    DiffusionMBIR (Chung et al. 2023, Sec. 3.2): the 2D score is applied slice by slice; the
    coupling between slices comes from the data-consistency step (e.g. ``admm_tv``). Network
    memory is bounded by ``slice_batch``, whatever the depth. ``slices`` counts evaluated slices.
    ``floor`` (the prior's units) clamps the x0 predictions from below: attenuation is not
    negative, a value constraint like the prior's ``clip``.
    """

    def __init__(self, prior: Any, slice_batch: int, floor: float | None = None) -> None:
        self.prior, self.slice_batch, self.floor = prior, int(slice_batch), floor
        self.schedule = prior.schedule
        self.clip = getattr(prior, "clip", None)
        self.slices = 0

    @property
    def autocast(self) -> torch.dtype | None:
        """The inner network's autocast dtype (see :func:`diffinv.stages.core.network_precision`)."""
        return self.prior.autocast

    @autocast.setter
    def autocast(self, dtype: torch.dtype | None) -> None:
        self.prior.autocast = dtype

    def parameters(self) -> Any:
        """The inner network's parameters."""
        return self.prior.parameters()

    def fingerprint(self) -> str | None:
        """Content hash of the inner prior's fingerprint and the floor (slicing does not change values)."""
        inner = fingerprint(self.prior)
        return None if inner is None else content_hash((inner, self.floor))

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        n, depth = x.shape[:2]
        t = torch.as_tensor(t, dtype=torch.float64, device=x.device).reshape(-1).expand(n)
        event = x.shape[2:] if x.ndim > 4 else (1, *x.shape[2:])
        flat, times = x.reshape(n * depth, *event), t.repeat_interleave(depth)
        b = self.slice_batch
        out = torch.cat([self.prior(flat[i : i + b], times[i : i + b]) for i in range(0, n * depth, b)])
        self.slices += n * depth
        out = out.reshape(x.shape)
        return out.clamp_min(self.floor) if self.floor is not None else out


class VolumeJob(Protocol):
    """What :func:`write_volumes` needs of a volume stage's sampling job."""

    record: Mapping[str, Any]
    prior: SliceDenoiser
    method: Any  # stages.core.Method
    sampling: Any  # stages.core.Sampling
    cfg: Mapping[str, Any]
    device: str

    def case(self, volume: Any) -> Any:
        """The store block (an ``xarray.Dataset``) of one volume."""

    def attrs(self) -> dict[str, Any]:
        """The store's attributes."""


def write_volumes(
    job: VolumeJob, out: Path, items: Iterable[Any], load: Callable[[Any], Any], desc: str
) -> Path:
    """Write ``job``'s store, one block per volume ``load(item)``, resumable from its last completed
    volume (:func:`~diffinv.stages.core.write_resumable`), with the job's provenance."""
    from diffinv.stages.core import resume_key, sampling_provenance, write_resumable

    prov = sampling_provenance(job.record, job.prior, job.method, job.sampling, job.cfg["seed"], job.device)
    key = resume_key(job.record, job.method.as_dict(), job.sampling, job.prior.fingerprint())

    def block(item: Any) -> Any:
        ds = job.case(load(item))
        ds.attrs.update(job.attrs())
        return ds

    return write_resumable([functools.partial(block, i) for i in items], out, "volume", key, prov, desc)


def volume_diagnostics(res: Any, slices: float) -> dict[str, tuple[tuple[str, ...], Any, dict[str, str]]]:
    """Per-volume store variables of one volume's :class:`~diffinv.stages.core.CaseSamples` (a
    volume dim of 1): hallucination score and residual per sample, NFE, 2D network evaluations
    (``slices`` per posterior sample) and wall time."""
    import numpy as np

    per_sample = ("volume", "sample")
    return {
        "hallucination_score": (
            per_sample,
            res.hallucination_score.numpy()[None],
            {"long_name": "variance of x0 predictions over the final steps", "units": "normalised^2"},
        ),
        "relative_residual": (
            per_sample,
            res.relative_residual.numpy()[None],
            {"long_name": "||y - A x|| / ||y|| (normalised units)", "units": "1"},
        ),
        "nfe": (
            ("volume",),
            np.array([res.nfe]),
            {"long_name": "denoiser evaluations of the volume per posterior sample", "units": "1"},
        ),
        "slice_evaluations": (
            ("volume",),
            np.array([slices]),
            {"long_name": "2D network evaluations (slices) per posterior sample", "units": "1"},
        ),
        "wall_time_s": (
            ("volume",),
            np.array([res.wall_time_s]),
            {"long_name": "wall time of posterior sampling", "units": "s"},
        ),
    }
