"""Linear operator interface, batched conjugate gradient and the adjoint test."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def inner(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample real inner product Re<a, b>, summed over all but the first dimension."""
    prod = (a.conj() * b).real if a.is_complex() or b.is_complex() else a * b
    return prod.reshape(a.shape[0], -1).sum(1)


class LinearOperator:
    """A linear forward model y = A x + n on batched signals (first dim = batch).

    Subclasses implement :meth:`A` and :meth:`A_adjoint` (adjoint for the real inner
    product Re<·,·>, which for complex-linear maps is the usual Hermitian adjoint).
    ``noise_std`` is the standard deviation of each real component of n.
    """

    noise_std: float = 0.0

    def A(self, x: Tensor) -> Tensor:
        """Forward map."""
        raise NotImplementedError

    def A_adjoint(self, y: Tensor) -> Tensor:
        """Adjoint map."""
        raise NotImplementedError

    def normal(self, x: Tensor) -> Tensor:
        """AᴴA x."""
        return self.A_adjoint(self.A(x))

    def residual(self, x: Tensor, y: Tensor) -> Tensor:
        """Per-sample data residual ‖y − A x‖₂."""
        r = y - self.A(x)
        return inner(r, r).clamp_min(0).sqrt()

    def solve_normal(
        self, y: Tensor, x_init: Tensor, reg: float = 0.0, prior_mean: Tensor | None = None, steps: int = 10
    ) -> Tensor:
        """Approximately solve (AᴴA + reg I) x = Aᴴy + reg·prior_mean by CG from ``x_init``."""
        b = self.A_adjoint(y)
        if reg > 0:
            b = b + reg * (prior_mean if prior_mean is not None else x_init)
            return conjugate_gradient(lambda v: self.normal(v) + reg * v, b, x_init, steps)
        return conjugate_gradient(self.normal, b, x_init, steps)


def conjugate_gradient(
    apply: Callable[[Tensor], Tensor], b: Tensor, x0: Tensor, steps: int, tol: float | None = None
) -> Tensor:
    """Batched conjugate gradient (Hestenes & Stiefel 1952) for a self-adjoint PSD ``apply``.

    Each sample has its own step sizes, so the result does not depend on the batch.
    Samples whose residual falls below ``tol`` times ‖b‖ stop moving (default: 1e-6 in
    single precision, 1e-12 in double, where rounding would otherwise make CG diverge).
    """
    if tol is None:
        tol = 1e-12 if b.dtype in (torch.float64, torch.complex128) else 1e-6
    x = x0.clone()
    r = b - apply(x)
    p = r.clone()
    rs = inner(r, r)
    stop = inner(b, b).sqrt() * tol
    shape = (-1,) + (1,) * (x.ndim - 1)
    for _ in range(steps):
        active = rs.sqrt() > stop
        if not bool(active.any()):
            break
        ap = apply(p)
        denom = inner(p, ap)
        alpha = torch.where(
            active & (denom > 0),
            rs / torch.where(denom > 0, denom, torch.ones_like(denom)),
            torch.zeros_like(rs),
        )
        x = x + alpha.reshape(shape).to(x.dtype) * p
        r = r - alpha.reshape(shape).to(r.dtype) * ap
        rs_new = inner(r, r)
        beta = torch.where(
            rs > 0, rs_new / torch.where(rs > 0, rs, torch.ones_like(rs)), torch.zeros_like(rs)
        )
        p = r + beta.reshape(shape).to(p.dtype) * p
        rs = rs_new
    return x


def adjointness_error(op: LinearOperator, x: Tensor, y: Tensor) -> float:
    """Relative error |<A x, y> − <x, Aᴴ y>| / (‖A x‖‖y‖) on random probes ``x``, ``y``."""
    ax = op.A(x)
    aty = op.A_adjoint(y)
    lhs, rhs = inner(ax, y).sum(), inner(x, aty).sum()
    scale = inner(ax, ax).sum().sqrt() * inner(y, y).sum().sqrt()
    return float((lhs - rhs).abs() / scale.clamp_min(1e-30))
