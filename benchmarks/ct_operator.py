"""CT operator: accuracy, FBP quality, speed and memory of diffinv's projector against skimage (and ASTRA).

Rows of benchmarks/out/ct_operator.csv (section, method, size, views, metric, value):

- ``accuracy``: relative L2 error of sinograms against the exact line integrals of a disk, the
  modified Shepp–Logan phantom and smooth Gaussian blobs (pixel-averaged phantoms), for
  diffinv (Joseph 1982), skimage ``radon``, ASTRA's CPU projectors where ``astra`` imports, and
  the pixel-driven discretisations considered for the operator (linear interpolation onto the
  detector, distance-driven with a box footprint, exact strip areas with the trapezoid footprint).
- ``fbp``: PSNR inside the reconstruction circle, diffinv's FBP with either back-projector against
  skimage ``iradon``; ``analytic``: FBPs of the exact Shepp–Logan sinogram; ``end_to_end``:
  skimage's ``shepp_logan_phantom`` through each library's own projector and FBP.
- ``speed``: seconds of the matrix setup (also for 8 views and a 90° wedge) and per slice of A, Aᵀ
  (batch 1 and 8), an autograd gradient of ‖Ax − y‖² and FBP, against skimage ``radon`` / ``iradon``
  (and ASTRA CPU ``linear``); one torch thread, the calls alternating, best of ``--repeat``.
- ``memory``: stored weights (nnz) and MiB of the matrix and its transpose (float32 values, int32 indices).

Run: PYTHONPATH=src python benchmarks/ct_operator.py [--sizes 64 256] [--views 180] [--repeat 5]
(for the ASTRA rows put an astra-toolbox install on PYTHONPATH; it is not a project dependency).
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import write_csv
from skimage.data import shepp_logan_phantom
from skimage.transform import iradon, radon, resize

from diffinv.operators.ct import SHEPP_LOGAN, Ellipse, ParallelBeamCT, ellipse_image, ellipse_sinogram, fbp

try:
    import astra
except ImportError:
    astra = None

OUT = Path(__file__).parent / "out"


def phantoms(n: int) -> dict[str, list[Ellipse]]:
    """Ellipse phantoms for an n² image of unit pixels, inside its inscribed circle."""
    half = 0.95 * n / 2
    return {
        "disk": [Ellipse(1.0, 0.35 * n, 0.35 * n, 0.1 * n, -0.07 * n)],
        "shepp-logan": [
            Ellipse(e.value, e.a * half, e.b * half, e.x0 * half, e.y0 * half, e.phi) for e in SHEPP_LOGAN
        ],
    }


BLOBS = ((1.0, 0.03, 0.1, -0.2), (0.5, 0.05, -0.15, 0.1), (0.7, 0.04, 0.03, 0.25))  # height, σ, x0, y0 (× n)


def blob_image(n: int) -> np.ndarray:
    """Gaussian blobs sampled at the pixel centres."""
    c = np.arange(n) - (n - 1) / 2
    yy, xx = np.meshgrid(-c, c, indexing="ij")
    return sum(
        h * np.exp(-((xx - x0 * n) ** 2 + (yy - y0 * n) ** 2) / (2 * (s * n) ** 2)) for h, s, x0, y0 in BLOBS
    )


def blob_sinogram(n: int, angles: np.ndarray, n_det: int, delta: float = 0.0) -> np.ndarray:
    """Exact line integrals of :func:`blob_image`, √(2π)σh exp(−(s − s0)²/2σ²), relative to an axis
    at (δ, −δ) from the image centre (skimage's frame for even n)."""
    s = (np.arange(n_det) - (n_det - 1) / 2 - delta)[None]
    th = angles[:, None]
    total = np.zeros((len(angles), n_det))
    for h, sigma, x0, y0 in BLOBS:
        s0 = (x0 * n - delta) * np.cos(th) + (y0 * n + delta) * np.sin(th)
        total += h * math.sqrt(2 * math.pi) * sigma * n * np.exp(-((s - s0) ** 2) / (2 * (sigma * n) ** 2))
    return total


def shifted(ellipses: Sequence[Ellipse], dx: float, dy: float) -> list[Ellipse]:
    """The ellipses moved by (dx, dy): the same object seen from an axis at (−dx, −dy)."""
    return [e._replace(x0=e.x0 + dx, y0=e.y0 + dy) for e in ellipses]


def footprint_matrix(n: int, angles: np.ndarray, n_det: int, model: str) -> torch.Tensor:
    """Pixel-driven projectors with unit pixels and bins: each pixel's footprint on the detector is
    integrated over the bins. ``linear``: a box of one bin (linear interpolation onto the detector);
    ``distance``: a box of width max(|cos θ|, |sin θ|) (distance-driven, De Man & Basu 2004);
    ``strip``: the exact trapezoid (box(|cos θ|) ∗ box(|sin θ|)), i.e. strip-pixel intersection areas."""
    c = np.arange(n) - (n - 1) / 2
    yy, xx = np.meshgrid(-c, c, indexing="ij")
    xx, yy = xx.reshape(-1), yy.reshape(-1)

    def cdf(u: np.ndarray, w1: float, w2: float) -> np.ndarray:  # CDF of box(w1) ∗ box(w2), w1 ≥ w2
        if w2 < 1e-6 * w1:
            return np.clip((u + w1 / 2) / w1, 0, 1)
        q = lambda t: np.maximum(t, 0) ** 2 / 2  # noqa: E731
        a, b = (w1 + w2) / 2, (w1 - w2) / 2
        return (q(u + a) - q(u + b) - q(u - b) + q(u - a)) / (w1 * w2)

    rows, cols, vals = [], [], []
    for v, th in enumerate(angles):
        big, small = max(abs(math.cos(th)), abs(math.sin(th))), min(abs(math.cos(th)), abs(math.sin(th)))
        w1, w2 = {"linear": (1.0, 0.0), "distance": (big, 0.0), "strip": (big, small)}[model]
        s = xx * math.cos(th) + yy * math.sin(th)
        first = np.floor(s - (w1 + w2) / 2 + n_det / 2).astype(np.int64)  # bin holding the footprint's start
        for k in range(int(math.ceil(w1 + w2)) + 1):
            b = first + k
            lo = b - n_det / 2 - s
            w = cdf(lo + 1, w1, w2) - cdf(lo, w1, w2)
            keep = (b >= 0) & (b < n_det) & (w > 0)
            rows.append(v * n_det + b[keep])
            cols.append(np.nonzero(keep)[0])
            vals.append(w[keep])
    index = torch.from_numpy(np.stack([np.concatenate(rows), np.concatenate(cols)]))
    coo = torch.sparse_coo_tensor(
        index, torch.from_numpy(np.concatenate(vals)), (len(angles) * n_det, n * n), check_invariants=False
    )
    return coo.coalesce().to_sparse_csr()


def astra_projector(n: int, angles: np.ndarray, n_det: int, kind: str) -> int:
    volume = astra.create_vol_geom(n, n)
    return astra.create_projector(kind, astra.create_proj_geom("parallel", 1.0, n_det, angles), volume)


def astra_forward(projector: int, image: np.ndarray) -> np.ndarray:
    sino_id, sino = astra.create_sino(image, projector)
    astra.data2d.delete(sino_id)
    return sino


def astra_back(projector: int, sino: np.ndarray) -> np.ndarray:
    image_id, image = astra.create_backprojection(sino, projector)
    astra.data2d.delete(image_id)
    return image


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def skimage_radon(image: np.ndarray, degrees: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():  # the Gaussian tails are ~1e-6 outside the inscribed circle
        warnings.filterwarnings("ignore", "Radon transform: image must be zero outside")
        return radon(image, degrees, circle=True).T


def accuracy(n: int, views: int) -> list[dict[str, Any]]:
    """Relative sinogram errors; skimage's frame (axis at pixel n//2, bin k at s = k − n//2) is
    matched by shifting the exact sinogram, so every method is scored on its own geometry."""
    angles = np.arange(views) * np.pi / views
    degrees = np.rad2deg(angles)
    delta = n // 2 - (n - 1) / 2  # skimage's axis sits at (δ, −δ) from the image centre
    op = ParallelBeamCT((n, n), angles, n)
    others = {m: footprint_matrix(n, angles, n, m) for m in ("linear", "distance", "strip")}
    projectors = {k: astra_projector(n, angles, n, k) for k in ("linear", "strip", "line")} if astra else {}
    rows = []
    cases = {name: (ellipse_image(e, (n, n)).numpy(), e) for name, e in phantoms(n).items()}
    cases["gaussians"] = (blob_image(n), None)
    for name, (image, ellipses) in cases.items():
        if ellipses is None:
            exact, exact_sk = blob_sinogram(n, angles, n), blob_sinogram(n, angles, n, delta)
        else:
            exact = ellipse_sinogram(ellipses, angles, n).numpy()
            exact_sk = ellipse_sinogram(
                shifted(ellipses, -delta, delta), angles, n, det_offset=-delta
            ).numpy()
        results = {"diffinv (Joseph)": op.A(torch.from_numpy(image)[None])[0].numpy()}
        flat = torch.from_numpy(image).reshape(-1)
        results.update(
            {f"pixel-driven {m}": (mat @ flat).reshape(views, n).numpy() for m, mat in others.items()}
        )
        results.update(
            {f"astra cpu {k}": astra_forward(p, image.astype(np.float32)) for k, p in projectors.items()}
        )
        for method, sino in results.items():
            rows.append(row("accuracy", method, n, views, f"rel_err_{name}", rel(sino, exact)))
        rows.append(
            row(
                "accuracy",
                "skimage radon",
                n,
                views,
                f"rel_err_{name}",
                rel(skimage_radon(image, degrees), exact_sk),
            )
        )
    for p in projectors.values():
        astra.projector.delete(p)
    return rows


def fbp_quality(n: int, views: int) -> list[dict[str, Any]]:
    angles = np.arange(views) * np.pi / views
    degrees = np.rad2deg(angles)
    delta = n // 2 - (n - 1) / 2
    yy, xx = np.mgrid[:n, :n] - n // 2
    circle = xx**2 + yy**2 <= (n // 2) ** 2
    op = ParallelBeamCT((n, n), angles, n)
    ellipses = phantoms(n)["shepp-logan"]
    truth = ellipse_image(ellipses, (n, n)).numpy()
    exact = ellipse_sinogram(ellipses, angles, n)
    exact_sk = ellipse_sinogram(shifted(ellipses, -delta, delta), angles, n, det_offset=-delta).numpy()
    phantom = resize(shepp_logan_phantom(), (n, n), anti_aliasing=True)
    rows = []
    for name, sk_filter in (("ram-lak", "ramp"), ("hann", "hann")):
        theirs = iradon(exact_sk.T, degrees, filter_name=sk_filter, circle=True)
        rows.append(
            row("fbp", f"skimage iradon {name}", n, views, "psnr_analytic_db", psnr(theirs, truth, circle))
        )
        theirs = iradon(radon(phantom, degrees, circle=True), degrees, filter_name=sk_filter, circle=True)
        rows.append(
            row(
                "fbp", f"skimage iradon {name}", n, views, "psnr_end_to_end_db", psnr(theirs, phantom, circle)
            )
        )
        for bp in ("interpolate", "adjoint"):
            ours = fbp(exact[None], op, name, bp)[0].numpy()  # type: ignore[arg-type]
            rows.append(
                row(
                    "fbp", f"diffinv fbp {name} {bp}", n, views, "psnr_analytic_db", psnr(ours, truth, circle)
                )
            )
            ours = fbp(op.A(torch.from_numpy(phantom)[None]), op, name, bp)[0].numpy()  # type: ignore[arg-type]
            rows.append(
                row(
                    "fbp",
                    f"diffinv fbp {name} {bp}",
                    n,
                    views,
                    "psnr_end_to_end_db",
                    psnr(ours, phantom, circle),
                )
            )
    return rows


def psnr(image: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    return float(10 * np.log10(np.ptp(truth) ** 2 / np.mean((image[mask] - truth[mask]) ** 2)))


def best_times(calls: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Best wall time of each call over ``repeat`` rounds, the calls alternating within a round."""
    for fn in calls.values():
        fn()
    best = dict.fromkeys(calls, math.inf)
    for _ in range(repeat):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def speed_and_memory(n: int, views: int, repeat: int) -> list[dict[str, Any]]:
    angles = np.arange(views) * np.pi / views
    degrees = np.rad2deg(angles)
    op = ParallelBeamCT((n, n), angles, n)
    start = time.perf_counter()
    op.matrix()  # built on first use: Joseph weights, CSR, CSR of the transpose
    rows = [
        row("speed", "diffinv setup", n, views, "seconds", time.perf_counter() - start),
        row("memory", "diffinv", n, views, "nnz", op.nnz),
        row("memory", "diffinv", n, views, "matrix_and_transpose_mib", op.matrix_bytes / 2**20),
    ]
    for label, subset in (("8 views", np.arange(8) * np.pi / 8), ("90° wedge", angles[: views // 2 + 1])):
        sparse = ParallelBeamCT((n, n), subset, n)
        start = time.perf_counter()
        sparse.matrix()
        rows.append(
            row("speed", f"diffinv setup {label}", n, len(subset), "seconds", time.perf_counter() - start)
        )
        rows.append(
            row(
                "memory",
                f"diffinv {label}",
                n,
                len(subset),
                "matrix_and_transpose_mib",
                sparse.matrix_bytes / 2**20,
            )
        )
    image = resize(shepp_logan_phantom(), (n, n), anti_aliasing=True)
    x1, x8 = (
        torch.from_numpy(image).float()[None],
        torch.from_numpy(image).float().expand(8, n, n).contiguous(),
    )
    y1, y8 = op.A(x1), op.A(x8)
    sino = radon(image, degrees, circle=True)
    calls: dict[str, Callable[[], object]] = {
        "diffinv A (batch 1)": lambda: op.A(x1),
        "diffinv A_adjoint (batch 1)": lambda: op.A_adjoint(y1),
        "diffinv A (batch 8)": lambda: op.A(x8),
        "diffinv A_adjoint (batch 8)": lambda: op.A_adjoint(y8),
        "diffinv autograd grad of |Ax-y|² (batch 8)": lambda: autograd_step(op, x8, y8),
        "diffinv fbp interpolate (batch 1)": lambda: fbp(y1, op),
        "diffinv fbp adjoint (batch 1)": lambda: fbp(y1, op, backprojector="adjoint"),
        "skimage radon": lambda: radon(image, degrees, circle=True),
        "skimage iradon": lambda: iradon(sino, degrees, circle=True),
    }
    if astra:
        start = time.perf_counter()
        projector = astra_projector(n, angles, n, "linear")
        rows.append(row("speed", "astra cpu linear setup", n, views, "seconds", time.perf_counter() - start))
        image32, sino32 = image.astype(np.float32), sino.T.astype(np.float32)
        calls["astra cpu linear A"] = lambda: astra_forward(projector, image32)
        calls["astra cpu linear A_adjoint"] = lambda: astra_back(projector, sino32)
    for name, seconds in best_times(calls, repeat).items():
        per_slice = seconds / 8 if "batch 8" in name else seconds
        rows.append(row("speed", name, n, views, "seconds_per_slice", per_slice))
    if astra:
        astra.projector.delete(projector)
    return rows


def autograd_step(op: ParallelBeamCT, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """∇ₓ‖A x − y‖² by autograd (forward A, backward Aᵀ)."""
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad((op.A(x) - y).square().sum(), x)
    return grad


def row(section: str, method: str, size: int, views: int, metric: str, value: float) -> dict[str, Any]:
    return {
        "section": section,
        "method": method,
        "size": size,
        "views": views,
        "metric": metric,
        "value": value,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--views", type=int, default=180)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for n in args.sizes:
        rows += (
            accuracy(n, args.views)
            + fbp_quality(n, args.views)
            + speed_and_memory(n, args.views, args.repeat)
        )
    print(f"astra: {'astra-toolbox ' + astra.__version__ if astra else 'not importable'}; torch threads: 1")
    for r in rows:
        where = f"{r['size']:4d}² {r['views']:4d} views"
        print(f"{r['section']:9s} {r['method']:42s} {where}  {r['metric']:28s} {r['value']:.4g}")
    write_csv(OUT / "ct_operator.csv", rows)
    print(f"wrote {OUT / 'ct_operator.csv'}")


if __name__ == "__main__":
    main()
