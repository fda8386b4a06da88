"""Compressed-sensing baseline: total-variation regularised SENSE, solved by ADMM with CG.

The reconstruction of a slice minimises

    F(x) = ½ ‖A x − y‖² + λ TV(x),   TV(x) = Σ_pixels ‖(D x)_pixel‖₂,

the cost function of TV-regularised multi-coil (SENSE) reconstruction of Block, Uecker
& Frahm 2007 (MRM 57:1086–1098), with A = M F S the Cartesian operator of
:class:`~diffinv.operators.mri.MRIOperator` and D forward differences along both image
axes (zero across the last row and column, Neumann boundary). TV is isotropic on the
complex image: the norm at each pixel runs over both directions and both the real and
imaginary parts.

Solver: ADMM in the scaled form of Boyd et al. 2011 ("Distributed optimization and
statistical learning via the alternating direction method of multipliers", §3.1.1,
iterations (3.5)–(3.7)) with the splitting z = D x:

    x ← argmin ½‖A x − y‖² + ρ/2 ‖D x − z + u‖²   (CG on (AᴴA + ρ DᴴD) x = Aᴴy + ρ Dᴴ(z − u))
    z ← shrink(D x + u, λ/ρ)                       (per-pixel isotropic soft threshold)
    u ← u + D x − z

the split-Bregman TV scheme of Goldstein & Osher 2009. Every slice of a batch carries its
own λ (and ρ = ``rho_factor`` · λ), so a grid of λ runs as one batch. λ is chosen on
training slices by :func:`select_lambda`, never on the slices being evaluated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diffinv.complex import channels_to_complex
from diffinv.metrics import image_metrics
from diffinv.operators.base import conjugate_gradient
from diffinv.operators.mri import MRIOperator

METHOD = "TV-regularised SENSE (isotropic TV, ADMM + CG)"


def gradient(x: Tensor) -> Tensor:
    """Forward differences of (B, 2, H, W) images: (B, 2 directions, 2 channels, H, W), 0 at the far edge."""
    dy = torch.zeros_like(x)
    dx = torch.zeros_like(x)
    dy[..., :-1, :] = x[..., 1:, :] - x[..., :-1, :]
    dx[..., :, :-1] = x[..., :, 1:] - x[..., :, :-1]
    return torch.stack((dy, dx), dim=1)


def gradient_adjoint(g: Tensor) -> Tensor:
    """Dᴴ of :func:`gradient` (minus the divergence): (B, 2, 2, H, W) -> (B, 2, H, W)."""
    gy, gx = g[:, 0], g[:, 1]
    out = torch.zeros_like(gy)
    out[..., :-1, :] -= gy[..., :-1, :]
    out[..., 1:, :] += gy[..., :-1, :]
    out[..., :, :-1] -= gx[..., :, :-1]
    out[..., :, 1:] += gx[..., :, :-1]
    return out


def total_variation(x: Tensor) -> Tensor:
    """Isotropic TV of each image of a (B, 2, H, W) batch, (B,)."""
    return gradient(x).pow(2).sum((1, 2)).sqrt().sum((-2, -1))


def tv_objective(op: MRIOperator, y: Tensor, x: Tensor, lam: Tensor | float) -> Tensor:
    """F(x) = ½‖A x − y‖² + λ TV(x) per slice, (B,)."""
    r = op.A(x) - y
    data = 0.5 * r.abs().pow(2).flatten(1).sum(1)
    return data + torch.as_tensor(lam, dtype=data.dtype, device=data.device) * total_variation(x)


def _per_slice(value: Tensor | float | Sequence[float], batch: int, device: Any) -> Tensor:
    v = torch.as_tensor(value, dtype=torch.float32, device=device).reshape(-1)
    return v.expand(batch) if v.numel() == 1 else v


def tv_sense(
    op: MRIOperator,
    y: Tensor,
    lam: Tensor | float | Sequence[float],
    iterations: int = 100,
    cg_steps: int = 4,
    rho_factor: float = 5.0,
) -> Tensor:
    """TV-regularised SENSE reconstructions of a batch, (B, 2, H, W) in the units of ``y``.

    ``op`` and ``y`` hold B slices (mask (B, W), sensitivities (B, C, H, W) or ``None``);
    ``lam`` is one weight or one per slice. ADMM (see the module docstring) from the
    zero-filled image Aᴴy, ``iterations`` outer steps of ``cg_steps`` warm-started CG
    steps each; a slice's result does not depend on the others in the batch.
    """
    x = op.A_adjoint(y)
    lam_b = _per_slice(lam, x.shape[0], x.device)
    rho = (rho_factor * lam_b).clamp_min(1e-8)
    rho_x = rho.reshape(-1, 1, 1, 1)
    thresh = (lam_b / rho).reshape(-1, 1, 1, 1)
    aty = x.clone()
    z = gradient(x)
    u = torch.zeros_like(z)

    def normal(v: Tensor) -> Tensor:
        return op.normal(v) + rho_x * gradient_adjoint(gradient(v))

    for _ in range(iterations):
        x = conjugate_gradient(normal, aty + rho_x * gradient_adjoint(z - u), x, cg_steps)
        v = gradient(x) + u
        norm = v.pow(2).sum((1, 2), keepdim=True).sqrt()
        z = v * (1 - thresh[:, None] / norm.clamp_min(1e-12)).clamp_min(0)
        u = v - z
    return x


def batch_problem(
    kspace: Sequence[Tensor], sensitivities: Sequence[Tensor | None], masks: Sequence[Tensor], device: str
) -> tuple[MRIOperator, Tensor]:
    """One operator and measurement for a batch of slices (single- or multi-coil, not mixed)."""
    mask = torch.stack([m.to(torch.float32) for m in masks]).to(device)
    sens = None if sensitivities[0] is None else torch.stack(list(sensitivities)).to(device)
    op = MRIOperator(mask, sens)
    k = torch.stack([kk if sens is not None else kk[0] for kk in kspace]).to(device)
    return op, op.mask * k


@dataclass
class LambdaChoice:
    """λ chosen on training slices: the grid, its scores, and the slices it was scored on."""

    value: float
    grid: list[float]
    ssim: list[float]
    psnr: list[float]
    settings: dict[str, Any]  # the solver settings λ was chosen with (and is used with)
    slices: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": METHOD,
            "lambda": self.value,
            **{k: v for k, v in self.settings.items() if k != "lambdas"},
            "grid": self.grid,
            "grid_ssim": self.ssim,
            "grid_psnr": self.psnr,
            "criterion": "mean SSIM of the magnitude on the tuning slices (training store)",
            "tuning_slices": self.slices,
        }


def select_lambda(
    cases: Sequence[Any], masks: Sequence[Tensor], settings: dict[str, Any], device: str
) -> LambdaChoice:
    """The λ of ``settings['lambdas']`` with the best mean SSIM on fully sampled ``cases``.

    ``cases`` are :class:`~diffinv.stages.mri.cases.MRICase` of the TRAINING store, each
    undersampled with its ``masks`` entry (same kind, acceleration and centre fraction as
    the evaluation); ties go to the smaller λ.
    """
    grid = [float(v) for v in settings["lambdas"]]
    op, y = batch_problem([c.kspace for c in cases], [c.sensitivities for c in cases], masks, device)
    images = []
    for lam in grid:  # one batch of slices per λ: memory holds the tuning slices once
        x = tv_sense(op, y, lam, settings["iterations"], settings["cg_steps"], settings["rho_factor"])
        images.append(channels_to_complex(x.cpu()).numpy())
    truths = [np.abs(channels_to_complex(c.truth).numpy()) for c in cases]
    scores = [[image_metrics(t, im) for t, im in zip(truths, per)] for per in images]
    ssim = [float(np.mean([s["ssim"] for s in row])) for row in scores]
    psnr = [float(np.mean([s["psnr"] for s in row])) for row in scores]
    best = int(np.argmax(ssim))
    return LambdaChoice(grid[best], grid, ssim, psnr, dict(settings), [c.label for c in cases])


def choose_lambda(
    train: Path,
    acceleration: int,
    mask_kind: str,
    center_fraction: float,
    settings: dict[str, Any],
    seed: int,
    device: str,
) -> LambdaChoice:
    """λ for one acceleration from ``settings['tuning_slices']`` slices of the TRAINING store ``train``.

    The slices are undersampled as evaluation slices are (mask kind, acceleration, centre
    fraction, masks seeded by each slice's identity); ``settings`` is ``mri.sampling.cs``.
    """
    from diffinv.stages.core import CaseSeeds
    from diffinv.stages.mri.cases import case_mask, tuning_cases

    cases = tuning_cases(train, center_fraction, settings["tuning_slices"])
    masks = [
        case_mask(c, acceleration, mask_kind, center_fraction, CaseSeeds.of(seed, c.label)) for c in cases
    ]
    return select_lambda(cases, masks, settings, device)


def cs_reconstruction(
    cases: Sequence[Any], masks: Sequence[Tensor], choice: LambdaChoice, device: str
) -> Tensor:
    """TV-SENSE images (B, 2, H, W) on the CPU of a batch of cases under their masks (normalised
    units), with the λ and solver settings of ``choice``."""
    op, y = batch_problem([c.kspace for c in cases], [c.sensitivities for c in cases], masks, device)
    s = choice.settings
    return tv_sense(op, y, choice.value, s["iterations"], s["cg_steps"], s["rho_factor"]).cpu()


def cs_long_name(lam: float) -> str:
    """The store's description of the CS variable."""
    return f"compressed sensing: {METHOD}, lambda={lam:.3g} (chosen on training slices)"
