"""3D MRI volumes of an ingested fastMRI store: consecutive slices of one file, 3D k-space, one scale.

A fastMRI store (``diffinv ingest fastmri``) holds 2D k-space per slice, ``kspace (slice, coil,
readout, phase)``, with ``file`` and ``slice_in_file`` per slice. The consecutive slices of one
file form a volume; its 3D k-space is the centred 1D FFT along z of the slices' k-space (the
slices are fully sampled, so this is exact). Coil sensitivities are those of the MRI stage, per
slice from its calibration lines (:func:`diffinv.stages.mri.cases.prepare_cases`).

Normalisation: one scale per volume, the 99th percentile of the root-sum-of-squares magnitude
of the volume reconstructed from the calibration block of its 3D k-space only (the fully
sampled centre of every mask, :func:`~diffinv.operators.mri3d.calibration_block`), so it is
available from undersampled data too. The 2D MRI stage uses the same statistic per slice
(calibration lines), so the slices stay O(1) as the prior was trained.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diffinv.errors import ConfigError, InputError
from diffinv.operators.mri3d import calibration_block, fftc, ifftc
from diffinv.stages.mri.cases import CaseSource


@dataclass
class MRIVolume:
    """One volume on the reconstruction grid, normalised by ``scale``."""

    label: str  # the file's name
    slices: np.ndarray  # (Z,) slice_in_file
    kspace: Tensor  # (Z, C, H, W) complex 3D k-space (kz, coil, readout, phase), divided by scale
    sensitivities: Tensor | None  # (Z, C, H, W) per slice, or None (single coil)
    truth: Tensor  # (Z, 2, H, W) normalised
    scale: float


class VolumeSource:
    """The volumes of an ingested fastMRI store under ``mri3d.data`` (``data``).

    ``center_fraction`` is ``mri.data.center_fraction`` (calibration lines of files without
    ``num_low_frequency``: coil sensitivities); ``mask_center_fraction`` sizes the calibration
    block of the normalisation.
    """

    def __init__(
        self, store: Path, center_fraction: float, data: Mapping[str, Any], mask_center_fraction: float
    ) -> None:
        self.cases = CaseSource(Path(store), center_fraction)
        self.store, self.grid, self.mask_center_fraction = Path(store), self.cases.grid, mask_center_fraction
        ds = self.cases.ds
        files = [str(f) for f in ds["file"].values]
        numbers = np.asarray(ds["slice_in_file"].values, int)
        acquired = np.asarray(ds["mask"].values, bool).all(1)
        runs: dict[str, list[int]] = {}
        for i, f in enumerate(files):
            if f in runs and runs[f][-1] != i - 1:
                raise InputError(
                    self.store,
                    f"the slices of {f} are not consecutive in the store",
                    "ingest each file's slices together, or leave the file out with mri3d.data.files",
                )
            runs.setdefault(f, []).append(i)
        wanted = data.get("files")
        if wanted is not None:
            unknown = sorted(set(wanted) - set(runs))
            if unknown:
                raise ConfigError(
                    f"mri3d.data.files: {', '.join(unknown)} not in {store} "
                    f"(fix: use some of {', '.join(runs)})"
                )
            runs = {f: runs[f] for f in runs if f in set(wanted)}
        if data.get("volumes") is not None:
            runs = dict(list(runs.items())[: data["volumes"]])
        depth = data.get("depth")
        self.volumes: dict[str, list[int]] = {}
        for f, pos in runs.items():
            if np.any(np.diff(numbers[pos]) != 1):
                raise InputError(
                    self.store,
                    f"the slices of {f} are not consecutive (slice_in_file {numbers[pos].tolist()})",
                    "leave the file out with mri3d.data.files",
                )
            if not acquired[pos].all():
                raise InputError(
                    self.store,
                    f"{f} is not fully sampled (a prospectively undersampled file has no 3D k-space to "
                    "undersample retrospectively)",
                    "leave it out with mri3d.data.files, or reconstruct a val/train store",
                )
            if depth is not None:
                if depth > len(pos):
                    raise ConfigError(
                        f"mri3d.data.depth: {depth} slices but {f} has {len(pos)} in {store} "
                        f"(fix: set depth to at most {len(pos)}, or leave the file out with mri3d.data.files)"
                    )
                start = (len(pos) - depth) // 2
                pos = pos[start : start + depth]
            self.volumes[f] = pos
        depths = {len(p) for p in self.volumes.values()}
        if len(depths) > 1:
            raise ConfigError(
                f"mri3d.data.depth: the volumes of {store} have {sorted(depths)} slices and one store holds "
                f"one depth (fix: set mri3d.data.depth to at most {min(depths)}: the central slices)"
            )
        if not self.volumes:
            raise ConfigError(f"mri3d.data: no volume selected in {store} (fix: check files and volumes)")
        self.depth = depths.pop()
        self.numbers = numbers

    def __len__(self) -> int:
        return len(self.volumes)

    @property
    def labels(self) -> list[str]:
        """The volumes' names (their files), in store order."""
        return list(self.volumes)

    def volume(self, label: str) -> MRIVolume:
        """The volume of file ``label``: 3D k-space, sensitivities and truth, normalised."""
        pos = self.volumes[label]
        cases = self.cases.take(pos)
        raw = torch.stack([c.kspace * c.scale for c in cases])  # (Z, C, H, W) 2D k-space per slice
        sens = None if cases[0].sensitivities is None else torch.stack([c.sensitivities for c in cases])
        truth = torch.stack([c.truth * c.scale for c in cases])  # type: ignore[operator]
        k3 = fftc(raw, (0,))
        block = calibration_block((k3.shape[0], k3.shape[-1]), self.mask_center_fraction)
        low = ifftc(k3 * block[:, None, None, :], (0, -2, -1))
        scale = float(np.quantile((low.abs() ** 2).sum(1).sqrt().numpy(), 0.99))  # any size (torch: < 2^24)
        if not np.isfinite(scale) or scale <= 0:
            raise InputError(
                self.store, f"the calibration block of {label} holds no signal", "check the k-space"
            )
        return MRIVolume(label, self.numbers[pos], k3 / scale, sens, truth / scale, scale)
