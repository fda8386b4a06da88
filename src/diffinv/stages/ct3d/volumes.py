"""3D CT cases: volumes of an ingested projection store, view subsets (tasks), the slice prior.

A projection store (``diffinv ingest ct``) holds ``sinogram (projection, angle, detector)``,
one sinogram per axial slice (LoDoPaB samples, or detector rows of a 3D scan). Consecutive
``ct3d.data.volume_slices`` projections form a volume; the first ``train_volumes`` train the
prior, the next ``eval_volumes`` are reconstructed. A *task* keeps a subset of the views
(sparse-view: ``views`` evenly over the scan; limited-angle: the views inside a ``wedge``).

Units: the stage works in pixel units (line integrals divided by the pixel size, so the
operator's weights are path lengths in pixels) and in the prior's normalised values
x_n = (x − offset) / scale (offset, scale from the training images' 0.5 and 99.5 % quantiles,
so training slices span about [−1, 1]). The affine normalisation moves into the data:
y_n = (y / p − offset · A𝟙) / scale, and A x_n = y_n is linear again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from diffinv.errors import ConfigError, InputError
from diffinv.io.store import open_zarr
from diffinv.operators.ct import ParallelBeamCT, fbp
from diffinv.stages.slices import SliceDenoiser  # noqa: F401  (moved; imported from here by callers)


@dataclass(frozen=True)
class Normalisation:
    """x_n = (x − offset) / scale, in the data's attenuation units."""

    offset: float
    scale: float

    @classmethod
    def of(cls, images: np.ndarray) -> Normalisation:
        """From training images: their 0.5 and 99.5 % quantiles map to −1 and 1."""
        lo, hi = (float(v) for v in np.quantile(images, [0.005, 0.995]))
        if not hi > lo:
            raise InputError("training images", f"constant values ({lo:g})", "train on slices with structure")
        return cls((hi + lo) / 2, (hi - lo) / 2)

    def to_prior(self, x: Tensor) -> Tensor:
        """Data units to the prior's units."""
        return (x - self.offset) / self.scale

    def to_data(self, x: Tensor) -> Tensor:
        """The prior's units to data units."""
        return x * self.scale + self.offset


@dataclass
class Volume:
    """One volume of the store: its projections ``rows`` (start, stop), sinograms and reference."""

    label: str
    rows: tuple[int, int]
    sinogram: Tensor  # (Z, n_angles, n_det), data units
    truth: Tensor | None  # (Z, ny, nx), data units, when the store has it


@dataclass(frozen=True)
class Task:
    """A view subset: ``views`` evenly over the scan, or the views inside a ``wedge`` (degrees)."""

    name: str
    views: int | None = None
    wedge: float | None = None
    start: float = 0.0

    @classmethod
    def from_config(cls, entry: Mapping[str, Any]) -> Task:
        """A task from a ``ct3d.tasks`` entry."""
        return cls(entry["name"], entry.get("views"), entry.get("wedge"), float(entry.get("start", 0.0)))

    def select(self, angles: np.ndarray) -> np.ndarray:
        """Indices of the views to keep, in acquisition order."""
        n = len(angles)
        keep = np.arange(n)
        if self.wedge is not None:
            rel = np.remainder(np.degrees(angles - angles[0]) - self.start, 360.0)
            keep = keep[rel < self.wedge]
        if self.views is not None:
            if self.views > len(keep):
                raise ConfigError(
                    f"ct3d.tasks {self.name}: {self.views} views but the scan has {len(keep)} in its range "
                    "(fix: ask for fewer views)"
                )
            keep = keep[np.floor(np.arange(self.views) * len(keep) / self.views).astype(int)]
        if len(keep) == 0:
            raise ConfigError(f"ct3d.tasks {self.name}: no view in the wedge (fix: check start and wedge)")
        return keep


