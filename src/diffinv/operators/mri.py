"""Cartesian MRI: centred orthonormal FFTs, sampling masks, coil sensitivities, SENSE operator.

Images travel as two real channels (B, 2, H, W) so that denoisers, guidance and this
operator share one representation; k-space is complex (B, [C,] H, W). Phase encoding
(the subsampled direction) is the last axis W, as in fastMRI.
"""

from __future__ import annotations

import fastmri
import torch
from fastmri.data.subsample import create_mask_for_mask_type
from torch import Tensor

from diffinv.complex import channels_to_complex, complex_to_channels
from diffinv.errors import ConfigError
from diffinv.operators.base import LinearOperator

MASK_TYPES = ("random", "equispaced", "equispaced_fraction", "magic", "magic_fraction")


def fft2c(image: Tensor) -> Tensor:
    """Centred orthonormal 2D FFT of a complex tensor over the last two axes (fastMRI's ``fft2c``)."""
    return torch.view_as_complex(fastmri.fft2c(torch.view_as_real(image.contiguous())).contiguous())


def ifft2c(kspace: Tensor) -> Tensor:
    """Centred orthonormal 2D inverse FFT (fastMRI's ``ifft2c``); the adjoint of :func:`fft2c`."""
    return torch.view_as_complex(fastmri.ifft2c(torch.view_as_real(kspace.contiguous())).contiguous())


def sampling_mask(kind: str, width: int, acceleration: float, center_fraction: float, seed: int) -> Tensor:
    """A 1D column mask (width,) bool from fastMRI's mask functions with exactly round(W/R) lines.

    ``kind`` is one of fastMRI's mask types (``random``, ``equispaced``,
    ``equispaced_fraction``, ``magic``, ``magic_fraction``). fastMRI's functions can miss
    the line budget by a few lines on small widths (random draws, overlap with the
    centre); the budget is then met exactly by adding or dropping random non-centre
    lines, reproducibly from ``seed``, so that masks compared at one acceleration always
    hold the same number of lines.
    """
    if kind not in MASK_TYPES:
        raise ConfigError(f"mask.kind: unknown {kind!r} (fix: use one of {', '.join(MASK_TYPES)})")
    num_low = int(round(width * center_fraction))
    budget = max(num_low, int(round(width / acceleration)))
    try:
        mask, _ = create_mask_for_mask_type(kind, [center_fraction], [acceleration])(
            (1, width, 1), offset=None, seed=seed
        )
        mask = mask.reshape(width) > 0
    except (
        ZeroDivisionError,
        ValueError,
    ):  # fastMRI fraction masks fail when the centre alone meets the budget
        mask = center_mask(width, num_low)
    rng = torch.Generator().manual_seed(int(seed))
    centre = center_mask(width, num_low)
    surplus = int(mask.sum()) - budget
    if surplus > 0:
        candidates = torch.nonzero(mask & ~centre).flatten()
        mask[candidates[torch.randperm(len(candidates), generator=rng)[:surplus]]] = False
    elif surplus < 0:
        candidates = torch.nonzero(~mask).flatten()
        mask[candidates[torch.randperm(len(candidates), generator=rng)[:-surplus]]] = True
    return mask


def variable_density_mask(
    width: int, budget: int, num_low_frequencies: int, seed: int, power: float = 3.0
) -> Tensor:
    """Column mask with the centre lines plus random lines drawn with density ∝ (1 − |k|)^power.

    Polynomial variable density as in Lustig, Donoho & Pauly 2007 (Sparse MRI, §III.B),
    drawn without replacement; exactly ``budget`` lines in total.
    """
    mask = center_mask(width, num_low_frequencies)
    k = torch.abs(torch.linspace(-1, 1, width, dtype=torch.float64))
    density = (1 - k).clamp_min(1e-6) ** power
    density[mask] = 0
    extra = max(0, budget - int(mask.sum()))
    if extra:
        picks = torch.multinomial(
            density, extra, replacement=False, generator=torch.Generator().manual_seed(int(seed))
        )
        mask[picks] = True
    return mask


