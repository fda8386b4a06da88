"""3D Cartesian MRI: a centred 3D FFT of a volume, sampled on a (kz, k_phase) mask.

Volumes travel as two real channels per slice, (B, Z, 2, H, W) (axial slices z, readout y = H,
phase encode x = W, as in fastMRI), so that the 2D slice prior of the MRI stage applies to
every slice. The forward model of 3D Cartesian acquisition (two phase-encode directions, kz
and k_phase; every readout line kept) is

    A x = M ⊙ F₃(S x),   F₃ = centred orthonormal FFT along z, y and x,

with M a mask over the (kz, k_phase) plane broadcast along readout (and coils), and S
optional coil sensitivities per slice (``None``: single coil). F₃ is unitary, so with Σ|S|² = 1
the operator's norm is at most 1. The mask is the variable-density random 2D mask of
:func:`variable_density_mask_2d` (undersampling along two axes).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from diffinv.complex import channels_to_complex, complex_to_channels
from diffinv.errors import ConfigError
from diffinv.operators.base import LinearOperator
from diffinv.operators.mri import center_mask


def fftc(x: Tensor, dims: Sequence[int]) -> Tensor:
    """Centred orthonormal FFT of a complex tensor along ``dims`` (fastMRI's ``fft2c`` on any axes)."""
    dims = tuple(dims)
    x = torch.fft.ifftshift(x, dim=dims)
    return torch.fft.fftshift(torch.fft.fftn(x, dim=dims, norm="ortho"), dim=dims)


def ifftc(k: Tensor, dims: Sequence[int]) -> Tensor:
    """Centred orthonormal inverse FFT along ``dims``; the adjoint (and inverse) of :func:`fftc`."""
    dims = tuple(dims)
    k = torch.fft.ifftshift(k, dim=dims)
    return torch.fft.fftshift(torch.fft.ifftn(k, dim=dims, norm="ortho"), dim=dims)


def calibration_block(shape: tuple[int, int], center_fraction: float) -> Tensor:
    """The fully sampled centre of a (kz, k_phase) plane: ``max(2, round(n · center_fraction))``
    central lines along each axis (at most n), centred as fastMRI's :func:`center_mask`."""
    nz, nx = (min(n, max(2, int(round(n * center_fraction)))) for n in shape)
    return center_mask(shape[0], nz)[:, None] & center_mask(shape[1], nx)[None, :]


def variable_density_mask_2d(
    shape: tuple[int, int], acceleration: float, center_fraction: float, seed: int, power: float = 3.0
) -> Tensor:
    """A (kz, k_phase) mask (Z, W) bool with ``round(Z·W / acceleration)`` points in all.

    The :func:`calibration_block` is fully sampled; the other points are drawn without
    replacement with density ∝ (1 − r)^power, r = √(kz² + kx²) with both frequencies scaled
    to [−1, 1] (polynomial variable density, Lustig, Donoho & Pauly 2007, §III.B, on the
    phase-encode plane; the corners beyond r = 1 keep a tiny density). Reproducible from
    ``seed`` (e.g. :attr:`diffinv.stages.core.CaseSeeds.mask` of the volume).
    """
    if not acceleration >= 1:
        raise ConfigError(f"mri3d acceleration: must be >= 1, got {acceleration!r} (fix: e.g. 4)")
    mask = calibration_block(shape, center_fraction)
    kz = torch.linspace(-1, 1, shape[0], dtype=torch.float64)[:, None]
    kx = torch.linspace(-1, 1, shape[1], dtype=torch.float64)[None, :]
    density = (1 - (kz**2 + kx**2).sqrt()).clamp_min(1e-6) ** power
    density[mask] = 0
    extra = max(0, int(round(shape[0] * shape[1] / acceleration)) - int(mask.sum()))
    if extra:
        gen = torch.Generator().manual_seed(int(seed) % 2**63)
        picks = torch.multinomial(density.flatten(), extra, replacement=False, generator=gen)
        mask.view(-1)[picks] = True
    return mask


DIMS = (1, -2, -1)  # z, readout, phase encode of (B, Z, [C,] H, W) k-space


class MRI3DOperator(LinearOperator):
    """3D Cartesian MRI on two-channel volumes (B, Z, 2, H, W): A x = M ⊙ F₃(S x) (module docstring).

    Parameters
    ----------
    mask : (Z, W) or (B, Z, W) mask over (kz, k_phase), bool or 0/1; broadcast along readout H.
    sensitivities : (Z, C, H, W) or (B, Z, C, H, W) complex coil maps per slice, or ``None``
        (single coil: k-space (B, Z, H, W); multi-coil: (B, Z, C, H, W)).
    noise_std : standard deviation of each real component of the k-space noise.
    """

    def __init__(self, mask: Tensor, sensitivities: Tensor | None = None, noise_std: float = 0.0) -> None:
        m = mask.to(torch.float32)
        m = m if m.ndim == 3 else m[None]  # (B|1, Z, W)
        m = m[:, :, None, :]  # (B, Z, 1, W): every readout line
        if sensitivities is not None:
            sensitivities = sensitivities if sensitivities.ndim == 5 else sensitivities[None]
            m = m[:, :, None]  # (B, Z, 1, 1, W): and every coil
        self.mask, self.sensitivities, self.noise_std = m, sensitivities, noise_std

    @property
    def multicoil(self) -> bool:
        """Whether the operator has coil sensitivities."""
        return self.sensitivities is not None

    def A(self, x: Tensor) -> Tensor:
        z = channels_to_complex(x)  # (B, Z, H, W)
        if self.multicoil:
            z = self.sensitivities.to(z.device) * z.unsqueeze(-3)
        return self.mask.to(z.device) * fftc(z, DIMS)

    def A_adjoint(self, y: Tensor) -> Tensor:
        z = ifftc(self.mask.to(y.device) * y, DIMS)
        if self.multicoil:
            z = (self.sensitivities.to(z.device).conj() * z).sum(-3)
        return complex_to_channels(z)

    def project(self, x: Tensor, y: Tensor, cg_steps: int = 100) -> Tensor:
        """Hard data consistency: the point nearest ``x`` with A x = y (exact k-space replacement for a
        single coil; ``cg_steps`` of CG on the normal equations from x for several coils)."""
        if self.multicoil:
            return self.solve_normal(y, x, steps=cg_steps)
        m = self.mask.to(x.device)
        k = fftc(channels_to_complex(x), DIMS)
        return complex_to_channels(ifftc((1 - m) * k + m * y, DIMS))


__all__ = ["MRI3DOperator", "calibration_block", "fftc", "ifftc", "variable_density_mask_2d"]