class CTStore:
    """An ingested projection store split into volumes and the geometry of its reconstructions."""

    def __init__(self, store: Path, data: Mapping[str, Any]) -> None:
        ds = open_zarr(store)
        if "sinogram" not in ds or "angle" not in ds.coords:
            raise InputError(
                store, "not a CT projection store", "pass a store written by 'diffinv ingest ct'"
            )
        self.store, self.ds, self.data = Path(store), ds, data
        start, stop = data["rows"] or (0, ds.sizes["projection"])
        if not 0 <= start < stop <= ds.sizes["projection"]:
            raise ConfigError(
                f"ct3d.data.rows: [{start}, {stop}] is outside the store's {ds.sizes['projection']} "
                f"projections of {store} (fix: pick rows in [0, {ds.sizes['projection']}])"
            )
        depth = data["volume_slices"] or (stop - start)
        if (stop - start) % depth:
            raise ConfigError(
                f"ct3d.data.volume_slices: {depth} does not divide the {stop - start} projections of {store} "
                "(fix: set volume_slices to a divisor, or crop with ct3d.data.rows)"
            )
        self.bounds = [(r, r + depth) for r in range(start, stop, depth)]
        self.train_volumes = int(data["train_volumes"])
        n_eval = data.get("eval_volumes") or len(self.bounds) - self.train_volumes
        if self.train_volumes + max(n_eval, "eval_volumes" in data) > len(self.bounds):
            raise ConfigError(
                f"ct3d.data: {self.train_volumes} training + {n_eval} evaluation volumes of {depth} slices, "
                f"but {store} holds {len(self.bounds)} "
                "(fix: lower train_volumes/eval_volumes or volume_slices)"
            )
        self.eval_bounds = self.bounds[self.train_volumes : self.train_volumes + n_eval]
        self.image_shape = self._image_shape(data.get("image_size"))
        self.angles = np.asarray(ds["angle"].values, np.float64)
        dense = ParallelBeamCT.from_store(ds, self.image_shape)
        self.pixel_size = dense.pixel_size
        self.source = Path(_source_files(ds)[0]).name if _source_files(ds) else self.store.name

    def _image_shape(self, size: int | None) -> tuple[int, int]:
        if "truth" in self.ds:
            shape = (self.ds.sizes["y"], self.ds.sizes["x"])
            if size is not None and (size, size) != shape:
                raise ConfigError(
                    f"ct3d.data.image_size: {size} but the truth of {self.store} is {shape[0]}x{shape[1]} "
                    "(fix: set it to null or to the truth's size)"
                )
            return shape
        n = size or self.ds.sizes["detector"]
        return (int(n), int(n))

    def operator(self, views: np.ndarray) -> ParallelBeamCT:
        """The operator of ``views`` in pixel units (weights are path lengths in pixels)."""
        op = ParallelBeamCT.from_store(self.ds.isel(angle=views), self.image_shape)
        p = op.pixel_size
        return ParallelBeamCT(op.image_shape, op.angles, op.n_det, 1.0, op.det_spacing / p, op.det_offset / p)

    def volume(self, bounds: tuple[int, int]) -> Volume:
        """The sinograms (and truth) of the projections ``bounds``."""
        block = self.ds.isel(projection=slice(*bounds))
        sino = torch.from_numpy(np.asarray(block["sinogram"].values, np.float32))
        if not bool(torch.isfinite(sino).all()):
            raise InputError(self.store, f"non-finite sinogram values in projections {bounds}", "re-ingest")
        truth = torch.from_numpy(np.asarray(block["truth"].values, np.float32)) if "truth" in block else None
        return Volume(f"{self.source}:{bounds[0]}-{bounds[1]}", bounds, sino, truth)

    def fbp(self, sinogram: Tensor, views: np.ndarray, filter: str) -> Tensor:
        """FBP (data units) of the ``views`` of a volume's sinograms (Z, n_views, n_det)."""
        op = self.operator(views)
        return fbp(sinogram / self.pixel_size, op, filter)  # type: ignore[arg-type]

    def reference(self, volume: Volume, kind: str, filter: str) -> Tensor:
        """The reference volume: the stored truth, or the FBP of all (dense) views."""
        if kind == "truth":
            if volume.truth is None:
                raise ConfigError(
                    f"ct3d.data.reference: truth, but {self.store} has no 'truth' variable "
                    "(fix: set ct3d.data.reference to dense_fbp)"
                )
            return volume.truth
        return self.fbp(volume.sinogram, np.arange(len(self.angles)), filter)

    def training_images(self, train_on: str, filter: str) -> Tensor:
        """(N, 1, ny, nx) training slices (data units) of the training volumes."""
        slices = [
            self.reference(self.volume(b), "truth" if train_on == "truth" else "dense_fbp", filter)
            for b in self.bounds[: self.train_volumes]
        ]
        return torch.cat(slices)[:, None]


def _source_files(ds: xr.Dataset) -> list[str]:
    import json

    try:
        return list(json.loads(ds.attrs.get("provenance", "{}")).get("source_files", []))
    except (json.JSONDecodeError, AttributeError):
        return []


def normalised_problem_data(
    sinogram: Tensor, op: ParallelBeamCT, pixel_size: float, norm: Normalisation
) -> Tensor:
    """y_n = (y / p − offset · A𝟙) / scale for sinograms (Z, n_views, n_det) in data units."""
    ones = torch.ones((1, sinogram.shape[0], *op.image_shape), dtype=torch.float32)
    return (sinogram[None] / pixel_size - norm.offset * op.A(ones)) / norm.scale


def view_angles_deg(angles: np.ndarray) -> Sequence[float]:
    """Angles in degrees, rounded for attributes."""
    return [round(math.degrees(a), 4) for a in angles]
