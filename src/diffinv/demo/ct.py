"""LoDoPaB-CT-layout projection files of random 3D torso phantoms, with exact projections and Poisson noise.

Phantom: a sum of constant-valued ellipsoids rotated about the z axis only, so that every axial
slice is a sum of ellipses (:func:`random_anatomy`). Values are attenuations normalised by
mu_max = 81.36 m-1 (LoDoPaB; water ~0.25): a body of fat (~0.22) around soft tissue (~0.255),
two air-like lungs (~0.03) in the upper part of the volume, a stack of vertebrae (cortical
shell ~0.5, cancellous core ~0.33, neural arch around the spinal canal) separated by discs,
ribs around the thoracic cavity, heart, aorta, liver, spleen, kidneys, bowel loops and gas
pockets, and a few lesions (liver lesions of +-0.015-0.04 contrast, lung nodules).
All sizes, positions, values and the rotation of the anatomy about z vary smoothly at random
with the seed; the organs start and end at different z, so slices change along z. Organs are
fitted (shrunk, or dropped) to stay inside their host and apart from the lungs and the spine,
which keeps every value in [0, 1].

Coordinates: x and y in units of the image half-width 0.13 m (the image covers [-1, 1]²; pixel
(i, j) as in :mod:`diffinv.operators.ct`), z in units of the half-depth of the volume, whose
slices sit at z evenly in [-1, 1] (one slice: z = 0). Each slice is its central plane: it holds
the cross-section of the ellipsoids at that z (an ellipsoid of semi-axis c centred at z0 gives
an ellipse of semi-axes scaled by sqrt(1 - ((z - z0)/c)²)), not an average over a thickness, so
the truth and the projections of a slice describe one and the same 2D object.

Projections follow the LoDoPaB geometry: parallel beam at angles (i + 1/2) pi / n_angles, image
extent 0.26 m, detector of 2 ceil(size / sqrt 2) + 1 bins spanning 0.26 sqrt 2 m
(:func:`lodopab_detector`). They are the exact line integrals of the ellipses at the bin centres
(:func:`diffinv.operators.ct.ellipse_sinogram`, in m), not projections of the pixel image, so
reconstructions from them commit no inverse crime; the truth slices are pixel averages
(:func:`diffinv.operators.ct.ellipse_image`, 8x8 supersampled) on the size² grid of pixel
0.26 / size m. Noise follows the LoDoPaB recipe: counts ~ Poisson(N0 exp(-mu_max y)) with
N0 = ``photons`` (4096), zero counts replaced by 0.1, observation -ln(counts / N0) / mu_max.
Slices are written, volume after volume, as samples of ``observation_{split}_{NNN}.hdf5``
(dataset ``data``) with the truth in ``ground_truth_{split}_{NNN}.hdf5``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import h5py
import numpy as np
import torch

from diffinv.io import options as opt
from diffinv.io.ct import LODOPAB_HALF_WIDTH, LODOPAB_MU_MAX, LODOPAB_PHOTONS
from diffinv.io.store import atomic_path
from diffinv.operators.ct import Ellipse, ParallelBeamCT, ellipse_image, ellipse_sinogram

OPTIONS = {
    "volumes": opt.Option(opt.PositiveInt, "number of phantom volumes (default 2)"),
    "slices": opt.Option(opt.PositiveInt, "axial slices per volume, at z evenly in [-1, 1] (default 8)"),
    "size": opt.Option(opt.PositiveInt, "image size in pixels, odd or even (default 64)"),
    "angles": opt.Option(opt.PositiveInt, "projection angles over 180 degrees (default 90)"),
    "samples_per_file": opt.Option(opt.PositiveInt, "samples per observation file (default 128, as LoDoPaB)"),
    "split": opt.Option(str, "split name in the file names (default test)"),
    "photons": opt.Option(
        Annotated[float, opt.POSITIVE], "incident photons per detector bin N0 (default 4096, as LoDoPaB)"
    ),
    "noise": opt.Option(bool, "add Poisson noise (default true; false writes the exact line integrals)"),
}
SUPERSAMPLE = 8
"""Sub-pixels per pixel side of the truth's pixel averages."""


