"""LoDoPaB-CT-layout projection files from random 3D ellipsoid phantoms with Poisson noise.

Each phantom volume (slices x size x size, attenuation in [0, 1] normalised by mu_max) is
projected slice by slice in the LoDoPaB geometry: parallel beam over [0, pi) at angles
(i + 1/2) pi / n_angles, image extent 0.26 m, detector of 2 ceil(size / sqrt 2) + 1 pixels
spanning 0.26 sqrt 2 m. Noise follows the LoDoPaB recipe: counts ~ Poisson(N0 exp(-mu_max y))
with N0 = 4096 photons, zero counts replaced by 0.1, observation -ln(counts / N0) / mu_max.
Slices are written as samples of ``observation_{split}_{NNN}.hdf5`` (dataset ``data``) with
the phantoms in ``ground_truth_{split}_{NNN}.hdf5``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
from skimage.transform import radon

from diffinv.io import options as opt
from diffinv.io.ct import LODOPAB_HALF_WIDTH, LODOPAB_MU_MAX, LODOPAB_PHOTONS
from diffinv.io.store import atomic_path

OPTIONS = {
    "volumes": "number of phantom volumes (default 2)",
    "slices": "slices per volume (default 8)",
    "size": "image size in pixels (default 64)",
    "angles": "projection angles (default 90)",
    "samples_per_file": "samples per observation file (default 128, as LoDoPaB)",
    "split": "split name in the file names (default test)",
}


def phantom_volume(rng: np.random.Generator, slices: int, size: int, ellipsoids: int = 8) -> np.ndarray:
    """A (slices, size, size) volume of random overlapping ellipsoids inside a body ellipsoid, in [0, 1]."""
    z, y, x = np.meshgrid(
        np.linspace(-1, 1, slices), np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij"
    )
    vol = 0.25 * ((x / 0.85) ** 2 + (y / 0.7) ** 2 + (z / 1.2) ** 2 <= 1)
    for _ in range(ellipsoids):
        centre = rng.uniform(-0.45, 0.45, 3)
        axes = rng.uniform(0.08, 0.3, 3)
        theta = rng.uniform(0, np.pi)
        xr_ = (x - centre[0]) * np.cos(theta) + (y - centre[1]) * np.sin(theta)
        yr_ = -(x - centre[0]) * np.sin(theta) + (y - centre[1]) * np.cos(theta)
        inside = (xr_ / axes[0]) ** 2 + (yr_ / axes[1]) ** 2 + ((z - centre[2]) / axes[2]) ** 2 <= 1
        vol += rng.uniform(-0.1, 0.3) * inside
    return np.clip(vol, 0, 1).astype(np.float32)


def lodopab_detector(size: int) -> np.ndarray:
    """Detector pixel centres (m) of the LoDoPaB geometry for a ``size``² image (513 for 362)."""
    n_det = 2 * int(np.ceil(size / np.sqrt(2))) + 1
    half = LODOPAB_HALF_WIDTH * np.sqrt(2)
    return (np.arange(n_det) - (n_det - 1) / 2) * (2 * half / n_det)


def project(image: np.ndarray, n_angles: int) -> np.ndarray:
    """Noise-free line integrals (m) of ``image`` on the LoDoPaB angles and detector, (angle, detector)."""
    size = image.shape[0]
    pixel = 2 * LODOPAB_HALF_WIDTH / size
    theta = (np.arange(n_angles) + 0.5) * 180.0 / n_angles
    sino = radon(image.astype(np.float64), theta=theta, circle=False).T * pixel  # (angle, padded detector)
    source = (np.arange(sino.shape[1]) - sino.shape[1] // 2) * pixel
    target = lodopab_detector(size)
    return np.stack([np.interp(target, source, row, left=0.0, right=0.0) for row in sino])


def write_demo(out: Path, seed: int, **options: Any) -> list[Path]:
    """Write LoDoPaB-layout observation and ground-truth HDF5 files under ``out``.

    Parameters
    ----------
    out
        Output folder (created).
    seed
        Seeds the phantoms and the Poisson noise.
    **options
        See :data:`OPTIONS`.

    Returns
    -------
    list of Path
        The observation files (each with its ground-truth file beside it).
    """
    opt.check_options("demo-data ct", options, OPTIONS)
    rng = np.random.default_rng(seed)
    size, n_angles = int(options.get("size", 64)), int(options.get("angles", 90))
    volumes = [
        phantom_volume(rng, int(options.get("slices", 8)), size)
        for _ in range(int(options.get("volumes", 2)))
    ]
    truth = np.concatenate(volumes)
    clean = np.stack([project(img, n_angles) for img in truth])
    counts = rng.poisson(LODOPAB_PHOTONS * np.exp(-LODOPAB_MU_MAX * clean)).astype(np.float64)
    observation = (-np.log(np.maximum(counts, 0.1) / LODOPAB_PHOTONS) / LODOPAB_MU_MAX).astype(np.float32)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    per_file = int(options.get("samples_per_file", 128))
    split = options.get("split", "test")
    paths = []
    for k, start in enumerate(range(0, len(truth), per_file)):
        obs_path = out / f"observation_{split}_{k:03d}.hdf5"
        for path, data in ((out / f"ground_truth_{split}_{k:03d}.hdf5", truth), (obs_path, observation)):
            with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
                f.create_dataset("data", data=data[start : start + per_file], chunks=(1, *data.shape[1:]))
        paths.append(obs_path)
    return paths
