"""Parallel-beam CT: a 2D projector as a sparse system matrix (Joseph 1982) and filtered back-projection.

Geometry (the conventions of ``skimage.transform.radon``, in physical units):

- Image (ny, nx) of square pixels of side ``pixel_size``, centred at the origin; x runs along
  the columns (left to right), y along the rows from bottom to top, so pixel (i, j) has its
  centre at x = (j − (nx − 1)/2)·p, y = ((ny − 1)/2 − i)·p.
- The view at angle θ (radians, any set) integrates along the rays
  x cos θ + y sin θ = s; detector bin k sits at s = (k − (n_det − 1)/2)·det_spacing + det_offset,
  so ``det_offset`` is the s of the detector centre and the rotation axis (s = 0) projects onto
  bin index (n_det − 1)/2 − det_offset/det_spacing (for a rotation centre c in bin units, as
  tomopy's ``center``: det_offset = ((n_det − 1)/2 − c)·det_spacing).
- Data are line integrals in (image value) × (length unit of ``pixel_size``).

The forward projector is Joseph's method (Joseph 1982, "An improved algorithm for reprojecting
rays through pixel images", IEEE TMI 1(3)): each ray is stepped along the image axis it is most
aligned with, linearly interpolating between the two nearest pixels of the other axis, with
weight p / max(|cos θ|, |sin θ|) per step. The weights are assembled once per geometry as a
sparse CSR matrix M (rows: angle-major (angle, bin); columns: row-major pixels), and the
adjoint applies the CSR form of Mᵀ, so A and Aᵀ are exact transposes of each other up to
floating-point rounding, on any device torch supports sparse CSR matmul on.

Filtered back-projection (Kak & Slaney 1988, ch. 3) ramp-filters the views and back-projects
them either by linear interpolation (pixel-driven, as skimage's ``iradon``; no matrix) or by Aᵀ.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

from diffinv.operators.base import LinearOperator

if TYPE_CHECKING:
    import xarray as xr

FilterName = Literal["ram-lak", "shepp-logan", "cosine", "hann"]
FILTERS: tuple[FilterName, ...] = ("ram-lak", "shepp-logan", "cosine", "hann")
WEDGE_GAP = 5.0
"""An angular gap wider than this many median gaps is a missing wedge: :func:`angular_weights`
gives it to neither neighbour."""
_CHUNK_ENTRIES = 1 << 18  # candidate entries per chunk of views: keeps temporaries in cache


class Ellipse(NamedTuple):
    """A constant-valued ellipse: ``value`` inside semi-axes ``a`` (along x before rotation) and ``b``,
    centred at (``x0``, ``y0``), rotated by ``phi`` radians counter-clockwise."""

    value: float
    a: float
    b: float
    x0: float = 0.0
    y0: float = 0.0
    phi: float = 0.0


# Modified Shepp–Logan (Toft 1996, "The Radon transform", table 3.1) in units of the half-width.
SHEPP_LOGAN: tuple[Ellipse, ...] = (
    Ellipse(1.0, 0.69, 0.92),
    Ellipse(-0.8, 0.6624, 0.874, 0.0, -0.0184),
    Ellipse(-0.2, 0.11, 0.31, 0.22, 0.0, math.radians(-18)),
    Ellipse(-0.2, 0.16, 0.41, -0.22, 0.0, math.radians(18)),
    Ellipse(0.1, 0.21, 0.25, 0.0, 0.35),
    Ellipse(0.1, 0.046, 0.046, 0.0, 0.1),
    Ellipse(0.1, 0.046, 0.046, 0.0, -0.1),
    Ellipse(0.1, 0.046, 0.023, -0.08, -0.605),
    Ellipse(0.1, 0.023, 0.023, 0.0, -0.606),
    Ellipse(0.1, 0.023, 0.046, 0.06, -0.605),
)


def _csr(crow: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    """A CSR tensor, without torch's warning that sparse CSR support is in beta."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


def _pixel_centres(n: int, spacing: float, dtype: torch.dtype, device: torch.device | None = None) -> Tensor:
    return (torch.arange(n, dtype=dtype, device=device) - (n - 1) / 2) * spacing