class Ellipsoid(NamedTuple):
    """A constant ``value`` (added to what lies beneath) inside semi-axes ``a`` (along x before the
    rotation), ``b`` and ``c`` (along z), centred at (``x0``, ``y0``, ``z0``), rotated by ``phi``
    radians counter-clockwise about the z axis. x, y in image half-widths, z in volume half-depths."""

    value: float
    a: float
    b: float
    c: float
    x0: float = 0.0
    y0: float = 0.0
    z0: float = 0.0
    phi: float = 0.0

    def scaled(self, factor: float, value: float | None = None) -> Ellipsoid:
        """The same ellipsoid with semi-axes times ``factor`` (and another value if given)."""
        return self._replace(
            a=self.a * factor,
            b=self.b * factor,
            c=self.c * factor,
            value=self.value if value is None else value,
        )

    def quadric(self, points: np.ndarray) -> np.ndarray:
        """(x'/a)² + (y'/b)² + ((z - z0)/c)² of (N, 3) points: at most 1 inside."""
        dx, dy = points[:, 0] - self.x0, points[:, 1] - self.y0
        cos, sin = math.cos(self.phi), math.sin(self.phi)
        u, v = dx * cos + dy * sin, -dx * sin + dy * cos
        return (u / self.a) ** 2 + (v / self.b) ** 2 + ((points[:, 2] - self.z0) / self.c) ** 2

    def points(self, shells: Sequence[float] = (1.0,)) -> np.ndarray:
        """Points on the ellipsoid's surface (shell 1) and on scaled copies of it, (N, 3)."""
        unit = np.concatenate([s * _SPHERE for s in shells])
        cos, sin = math.cos(self.phi), math.sin(self.phi)
        u, v = self.a * unit[:, 0], self.b * unit[:, 1]
        return np.stack(
            [self.x0 + u * cos - v * sin, self.y0 + u * sin + v * cos, self.z0 + self.c * unit[:, 2]], axis=1
        )

    def section(self, z: float) -> Ellipse | None:
        """The ellipse cut by the plane at ``z``, in metres; None where the plane misses it."""
        r = 1.0 - ((z - self.z0) / self.c) ** 2
        if r <= 0:
            return None
        s, h = math.sqrt(r), LODOPAB_HALF_WIDTH
        return Ellipse(self.value, self.a * s * h, self.b * s * h, self.x0 * h, self.y0 * h, self.phi)


def _fibonacci_sphere(n: int) -> np.ndarray:
    k = np.arange(n) + 0.5
    z = 1 - 2 * k / n
    r, t = np.sqrt(1 - z**2), math.pi * (1 + math.sqrt(5)) * k
    return np.stack([r * np.cos(t), r * np.sin(t), z], axis=1)


_SPHERE = _fibonacci_sphere(400)
_MARGIN = 0.97  # points must lie within the host scaled by this (quadric below its square)


def _in_slab(points: np.ndarray) -> np.ndarray:
    return points[np.abs(points[:, 2]) <= 1.0]  # only the part of the volume that is sliced matters


def _contained(e: Ellipsoid, host: Ellipsoid) -> bool:
    pts = _in_slab(e.points())
    return len(pts) == 0 or bool((host.quadric(pts) <= _MARGIN**2).all())


def _disjoint(e: Ellipsoid, other: Ellipsoid) -> bool:
    if abs(e.z0 - other.z0) >= e.c + other.c or math.hypot(e.x0 - other.x0, e.y0 - other.y0) >= max(
        e.a, e.b
    ) + max(other.a, other.b):
        return True  # bounding cylinders apart
    shells = (1.0, 0.7, 0.4, 0.0)
    a, b = _in_slab(e.points(shells)), _in_slab(other.points(shells))
    return bool((other.quadric(a) > 1).all() and (e.quadric(b) > 1).all())


