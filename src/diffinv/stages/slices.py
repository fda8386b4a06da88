"""The 2D slice prior of the volume stages (3D CT, 3D MRI): a 2D denoiser on every axial slice."""

from __future__ import annotations

from typing import Any

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