def ellipse_image(
    ellipses: Sequence[Ellipse], image_shape: tuple[int, int], pixel_size: float = 1.0, supersample: int = 8
) -> Tensor:
    """Pixel averages of a sum of ellipses on the operator's image grid, float64 (ny, nx).

    Each pixel is the mean over ``supersample``² sub-pixel centres, an approximation of its area average.
    """
    ny, nx = image_shape
    sub = (torch.arange(supersample, dtype=torch.float64) + 0.5) / supersample - 0.5
    x = (_pixel_centres(nx, 1.0, torch.float64)[:, None] + sub).reshape(-1) * pixel_size
    y = (-_pixel_centres(ny, 1.0, torch.float64)[:, None] - sub).reshape(-1) * pixel_size
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    image = torch.zeros_like(xx)
    for e in ellipses:
        c, s = math.cos(e.phi), math.sin(e.phi)
        u = (xx - e.x0) * c + (yy - e.y0) * s
        v = -(xx - e.x0) * s + (yy - e.y0) * c
        image += e.value * ((u / e.a) ** 2 + (v / e.b) ** 2 <= 1)
    return image.reshape(ny, supersample, nx, supersample).mean((1, 3))


def ellipse_sinogram(
    ellipses: Sequence[Ellipse],
    angles: Tensor | Sequence[float],
    n_det: int,
    det_spacing: float = 1.0,
    det_offset: float = 0.0,
) -> Tensor:
    """Exact line integrals of a sum of ellipses at the detector bin centres, float64 (n_angles, n_det).

    Closed form (Kak & Slaney 1988, eq. 3.60, shifted and rotated): 2ρab/m² √(m² − t²) with
    m² = a² cos²(θ − φ) + b² sin²(θ − φ) and t = s − x0 cos θ − y0 sin θ.
    """
    theta = torch.as_tensor(angles, dtype=torch.float64)[:, None]
    s = _pixel_centres(n_det, det_spacing, torch.float64)[None] + det_offset
    out = torch.zeros(theta.shape[0], n_det, dtype=torch.float64)
    for e in ellipses:
        m2 = (e.a * torch.cos(theta - e.phi)) ** 2 + (e.b * torch.sin(theta - e.phi)) ** 2
        t = s - e.x0 * torch.cos(theta) - e.y0 * torch.sin(theta)
        out += 2 * e.value * e.a * e.b / m2 * (m2 - t**2).clamp_min(0).sqrt()
    return out


def joseph_matrix(
    image_shape: tuple[int, int],
    angles: Tensor,
    n_det: int,
    pixel_size: float,
    det_spacing: float,
    det_offset: float,
    device: torch.device,
) -> Tensor:
    """The (n_angles·n_det, ny·nx) float64 CSR matrix of Joseph's projector (Joseph 1982).

    Built in chunks of views; column indices are sorted within each row and entries that
    interpolate to zero weight are dropped.
    """
    ny, nx = image_shape
    n_pix, n_rows = ny * nx, len(angles) * n_det
    p = pixel_size
    s = (_pixel_centres(n_det, det_spacing, torch.float64, device) + det_offset)[None, :, None]
    j = torch.arange(nx, device=device)
    i = torch.arange(ny, device=device)
    x_j = _pixel_centres(nx, p, torch.float64, device)
    y_i = -_pixel_centres(ny, p, torch.float64, device)
    keys, values = [], []
    per_view = 2 * n_det * max(nx, ny)
    step = max(1, _CHUNK_ENTRIES // per_view)
    for start in range(0, len(angles), step):
        theta = angles[start : start + step].to(device=device, dtype=torch.float64)
        view = torch.arange(start, start + len(theta), device=device)
        cos, sin = torch.cos(theta), torch.sin(theta)
        chunk_keys, chunk_values = [], []
        across = sin.abs() >= cos.abs()  # rays closer to the x axis: step over columns
        for steps_x, sel in ((True, across), (False, ~across)):
            if not bool(sel.any()):
                continue
            c, sn, v = cos[sel, None, None], sin[sel, None, None], view[sel, None, None]
            if steps_x:  # y at each column centre, as a fractional row index
                pos = (ny - 1) / 2 - (s - x_j * c) / sn / p
                weight, fixed, length = 1 / sn.abs(), j, ny
            else:  # x at each row centre, as a fractional column index
                pos = (s - y_i * sn) / c / p + (nx - 1) / 2
                weight, fixed, length = 1 / c.abs(), i, nx
            base = torch.floor(pos)
            frac = pos - base
            base = base.long()
            row = v * n_det + torch.arange(n_det, device=device)[:, None]
            for shift, w in ((0, 1 - frac), (1, frac)):
                idx = base + shift
                pix = idx * nx + fixed if steps_x else fixed * nx + idx
                keep = (idx >= 0) & (idx < length) & (w > 0)
                chunk_keys.append((row * n_pix + pix)[keep])
                chunk_values.append((w * weight * p).expand_as(keep)[keep])
        key, order = torch.sort(torch.cat(chunk_keys))
        keys.append(key)
        values.append(torch.cat(chunk_values)[order])
    key = torch.cat(keys)
    rows = key // n_pix
    crow = torch.zeros(n_rows + 1, dtype=torch.long, device=device)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=n_rows), 0)
    return _csr(crow, key % n_pix, torch.cat(values), (n_rows, n_pix))