def _fit(
    e: Ellipsoid, hosts: Sequence[Ellipsoid], avoid: Sequence[Ellipsoid], tries: int = 30
) -> Ellipsoid | None:
    """``e`` shrunk about its centre until inside every host and apart from every ``avoid``; None if
    it does not fit after ``tries`` steps of 8 %."""
    for _ in range(tries):
        if all(_contained(e, h) for h in hosts) and all(_disjoint(e, o) for o in avoid):
            return e
        e = e._replace(a=0.92 * e.a, b=0.92 * e.b, c=0.92 * e.c)
    return None


def random_anatomy(rng: np.random.Generator) -> list[Ellipsoid]:
    """The ellipsoids of one random torso phantom (values: normalised attenuation, added up)."""
    u = rng.uniform
    out: list[Ellipsoid] = []
    # body: subcutaneous fat around soft tissue, nearly a cylinder along z
    fat, tissue = u(0.215, 0.228), u(0.25, 0.26)
    body = Ellipsoid(fat, u(0.8, 0.9), u(0.56, 0.68), u(3.0, 5.0), 0.0, u(-0.04, 0.04), u(-0.3, 0.3))
    inner = body.scaled(u(0.86, 0.92), tissue - fat)
    cavity = inner.scaled(0.82)  # inside the ribs
    out += [body, inner]
    narrowest = inner.b * math.sqrt(1 - ((1 + abs(inner.z0)) / inner.c) ** 2)  # at the end of the volume

    # spine: vertebral bodies (cortical shell, cancellous core) with the neural arch, discs between
    cortical, cancellous = u(0.45, 0.6), u(0.3, 0.36)
    vb_a, vb_b, arch_b = u(0.1, 0.13), u(0.08, 0.1), u(0.06, 0.08)
    arch_y = inner.y0 - narrowest * u(0.8, 0.88) + arch_b  # the arch just inside the back
    vb_y = arch_y + arch_b * 0.9 + vb_b
    pitch, height = u(0.26, 0.32), u(0.8, 0.88)
    spine: list[Ellipsoid] = []
    for z0 in np.arange(u(-1.2, -1.2 + pitch), 1.2 + pitch, pitch):
        c = pitch / 2 * height * u(0.95, 1.05)
        shell = Ellipsoid(cortical - tissue, vb_a, vb_b, c, u(-0.01, 0.01), vb_y, z0)
        arch = Ellipsoid(cortical - tissue, vb_a * u(0.8, 0.95), arch_b, c * 0.9, shell.x0, arch_y, z0)
        spine += [shell, arch]
        out += [
            shell,
            shell.scaled(u(0.72, 0.8), cancellous - cortical),
            arch,
            arch.scaled(0.55, tissue - cortical),
        ]

    # lungs: air-like, in the upper part of the volume, inside the thoracic cavity and beside the spine
    lung_value, lung_top = u(0.02, 0.045), u(0.3, 0.6)
    lungs: list[Ellipsoid] = []
    for side in (-1, 1):
        lung = Ellipsoid(
            lung_value - tissue,
            u(0.22, 0.3),
            u(0.3, 0.4),
            u(0.8, 1.1),
            side * u(0.3, 0.4),
            u(-0.05, 0.1),
            lung_top + u(-0.05, 0.05),
            side * u(0.0, 0.3),
        )
        fitted = _fit(lung, [cavity], spine)
        if fitted is not None:
            lungs.append(fitted)
    out += lungs
    lung_base = min((e.z0 - e.c for e in lungs), default=0.0)

    # organs, each inside the body's soft tissue and apart from lungs, spine and each other
    placed: list[Ellipsoid] = []
    organs = [  # (value, a, b, c, x0, y0, z0, phi)
        (
            u(0.26, 0.29),
            u(0.2, 0.27),
            u(0.17, 0.24),
            u(0.35, 0.5),
            u(0.0, 0.15),
            u(0.1, 0.25),
            lung_top - u(0.3, 0.5),
            u(-0.6, 0.0),
        ),  # heart
        (
            u(0.28, 0.33),
            u(0.045, 0.06),
            u(0.045, 0.06),
            u(2.5, 4.0),
            u(0.08, 0.14),
            vb_y + vb_b + u(0.07, 0.1),
            0.0,
            0.0,
        ),  # aorta
        (
            u(0.265, 0.285),
            u(0.3, 0.42),
            u(0.25, 0.35),
            u(0.5, 0.8),
            -u(0.25, 0.38),
            u(-0.05, 0.15),
            lung_base - u(0.1, 0.3),
            u(-0.4, 0.4),
        ),  # liver
        (
            u(0.26, 0.28),
            u(0.1, 0.15),
            u(0.15, 0.2),
            u(0.25, 0.35),
            u(0.35, 0.5),
            u(-0.2, 0.0),
            lung_base - u(0.0, 0.2),
            u(-0.6, 0.0),
        ),  # spleen
        (
            u(0.28, 0.31),
            u(0.08, 0.11),
            u(0.12, 0.16),
            u(0.25, 0.35),
            -u(0.25, 0.33),
            vb_y + u(0.0, 0.08),
            u(-1.0, -0.5),
            u(0.2, 0.6),
        ),  # kidney
        (
            u(0.28, 0.31),
            u(0.08, 0.11),
            u(0.12, 0.16),
            u(0.25, 0.35),
            u(0.25, 0.33),
            vb_y + u(0.0, 0.08),
            u(-1.0, -0.5),
            -u(0.2, 0.6),
        ),  # kidney
    ]
    values = []
    for value, *geometry in organs:
        organ = _fit(Ellipsoid(value - tissue, *geometry), [inner.scaled(0.95)], [*lungs, *spine, *placed])
        if organ is not None:
            placed.append(organ)
            values.append(value)
    # bowel loops below the lungs (fluid or fat against tissue) and a few gas pockets
    for k in range(int(rng.integers(4, 8))):
        gas = k < 2 and rng.uniform() < 0.6
        r = u(0.04, 0.07) if gas else u(0.07, 0.14)
        bowel = Ellipsoid(
            (u(0.0, 0.02) if gas else u(0.225, 0.27)) - tissue,
            r * u(0.8, 1.5),
            r * u(0.8, 1.2),
            r * u(1.0, 2.5),
            u(-0.5, 0.5),
            u(-0.2, 0.35),
            u(-1.1, lung_base),
            u(0, math.pi),
        )
        fitted = _fit(bowel, [inner.scaled(0.95)], [*lungs, *spine, *placed])
        if fitted is not None:
            placed.append(fitted)
            values.append(tissue + fitted.value)
    out += placed

    # ribs: slim ellipsoids tangent to a ring just outside the thoracic cavity, at sloping levels
    bone = u(0.42, 0.55) - tissue
    for level in np.arange(u(-0.9, -0.6), 1.2, u(0.22, 0.3)):
        scale = math.sqrt(max(0.0, 1 - ((level - inner.z0) / inner.c) ** 2))
        for side in (-1, 1):
            for t in np.deg2rad(np.linspace(-65, 70, 6)) + u(-0.08, 0.08):
                x, y = (
                    side * inner.a * scale * 0.9 * math.cos(t),
                    inner.y0 + inner.b * scale * 0.9 * math.sin(t),
                )
                tangent = math.atan2(inner.b * math.cos(t), -side * inner.a * math.sin(t))
                rib = Ellipsoid(
                    bone,
                    u(0.07, 0.11),
                    u(0.025, 0.035),
                    u(0.06, 0.1),
                    x,
                    y,
                    level + 0.15 * math.sin(t),
                    tangent,
                )
                if _contained(rib, inner) and all(_disjoint(rib, o) for o in (*lungs, *spine, *placed)):
                    out.append(rib)

    # lesions: liver lesions of either sign, lung nodules
    hosts = [(e, v) for e, v in zip(placed, values, strict=True) if e.a > 0.2] + [
        (e, lung_value) for e in lungs
    ]
    for _ in range(int(rng.integers(2, 5))):
        host, host_value = hosts[int(rng.integers(len(hosts)))] if hosts else (inner, tissue)
        r, t, w = u(0.0, 0.6), u(0, 2 * math.pi), u(-0.6, 0.6)
        centre = np.array([[r * math.cos(t), r * math.sin(t), w]])
        cos, sin = math.cos(host.phi), math.sin(host.phi)
        cx, cy = host.a * centre[0, 0], host.b * centre[0, 1]
        x0, y0 = host.x0 + cx * cos - cy * sin, host.y0 + cx * sin + cy * cos
        size = u(0.03, 0.08)
        if host_value < 0.1:  # a nodule of soft tissue in a lung
            value = u(0.2, 0.26) - host_value
        else:
            value = float(rng.choice([-1, 1])) * u(0.015, 0.04)
        lesion = Ellipsoid(
            value,
            size * u(0.8, 1.2),
            size * u(0.8, 1.2),
            size * u(1.0, 2.0),
            x0,
            y0,
            host.z0 + host.c * w,
            u(0, math.pi),
        )
        fitted = _fit(lesion, [host], [])
        if fitted is not None:
            out.append(fitted)

    # the whole anatomy rotated about z and shifted a little
    rot, shift = u(-0.15, 0.15), u(-0.04, 0.04, 2)
    cos, sin = math.cos(rot), math.sin(rot)
    return [
        e._replace(
            x0=e.x0 * cos - e.y0 * sin + shift[0], y0=e.x0 * sin + e.y0 * cos + shift[1], phi=e.phi + rot
        )
        for e in out
    ]


