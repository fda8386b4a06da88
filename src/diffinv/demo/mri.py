"""Synthetic anatomy-like MRI slices written as fastMRI-layout HDF5 files.

Each volume is a stack of slices of one random "anatomy": an elliptical body with a fat
rim, several inner organs of varied contrast, smooth texture, a slowly varying phase,
smooth coil sensitivities and complex Gaussian k-space noise. Files follow the fastMRI
multi-coil layout (``kspace`` (slices, coils, 2N, N) with 2x readout oversampling,
``reconstruction_rss`` (slices, N, N), ``ismrmrd_header`` XML, attrs), or with one coil the
single-coil layout (``kspace`` (slices, 2N, N), ``reconstruction_esc``); test files hold
undersampled k-space, ``mask`` and the ``acceleration``/``num_low_frequency`` attrs and no
target, as in the fastMRI test/challenge sets.
"""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np

from diffinv.errors import ConfigError
from diffinv.io.store import atomic_path
from diffinv.operators.mri import center_mask

_HEADER = """<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">
  <encoding>
    <encodedSpace><matrixSize><x>{ex}</x><y>{ey}</y><z>1</z></matrixSize></encodedSpace>
    <reconSpace><matrixSize><x>{rx}</x><y>{ry}</y><z>1</z></matrixSize></reconSpace>
    <encodingLimits>
      <kspace_encoding_step_1><minimum>0</minimum><maximum>{emax}</maximum><center>{ecenter}</center></kspace_encoding_step_1>
    </encodingLimits>
  </encoding>
</ismrmrdHeader>
"""


def _smooth_field(rng: np.random.Generator, n: int, cutoff: float) -> np.ndarray:
    """Zero-mean unit-std random field with a Gaussian spectrum of width ``cutoff`` (cycles/px)."""
    f = np.fft.fftfreq(n)
    k2 = f[:, None] ** 2 + f[None, :] ** 2
    spec = (rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n))) * np.exp(-k2 / (2 * cutoff**2))
    field = np.fft.ifft2(spec).real
    return (field - field.mean()) / (field.std() + 1e-12)


def _ellipse(
    yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float, angle: float
) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    u = (xx - cx) * c + (yy - cy) * s
    v = -(xx - cx) * s + (yy - cy) * c
    return (u / rx) ** 2 + (v / ry) ** 2


def phantom_volume(rng: np.random.Generator, n: int, slices: int) -> np.ndarray:
    """(slices, n, n) complex64 anatomy-like images with magnitude in about [0, 1]."""
    yy, xx = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, n), indexing="ij")
    angle = rng.uniform(-0.4, 0.4)
    body = (rng.uniform(0.6, 0.85), rng.uniform(0.55, 0.85))
    organs = [
        (
            rng.uniform(-0.4, 0.4),
            rng.uniform(-0.4, 0.4),
            rng.uniform(0.1, 0.35),
            rng.uniform(0.08, 0.3),
            rng.uniform(0, math.pi),
            rng.uniform(0.15, 1.0),
        )
        for _ in range(rng.integers(2, 6))
    ]
    texture_scale = rng.uniform(0.03, 0.12)
    base = rng.uniform(0.35, 0.6)
    out = np.empty((slices, n, n), np.complex64)
    for k in range(slices):
        z = (k - (slices - 1) / 2) / max(1, slices)  # slice position in [-0.5, 0.5]
        shrink = math.sqrt(max(0.2, 1 - 1.5 * z**2))
        d_body = _ellipse(yy, xx, 0.0, 0.0, body[0] * shrink, body[1] * shrink, angle)
        img = np.where(d_body < 1, base, 0.0)
        img = np.where((d_body < 1) & (d_body > 0.8), 0.9, img)  # bright fat rim
        for cy, cx, ry, rx, a, level in organs:
            inside = _ellipse(yy, xx, cy * shrink, cx * shrink, ry * shrink, rx * shrink, a + angle) < 1
            img = np.where(inside & (d_body < 0.8), level, img)
        img = img * (1 + texture_scale * _smooth_field(rng, n, 0.12)) * (d_body < 1)
        phase = 0.4 * _smooth_field(rng, n, 0.03) + rng.uniform(-0.3, 0.3) * xx
        out[k] = (np.clip(img, 0, None) * np.exp(1j * phase)).astype(np.complex64)
    return out


