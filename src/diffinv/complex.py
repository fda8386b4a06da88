"""The one place where complex images become two real channels and back."""

from __future__ import annotations

import torch
from torch import Tensor


def complex_to_channels(z: Tensor) -> Tensor:
    """(..., H, W) complex -> (..., 2, H, W) real (real part, imaginary part)."""
    return torch.stack((z.real, z.imag), dim=-3)


def channels_to_complex(x: Tensor) -> Tensor:
    """(..., 2, H, W) real -> (..., H, W) complex; inverse of :func:`complex_to_channels`."""
    if x.shape[-3] != 2:
        raise ValueError(f"expected 2 channels (real, imag) at dim -3, got shape {tuple(x.shape)}")
    return torch.complex(x[..., 0, :, :].contiguous(), x[..., 1, :, :].contiguous())