def slice_positions(slices: int) -> np.ndarray:
    """z of the slice centres (central planes), evenly in [-1, 1] half-depths; 0 for one slice."""
    return np.linspace(-1.0, 1.0, slices) if slices > 1 else np.zeros(1)


def slice_ellipses(ellipsoids: Sequence[Ellipsoid], z: float) -> list[Ellipse]:
    """The ellipses (m) the plane at ``z`` cuts from ``ellipsoids``."""
    return [e for e in (el.section(z) for el in ellipsoids) if e is not None]


def lodopab_angles(n_angles: int) -> np.ndarray:
    """The LoDoPaB view angles (i + 1/2) pi / n_angles, radians."""
    return (np.arange(n_angles) + 0.5) * np.pi / n_angles


def lodopab_detector(size: int) -> np.ndarray:
    """Detector pixel centres (m) of the LoDoPaB geometry for a ``size``² image (513 for 362)."""
    n_det = 2 * int(np.ceil(size / np.sqrt(2))) + 1
    half = LODOPAB_HALF_WIDTH * np.sqrt(2)
    return (np.arange(n_det) - (n_det - 1) / 2) * (2 * half / n_det)


def lodopab_operator(size: int, angles: int | np.ndarray) -> ParallelBeamCT:
    """Joseph's projector in the LoDoPaB geometry for ``size``² images (what ``from_store`` gives
    for an ingested demo store): ``angles`` a number of views (LoDoPaB angles) or the angles."""
    detector = lodopab_detector(size)
    theta = lodopab_angles(angles) if np.ndim(angles) == 0 else np.asarray(angles, np.float64)
    return ParallelBeamCT(
        (size, size), theta, len(detector), 2 * LODOPAB_HALF_WIDTH / size, float(detector[1] - detector[0])
    )