def center_mask(width: int, num_low_frequencies: int) -> Tensor:
    """Column mask (width,) bool of the ``num_low_frequencies`` central lines (fastMRI's centring)."""
    mask = torch.zeros(width, dtype=torch.bool)
    pad = (width - num_low_frequencies + 1) // 2
    mask[pad : pad + num_low_frequencies] = True
    return mask


def estimate_sensitivities(kspace: Tensor, num_low_frequencies: int, eps: float = 1e-6) -> Tensor:
    """Coil sensitivities from the calibration (ACS) lines, (…, C, H, W) complex.

    Method: low-resolution coil images from the central ``num_low_frequencies`` lines
    with a Hann window along the phase-encode axis, divided by their root sum of squares
    (McKenzie et al. 2002, "Self-calibrating parallel imaging with automatic coil
    sensitivity extraction"). The maps satisfy Σ_c |S_c|² = 1 wherever any coil has
    signal, so fully sampled SENSE is unitary. ESPIRiT would additionally mask the
    background; supply your own maps through :class:`MRIOperator` for that.
    """
    width = kspace.shape[-1]
    n = max(2, min(num_low_frequencies, width))
    window = torch.zeros(width, dtype=kspace.real.dtype)
    start = (width - n + 1) // 2
    window[start : start + n] = torch.hann_window(n + 2, periodic=False, dtype=kspace.real.dtype)[1:-1]
    low = ifft2c(kspace * window)
    rss = (low.abs() ** 2).sum(-3, keepdim=True).sqrt()
    return low / rss.clamp_min(eps * rss.amax(dim=(-3, -2, -1), keepdim=True).clamp_min(1e-30))


class MRIOperator(LinearOperator):
    """Cartesian (multi-coil) MRI: A x = M ⊙ F(S x) on two-channel images (B, 2, H, W).

    Parameters
    ----------
    mask : column mask broadcastable to (B, W): (W,) or (B, W), bool or 0/1.
    sensitivities : (B, C, H, W) complex maps, or ``None`` for single-coil.
    noise_std : standard deviation of each real component of the k-space noise.
    """

    def __init__(self, mask: Tensor, sensitivities: Tensor | None = None, noise_std: float = 0.0) -> None:
        m = mask.to(torch.float32)
        self.mask = m.reshape(m.shape[:-1] + (1, m.shape[-1])) if m.ndim == 2 else m.reshape(1, 1, -1)
        self.sensitivities = sensitivities
        if sensitivities is not None:
            self.mask = self.mask.unsqueeze(-3) if self.mask.ndim == 3 else self.mask
        self.noise_std = noise_std

    @property
    def multicoil(self) -> bool:
        """Whether the operator has coil sensitivities."""
        return self.sensitivities is not None

    def A(self, x: Tensor) -> Tensor:
        z = channels_to_complex(x)
        if self.multicoil:
            z = self.sensitivities * z.unsqueeze(-3)
        return self.mask.to(z.device) * fft2c(z)

    def A_adjoint(self, y: Tensor) -> Tensor:
        z = ifft2c(self.mask.to(y.device) * y)
        if self.multicoil:
            z = (self.sensitivities.conj() * z).sum(-3)
        return complex_to_channels(z)

    def project(self, x: Tensor, y: Tensor, cg_steps: int = 100) -> Tensor:
        """Hard data consistency: the point nearest ``x`` with A x = y.

        Single coil: exact, by replacing the measured k-space of x with y. Multi-coil:
        ``cg_steps`` of CG on the normal equations started at x, which converges to the
        same orthogonal projection (CG iterates stay in x + range(AᴴA)).
        """
        if self.multicoil:
            return self.solve_normal(y, x, steps=cg_steps)
        z = channels_to_complex(x)
        m = self.mask.to(z.device)
        return complex_to_channels(ifft2c((1 - m) * fft2c(z) + m * y))


__all__ = [
    "MRIOperator",
    "center_mask",
    "estimate_sensitivities",
    "fft2c",
    "ifft2c",
    "sampling_mask",
    "variable_density_mask",
]