def coil_maps(rng: np.random.Generator, coils: int, shape: tuple[int, int]) -> np.ndarray:
    """(coils, H, W) smooth complex sensitivities of coils placed on a ring around the FOV."""
    h, w = shape
    yy, xx = np.meshgrid(np.linspace(-h / w, h / w, h), np.linspace(-1, 1, w), indexing="ij")
    maps = np.empty((coils, h, w), np.complex64)
    for c in range(coils):
        phi = 2 * math.pi * c / coils + rng.uniform(-0.2, 0.2)
        cy, cx = 1.4 * math.sin(phi), 1.4 * math.cos(phi)
        dist2 = (yy - cy) ** 2 + (xx - cx) ** 2
        mag = np.exp(-dist2 / (2 * 1.1**2))
        maps[c] = mag * np.exp(
            1j * (0.8 * (yy * math.cos(phi) + xx * math.sin(phi)) + rng.uniform(0, 2 * math.pi))
        )
    return maps / np.sqrt((np.abs(maps) ** 2).sum(0).max())


def _fft2c(x: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def _ifft2c(k: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def write_volume(
    path: Path,
    images: np.ndarray,
    maps: np.ndarray,
    noise_std: float,
    rng: np.random.Generator,
    test_mask: np.ndarray | None = None,
    num_low: int = 0,
) -> Path:
    """Write one fastMRI-layout multi-coil HDF5 file atomically.

    The images (slices, N, N) are placed in a 2N x N field of view (2x readout
    oversampling), multiplied by the coil maps and Fourier transformed.
    """
    slices, n, _ = images.shape
    fov = np.zeros((slices, 2 * n, n), np.complex64)
    fov[:, n // 2 : n // 2 + n] = images
    coil_imgs = maps[None] * fov[:, None]
    kspace = _fft2c(coil_imgs)
    kspace += noise_std * (rng.standard_normal(kspace.shape) + 1j * rng.standard_normal(kspace.shape))
    kspace = kspace.astype(np.complex64)
    rss_full = np.sqrt((np.abs(_ifft2c(kspace)) ** 2).sum(1))[:, n // 2 : n // 2 + n].astype(np.float32)
    single = maps.shape[0] == 1
    if single:  # fastMRI single-coil layout: (slices, H, W) and an ESC target
        kspace = kspace[:, 0]
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        header = _HEADER.format(ex=2 * n, ey=n, rx=n, ry=n, emax=n - 1, ecenter=n // 2)
        f.create_dataset("ismrmrd_header", data=np.bytes_(header.encode()))
        f.attrs["acquisition"] = "CORPD_FBK"
        f.attrs["patient_id"] = path.stem
        if test_mask is None:
            f.create_dataset("kspace", data=kspace)
            f.create_dataset("reconstruction_esc" if single else "reconstruction_rss", data=rss_full)
            f.attrs["max"] = float(rss_full.max())
            f.attrs["norm"] = float(np.linalg.norm(rss_full))
        else:
            f.create_dataset("kspace", data=kspace * test_mask)
            f.create_dataset("mask", data=test_mask.astype(bool))
            f.attrs["acceleration"] = int(round(n / test_mask.sum()))
            f.attrs["num_low_frequency"] = int(num_low)
    return path


def write_demo(
    out: Path,
    seed: int = 0,
    size: int = 32,
    coils: int = 4,
    slices_per_volume: int = 8,
    train_volumes: int = 250,
    val_volumes: int = 2,
    test_volumes: int = 1,
    noise_std: float = 0.002,
    test_acceleration: int = 4,
    center_fraction: float = 0.08,
) -> list[Path]:
    """Write ``train/``, ``val/`` (fully sampled, with targets) and ``test/`` (undersampled) files.

    ``noise_std`` is relative to the images' peak magnitude of about 1.
    """
    if size < 8 or size % 2:
        raise ConfigError(f"demo.mri.size: must be an even number >= 8, got {size}")
    rng = np.random.default_rng(seed)
    maps = (
        coil_maps(rng, coils, (2 * size, size)) if coils > 1 else np.ones((1, 2 * size, size), np.complex64)
    )
    written: list[Path] = []
    for split, count in (("train", train_volumes), ("val", val_volumes), ("test", test_volumes)):
        for v in range(count):
            vol_rng = np.random.default_rng([seed, ("train", "val", "test").index(split), v])
            images = phantom_volume(vol_rng, size, slices_per_volume)
            path = Path(out) / split / f"file_demo_{split}_{v:04d}.h5"
            mask, num_low = None, 0
            if split == "test":
                num_low = max(2, int(round(size * center_fraction)))
                mask = center_mask(size, num_low).numpy()
                mask[vol_rng.permutation(size)[: max(0, size // test_acceleration - num_low)]] = True
            written.append(write_volume(path, images, maps, noise_std, vol_rng, mask, num_low))
    return written