def project(image: np.ndarray, n_angles: int) -> np.ndarray:
    """Line integrals (m) of a pixel ``image`` by Joseph's projector on the LoDoPaB angles and
    detector, (angle, detector); the demo files hold exact projections of the phantoms instead."""
    op = lodopab_operator(image.shape[-1], n_angles)
    return op.A(torch.as_tensor(np.asarray(image, np.float64))[None])[0].numpy()


def pixel_averages(ellipses: Sequence[Ellipse], size: int) -> np.ndarray:
    """:func:`~diffinv.operators.ct.ellipse_image` of ``ellipses`` (m) on the size² LoDoPaB grid,
    float32, computed ellipse by ellipse on the block of pixels around each (same sub-pixel samples)."""
    p = 2 * LODOPAB_HALF_WIDTH / size
    image = np.zeros((size, size))
    for e in ellipses:
        cos, sin = math.cos(e.phi), math.sin(e.phi)
        half_x, half_y = math.hypot(e.a * cos, e.b * sin), math.hypot(e.a * sin, e.b * cos)
        # pixel j covers x in [(j - size/2) p, (j + 1 - size/2) p]; row i covers y from the top down
        j0, j1 = (
            max(0, min(size - 1, math.floor((x / p) + size / 2))) for x in (e.x0 - half_x, e.x0 + half_x)
        )
        i0, i1 = (max(0, min(size - 1, math.floor(size / 2 - y / p))) for y in (e.y0 + half_y, e.y0 - half_y))
        h, w = i1 - i0 + 1, j1 - j0 + 1
        xc, yc = (j0 + (w - 1) / 2 - (size - 1) / 2) * p, ((size - 1) / 2 - i0 - (h - 1) / 2) * p
        block = ellipse_image([e._replace(x0=e.x0 - xc, y0=e.y0 - yc)], (h, w), p, SUPERSAMPLE)
        image[i0 : i1 + 1, j0 : j1 + 1] += block.numpy()
    return image.astype(np.float32)


