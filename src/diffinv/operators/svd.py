"""Operators with a known singular value decomposition A = U diag(s) Vᵀ.

DDRM and MCGdiff work in the spectral coordinates x̄ = Vᵀx and ȳ = Uᵀy (Kawar et al.
2022, §3.2; Cardoso et al. 2024, §3). Here spectral coefficients have one fixed shape per
operator (``coefficient_shape``), ``singular_values`` broadcasts to it (zero where a
direction is unobserved), ``U_T`` maps a measurement to coefficients (zero where s = 0)
and ``U`` maps coefficients back (ignoring entries with s = 0). Then A x = U(s ⊙ Vᵀx)
and Aᵀy = V(s ⊙ Uᵀy); the adjoint test checks both.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffinv.complex import channels_to_complex, complex_to_channels
from diffinv.errors import ConfigError
from diffinv.operators.base import LinearOperator
from diffinv.operators.mri import MRIOperator, fft2c, ifft2c


class SVDOperator(LinearOperator):
    """A linear operator given by its SVD; subclasses implement V, Vᵀ, U, Uᵀ and ``singular_values``."""

    singular_values: Tensor

    def V_T(self, x: Tensor) -> Tensor:
        """Signal -> spectral coefficients (orthogonal)."""
        raise NotImplementedError

    def V(self, c: Tensor) -> Tensor:
        """Spectral coefficients -> signal (inverse of :meth:`V_T`)."""
        raise NotImplementedError

    def U_T(self, y: Tensor) -> Tensor:
        """Measurement -> coefficients (zero where the singular value is zero)."""
        raise NotImplementedError

    def U(self, c: Tensor) -> Tensor:
        """Coefficients -> measurement (entries with zero singular value are ignored)."""
        raise NotImplementedError

    def A(self, x: Tensor) -> Tensor:
        return self.U(self.singular_values.to(x.device) * self.V_T(x))

    def A_adjoint(self, y: Tensor) -> Tensor:
        return self.V(self.singular_values.to(y.device) * self.U_T(y))

    def spectral_y(self, y: Tensor) -> Tensor:
        """ȳ = Uᵀy / s on observed directions, 0 elsewhere (the pseudo-inverse in spectral form)."""
        s = self.singular_values.to(y.device)
        return torch.where(
            s > 0, self.U_T(y) / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(s)
        )


class MatrixSVD(SVDOperator):
    """A dense matrix A (m, d) acting on flat signals (B, d), decomposed with ``torch.linalg.svd``."""

    def __init__(self, matrix: Tensor, noise_std: float = 0.0) -> None:
        self.matrix = matrix
        u, s, vh = torch.linalg.svd(matrix, full_matrices=True)
        m, d = matrix.shape
        r = min(m, d)
        self.u = u[:, :r]
        self.v = vh.T  # (d, d)
        self.singular_values = torch.cat([s[:r], torch.zeros(d - r, dtype=s.dtype)])
        self.rank = r
        self.noise_std = noise_std

    def A(self, x: Tensor) -> Tensor:
        return x @ self.matrix.T.to(x.dtype)

    def A_adjoint(self, y: Tensor) -> Tensor:
        return y @ self.matrix.to(y.dtype)

    def V_T(self, x: Tensor) -> Tensor:
        return x @ self.v.to(x.dtype)

    def V(self, c: Tensor) -> Tensor:
        return c @ self.v.T.to(c.dtype)

    def U_T(self, y: Tensor) -> Tensor:
        c = y @ self.u.to(y.dtype)
        return torch.cat([c, c.new_zeros(c.shape[0], self.v.shape[0] - self.rank)], dim=1)

    def U(self, c: Tensor) -> Tensor:
        return c[:, : self.rank] @ self.u.T.to(c.dtype)


class Inpainting(SVDOperator):
    """Keep the entries of a boolean ``mask`` (signal shape): y = x[mask], shape (B, n_kept).

    V is the identity (coefficients are the signal itself), s = mask, U scatters.
    """

    def __init__(self, mask: Tensor, noise_std: float = 0.0) -> None:
        self.mask = mask.to(torch.bool)
        self.singular_values = self.mask.to(torch.float64)
        self.noise_std = noise_std

    def A(self, x: Tensor) -> Tensor:
        return x[:, self.mask.to(x.device)]

    def A_adjoint(self, y: Tensor) -> Tensor:
        return self.U_T(y)

    def V_T(self, x: Tensor) -> Tensor:
        return x

    def V(self, c: Tensor) -> Tensor:
        return c

    def U_T(self, y: Tensor) -> Tensor:
        out = y.new_zeros((y.shape[0],) + tuple(self.mask.shape))
        out[:, self.mask.to(y.device)] = y
        return out

    def U(self, c: Tensor) -> Tensor:
        return self.A(c)


class FourierSubsampling(SVDOperator):
    """Single-coil Cartesian MRI as an SVD: Vᵀ = centred orthonormal FFT, s = column mask, U = identity.

    Acts on two-channel images (B, 2, H, W) and complex k-space (B, H, W), exactly like
    :class:`~diffinv.operators.mri.MRIOperator` without coil sensitivities.
    """

    def __init__(self, mask: Tensor, noise_std: float = 0.0) -> None:
        m = mask.to(torch.float64)
        cols = m.reshape(m.shape[:-1] + (1, m.shape[-1])) if m.ndim == 2 else m.reshape(1, -1)
        self.mask = cols.to(torch.float32)  # broadcasts to k-space (B, H, W)
        self.singular_values = cols.unsqueeze(-3)  # broadcasts to coefficients (B, 2, H, W)
        self.noise_std = noise_std

    def A(self, x: Tensor) -> Tensor:
        return self.mask.to(x.device) * fft2c(channels_to_complex(x))

    def A_adjoint(self, y: Tensor) -> Tensor:
        return complex_to_channels(ifft2c(self.mask.to(y.device) * y))

    def V_T(self, x: Tensor) -> Tensor:
        return complex_to_channels(fft2c(channels_to_complex(x)))

    def V(self, c: Tensor) -> Tensor:
        return complex_to_channels(ifft2c(channels_to_complex(c)))

    def U_T(self, y: Tensor) -> Tensor:
        return complex_to_channels(self.mask.to(y.device) * y)

    def U(self, c: Tensor) -> Tensor:
        return self.mask.to(c.device) * channels_to_complex(c)


def _block_basis(n: int) -> Tensor:
    """Orthonormal n×n matrix whose first column is constant 1/√n (Gram–Schmidt of [1, I])."""
    m = torch.eye(n, dtype=torch.float64)
    m[:, 0] = 1.0
    q, _ = torch.linalg.qr(m)
    return q * torch.sign(q[0, 0])


class BlockAverage(SVDOperator):
    """Average over non-overlapping f×f blocks of (B, C, H, W) images (super-resolution by f).

    Each block contributes one singular value 1/f along the constant vector; the other
    f² − 1 directions of the block span its null space (Kawar et al. 2022, App. "SR").
    """

    def __init__(self, factor: int, shape: tuple[int, int, int], noise_std: float = 0.0) -> None:
        c, h, w = shape
        if factor < 1 or h % factor or w % factor:
            raise ConfigError(f"block averaging: factor {factor} must divide the image size {h}×{w}")
        self.f = factor
        self.shape = (c, h, w)
        self.basis = _block_basis(factor * factor)
        s = torch.zeros(c, h // factor, w // factor, factor * factor, dtype=torch.float64)
        s[..., 0] = 1.0 / factor
        self.singular_values = s
        self.noise_std = noise_std

    def _blocks(self, x: Tensor) -> Tensor:
        b, (c, h, w), f = x.shape[0], self.shape, self.f
        return (
            x.reshape(b, c, h // f, f, w // f, f)
            .permute(0, 1, 2, 4, 3, 5)
            .reshape(b, c, h // f, w // f, f * f)
        )

    def _unblocks(self, z: Tensor) -> Tensor:
        b, (c, h, w), f = z.shape[0], self.shape, self.f
        return z.reshape(b, c, h // f, w // f, f, f).permute(0, 1, 2, 4, 3, 5).reshape(b, c, h, w)

    def A(self, x: Tensor) -> Tensor:
        return self._blocks(x).mean(-1)

    def A_adjoint(self, y: Tensor) -> Tensor:
        return self._unblocks(y[..., None].expand(y.shape + (self.f * self.f,)) / (self.f * self.f))

    def V_T(self, x: Tensor) -> Tensor:
        return self._blocks(x) @ self.basis.to(x.dtype)

    def V(self, c: Tensor) -> Tensor:
        return self._unblocks(c @ self.basis.T.to(c.dtype))

    def U_T(self, y: Tensor) -> Tensor:
        out = y.new_zeros(y.shape + (self.f * self.f,))
        out[..., 0] = y
        return out

    def U(self, c: Tensor) -> Tensor:
        return c[..., 0]


def as_svd(operator: LinearOperator) -> SVDOperator:
    """The operator itself if it has an SVD; single-coil MRI as :class:`FourierSubsampling`; else an error."""
    if isinstance(operator, SVDOperator):
        return operator
    if isinstance(operator, MRIOperator) and not operator.multicoil:
        mask = (
            operator.mask.reshape(operator.mask.shape[0], -1)
            if operator.mask.shape[0] > 1
            else operator.mask.reshape(-1)
        )
        return FourierSubsampling(mask, operator.noise_std)
    raise ConfigError(
        f"{type(operator).__name__} has no known SVD (fix: use masks, single-coil Fourier subsampling, "
        "block averaging or a dense matrix, or a guidance that needs no SVD such as dds or pigdm)"
    )


__all__ = ["BlockAverage", "FourierSubsampling", "Inpainting", "MatrixSVD", "SVDOperator", "as_svd"]