def _narrow_indices(m: Tensor) -> Tensor:
    """The CSR matrix ``m`` with int32 indices where they fit (about 3x faster sparse matmul on CPU)."""
    if m._nnz() >= 2**31 - 1 or max(m.shape) >= 2**31 - 1:
        return m
    return _csr(m.crow_indices().int(), m.col_indices().int(), m.values(), m.shape)


def _transpose(m: Tensor) -> Tensor:
    """The CSR form of mᵀ, from the CSC form of the CSR matrix ``m``."""
    csc = m.to_sparse_csc()
    return _csr(csc.ccol_indices(), csc.row_indices(), csc.values(), (m.shape[1], m.shape[0]))


class _SparseMatmul(torch.autograd.Function):
    """``m @ x`` for a constant CSR ``m`` with its CSR transpose ``mt``; the backward applies ``mt``
    (and is itself differentiable, so double backward works)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor, m: Tensor, mt: Tensor) -> Tensor:
        ctx.matrices = (m, mt)  # type: ignore[attr-defined]
        return m @ x

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, None, None]:
        m, mt = ctx.matrices  # type: ignore[attr-defined]
        return _SparseMatmul.apply(grad, mt, m), None, None


class ParallelBeamCT(LinearOperator):
    """2D parallel-beam CT on batches of slices: (…, ny, nx) → (…, n_angles, n_det).

    Joseph's projector (Joseph 1982) as a sparse matrix; see the module docstring for the
    geometry. Leading dimensions (batch, channels, …) are kept. The matrix and its transpose are
    built on first use for each device and precision of the inputs (float32 or float64; other
    real dtypes are projected in float32) and cached; :func:`fbp` needs only the geometry.

    Parameters
    ----------
    image_shape : (ny, nx) in pixels.
    angles : view angles in radians, any set (sparse-view, limited-angle, 360°).
    n_det : detector bins; default: enough to cover the image diagonal.
    pixel_size : side of a pixel, in the length unit of the data.
    det_spacing : detector bin pitch in the same unit; default ``pixel_size``.
    det_offset : s of the detector centre, i.e. minus the rotation axis' position from it (module docstring).
    noise_std : standard deviation of the measurement noise (see :class:`LinearOperator`).
    """

    def __init__(
        self,
        image_shape: tuple[int, int],
        angles: Tensor | np.ndarray | Sequence[float],
        n_det: int | None = None,
        pixel_size: float = 1.0,
        det_spacing: float | None = None,
        det_offset: float = 0.0,
        noise_std: float = 0.0,
    ) -> None:
        ny, nx = (int(n) for n in image_shape)
        if ny < 1 or nx < 1 or pixel_size <= 0:
            raise ValueError(f"image_shape {image_shape} and pixel_size {pixel_size} must be positive")
        self.image_shape = (ny, nx)
        if isinstance(angles, Tensor):
            self.angles = angles.detach().to("cpu", torch.float64).clone().reshape(-1)
        else:
            self.angles = torch.from_numpy(np.array(angles, dtype=np.float64)).reshape(-1)
        if len(self.angles) == 0 or not bool(torch.isfinite(self.angles).all()):
            raise ValueError("angles must be a non-empty set of finite values (radians)")
        self.pixel_size = float(pixel_size)
        self.det_spacing = float(det_spacing if det_spacing is not None else pixel_size)
        if self.det_spacing <= 0:
            raise ValueError(f"det_spacing {det_spacing} must be positive")
        diagonal = math.hypot(ny, nx) * self.pixel_size / self.det_spacing
        self.n_det = int(n_det) if n_det is not None else int(math.ceil(diagonal))
        self.det_offset = float(det_offset)
        self.noise_std = noise_std
        self._matrices: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}

    @classmethod
    def from_store(
        cls,
        store: xr.Dataset | xr.DataArray,
        image_shape: tuple[int, int],
        pixel_size: float | None = None,
        det_offset: float | None = None,
        noise_std: float = 0.0,
    ) -> ParallelBeamCT:
        """The operator for a CT projection store (``diffinv ingest ct``): its ``angle`` (rad) and
        ``detector`` (bin centres, read as s) coordinates, ``detector_spacing`` and ``image_extent``
        attributes.

        Select views first (``store.isel(angle=...)``) for sparse-view or limited-angle subsets.
        ``pixel_size`` defaults to ``image_extent / max(image_shape)`` where the store records an
        image extent (LoDoPaB), else to the detector spacing; ``det_offset`` to the mean of the
        detector coordinate (zero for centred detectors).
        """
        attrs = store.attrs
        if attrs.get("geometry", "parallel") != "parallel":
            raise ValueError(f"store geometry {attrs['geometry']!r} is not parallel-beam")
        detector = np.asarray(store["detector"].values, dtype=np.float64)
        steps = np.diff(detector)
        spacing = float(attrs.get("detector_spacing", steps.mean() if len(steps) else 1.0))
        if len(steps) and not np.allclose(steps, spacing, rtol=1e-6):
            raise ValueError("store detector coordinates are not evenly spaced by its detector_spacing")
        if pixel_size is None:
            extent = attrs.get("image_extent")
            pixel_size = float(extent) / max(image_shape) if extent is not None else spacing
        return cls(
            image_shape,
            np.asarray(store["angle"].values, dtype=np.float64),
            len(detector),
            pixel_size,
            spacing,
            float(detector.mean()) if det_offset is None else det_offset,
            noise_std,
        )

    @property
    def n_angles(self) -> int:
        """Number of views."""
        return len(self.angles)

    def matrix(
        self, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> tuple[Tensor, Tensor]:
        """The CSR system matrix M (n_angles·n_det, ny·nx) and the CSR form of Mᵀ, built or cached."""
        key = (torch.empty(0, device=device).device, dtype)  # "cuda" → "cuda:0", as tensors report it
        if key not in self._matrices:
            geometry = (self.n_det, self.pixel_size, self.det_spacing, self.det_offset)
            m = _narrow_indices(joseph_matrix(self.image_shape, self.angles, *geometry, key[0]).to(dtype))
            self._matrices[key] = (m, _transpose(m))
        return self._matrices[key]

    @property
    def nnz(self) -> int:
        """Stored weights of the system matrix (its transpose holds as many again)."""
        return self.matrix(*next(iter(self._matrices), ("cpu", torch.float32)))[0]._nnz()

    @property
    def matrix_bytes(self) -> int:
        """Memory of all cached matrices and their transposes, in bytes."""
        return sum(
            sum(t.element_size() * t.numel() for t in (m.crow_indices(), m.col_indices(), m.values()))
            for pair in self._matrices.values()
            for m in pair
        )

    def _apply(self, v: Tensor, n_in: int, out_shape: tuple[int, int], adjoint: bool) -> Tensor:
        if v.is_complex():
            raise TypeError("ParallelBeamCT works on real tensors")
        lead = v.shape[:-2]
        work = v if v.dtype in (torch.float32, torch.float64) else v.float()
        m, mt = self.matrix(work.device, work.dtype)
        if adjoint:
            m, mt = mt, m
        flat = work.reshape(-1, n_in).T
        out = _SparseMatmul.apply(flat, m, mt).T.reshape(*lead, *out_shape)
        return out.to(v.dtype)

    def A(self, x: Tensor) -> Tensor:
        """Sinograms (…, n_angles, n_det) of images (…, ny, nx)."""
        if tuple(x.shape[-2:]) != self.image_shape or x.ndim < 3:
            raise ValueError(f"expected images (batch, ..., {self.image_shape}), got {tuple(x.shape)}")
        return self._apply(x, x.shape[-1] * x.shape[-2], (self.n_angles, self.n_det), adjoint=False)

    def A_adjoint(self, y: Tensor) -> Tensor:
        """Back-projections (…, ny, nx) of sinograms (…, n_angles, n_det), the transpose of :meth:`A`."""
        if tuple(y.shape[-2:]) != (self.n_angles, self.n_det) or y.ndim < 3:
            raise ValueError(
                f"expected sinograms (batch, ..., {self.n_angles}, {self.n_det}), got {tuple(y.shape)}"
            )
        return self._apply(y, self.n_angles * self.n_det, self.image_shape, adjoint=True)


def angular_weights(angles: Tensor) -> Tensor:
    """Quadrature weights (radians) of the views for back-projection over [0, π).

    Angles are taken modulo π (θ and θ + π measure the same lines, so 360° scans count once);
    each view gets half of the gap to its neighbour on either side, except gaps wider than
    :data:`WEDGE_GAP` median gaps (a missing wedge, e.g. limited-angle), which count for neither
    (the trapezoid rule on each covered arc). Uniform views over [0, π) get π / n each.
    """
    theta = torch.remainder(angles.to(torch.float64), math.pi)
    order = torch.argsort(theta)
    ordered = theta[order]
    gaps = torch.diff(torch.cat([ordered, ordered[:1] + math.pi]))
    distinct = gaps[gaps > 1e-3 * math.pi / len(gaps)]  # duplicates (360° scans) share one weight
    if len(distinct) == 0:
        return torch.full_like(theta, math.pi / len(theta))
    gaps = torch.where(gaps > WEDGE_GAP * distinct.median(), torch.zeros_like(gaps), gaps)
    weights = torch.empty_like(theta)
    weights[order] = (gaps + gaps.roll(1)) / 2
    return weights


def ramp_filter(
    n_det: int, filter: FilterName, dtype: torch.dtype, device: torch.device
) -> tuple[int, Tensor]:
    """Padded length and rfft-domain response of the band-limited ramp filter with a window.

    The ramp is the FFT of the spatial Ram–Lak kernel h(0) = 1/4, h(n odd) = −1/(πn)², h(n even) = 0
    (Kak & Slaney 1988, eq. 3.61, unit sampling), which avoids the DC offset of a sampled |ω|;
    windows (f in cycles per bin): Shepp–Logan sinc(f), cosine cos(πf), Hann cos²(πf).
    Zero padding to at least twice the detector length (a power of two, ≥ 64) avoids wrap-around.
    """
    if filter not in FILTERS:
        raise ValueError(f"unknown filter {filter!r}: use one of {', '.join(FILTERS)}")
    size = max(64, 1 << math.ceil(math.log2(2 * n_det)))
    n = torch.arange(size, dtype=dtype, device=device)
    n = torch.minimum(n, size - n)
    kernel = torch.where(n % 2 == 1, -1 / (math.pi * n.clamp_min(1)) ** 2, torch.zeros_like(n))
    kernel[0] = 0.25
    f = torch.fft.rfftfreq(size, dtype=dtype, device=device)
    window = {
        "ram-lak": torch.ones_like(f),
        "shepp-logan": torch.sinc(f),
        "cosine": torch.cos(math.pi * f),
        "hann": torch.cos(math.pi * f) ** 2,
    }[filter]
    return size, torch.fft.rfft(kernel).real * window


def interpolating_backprojection(q: Tensor, op: ParallelBeamCT) -> Tensor:
    """Pixel-driven back-projection Σ_k q_k(x cos θ_k + y sin θ_k) with linear interpolation between
    bins and zero beyond the detector (Kak & Slaney 1988, eq. 3.44; skimage's ``iradon``), (…, ny, nx).

    Needs no system matrix; views are processed in chunks that bound the memory.
    """
    ny, nx = op.image_shape
    width = op.n_det + 2  # a zero bin at either end of each view absorbs positions off the detector
    x = _pixel_centres(nx, op.pixel_size, q.dtype, q.device)
    y = -_pixel_centres(ny, op.pixel_size, q.dtype, q.device)[:, None]
    lead = q.shape[:-2]
    padded = torch.nn.functional.pad(q, (1, 1)).reshape(-1, op.n_angles * width)
    out = q.new_zeros(padded.shape[0], ny * nx)
    step = max(1, _CHUNK_ENTRIES // (padded.shape[0] * ny * nx))
    for start in range(0, op.n_angles, step):
        theta = op.angles[start : start + step].to(q.device, q.dtype)[:, None, None]
        s = x * torch.cos(theta) + y * torch.sin(theta)
        pos = ((s - op.det_offset) / op.det_spacing + (op.n_det + 1) / 2).clamp(0, op.n_det + 1).flatten(1)
        base = torch.floor(pos)
        low = base.long() + torch.arange(start, start + len(theta), device=q.device)[:, None] * width
        high = (low + 1).clamp_max(padded.shape[1] - 1)
        pair = padded.index_select(1, torch.cat([low, high]).flatten()).reshape(-1, 2, *low.shape)
        out = out + torch.lerp(pair[:, 0], pair[:, 1], pos - base).sum(1)
    return out.reshape(*lead, ny, nx)


def fbp(
    y: Tensor,
    op: ParallelBeamCT,
    filter: FilterName = "ram-lak",
    backprojector: Literal["interpolate", "adjoint"] = "interpolate",
) -> Tensor:
    """Filtered back-projection (Kak & Slaney 1988, ch. 3.3) of sinograms (…, n_angles, n_det).

    Each view is ramp-filtered (:func:`ramp_filter`, divided by the bin pitch Δs) and weighted
    by its angular share (:func:`angular_weights`), then back-projected by linear interpolation
    (``interpolate``: :func:`interpolating_backprojection`, no system matrix) or by ``op.A_adjoint``
    (``adjoint``: Joseph's transpose, which spreads a pixel over bins with total weight p²/Δs,
    hence a 1/p² scale). Returns images (…, ny, nx) in data units per length unit (attenuation).
    """
    if tuple(y.shape[-2:]) != (op.n_angles, op.n_det):
        raise ValueError(f"expected sinograms (..., {op.n_angles}, {op.n_det}), got {tuple(y.shape)}")
    if backprojector not in ("interpolate", "adjoint"):
        raise ValueError(f"unknown backprojector {backprojector!r}: use interpolate or adjoint")
    work = y if y.dtype in (torch.float32, torch.float64) else y.float()
    size, response = ramp_filter(op.n_det, filter, work.dtype, work.device)
    filtered = torch.fft.irfft(torch.fft.rfft(work, n=size, dim=-1) * response, n=size, dim=-1)
    weights = angular_weights(op.angles).to(work.device, work.dtype)[:, None]
    filtered = filtered[..., : op.n_det] * weights
    if backprojector == "adjoint":
        return (op.A_adjoint(filtered) / op.pixel_size**2).to(y.dtype)
    return (interpolating_backprojection(filtered, op) / op.det_spacing).to(y.dtype)


__all__ = [
    "FILTERS",
    "SHEPP_LOGAN",
    "Ellipse",
    "ParallelBeamCT",
    "angular_weights",
    "ellipse_image",
    "ellipse_sinogram",
    "fbp",
    "interpolating_backprojection",
    "joseph_matrix",
    "ramp_filter",
]