def render(
    ellipsoids: Sequence[Ellipsoid], slices: int, size: int, n_angles: int
) -> tuple[np.ndarray, np.ndarray]:
    """Truth (slices, size, size) float32 (pixel averages) and exact noise-free sinograms (slices,
    n_angles, n_det) float64 in m, of the axial slices of a phantom in the LoDoPaB geometry."""
    detector = lodopab_detector(size)
    angles = torch.from_numpy(lodopab_angles(n_angles))
    truth = np.empty((slices, size, size), np.float32)
    sino = np.empty((slices, n_angles, len(detector)))
    for k, z in enumerate(slice_positions(slices)):
        ellipses = slice_ellipses(ellipsoids, float(z))
        truth[k] = pixel_averages(ellipses, size)
        sino[k] = ellipse_sinogram(ellipses, angles, len(detector), float(detector[1] - detector[0])).numpy()
    return truth, sino


def phantom_volume(
    seed: int, volume: int, slices: int, size: int, n_angles: int
) -> tuple[np.ndarray, np.ndarray]:
    """Truth and exact sinograms (see :func:`render`) of volume ``volume`` of ``write_demo(seed=seed)``."""
    return render(random_anatomy(np.random.default_rng([seed, 0, volume])), slices, size, n_angles)


def write_demo(out: Path, seed: int, **options: Any) -> list[Path]:
    """Write LoDoPaB-layout observation and ground-truth HDF5 files under ``out``.

    Parameters
    ----------
    out
        Output folder (created).
    seed
        Seeds the phantoms (volume k from ``[seed, 0, k]``, so it does not depend on ``volumes``)
        and the Poisson noise (``[seed, 1]``).
    **options
        See :data:`OPTIONS`.

    Returns
    -------
    list of Path
        The observation files (each with its ground-truth file beside it).
    """
    opt.check_options("demo-data ct", options, OPTIONS)
    size, n_angles = int(options.get("size", 64)), int(options.get("angles", 90))
    slices, photons = int(options.get("slices", 8)), float(options.get("photons", LODOPAB_PHOTONS))
    volumes = [phantom_volume(seed, k, slices, size, n_angles) for k in range(int(options.get("volumes", 2)))]
    truth = np.concatenate([t for t, _ in volumes])
    clean = np.concatenate([s for _, s in volumes])
    if options.get("noise", True):
        rng = np.random.default_rng([seed, 1])
        counts = rng.poisson(photons * np.exp(-LODOPAB_MU_MAX * clean)).astype(np.float64)
        observation = (-np.log(np.maximum(counts, 0.1) / photons) / LODOPAB_MU_MAX).astype(np.float32)
    else:
        observation = clean.astype(np.float32)
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
