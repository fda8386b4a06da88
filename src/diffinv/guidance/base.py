"""Guidance interface: ``Guidance(operator, y, ...)(D) -> D_y``, a conditional denoiser.

Score style adds (σ_t²/α_t) ∇_x log p̂(y | x_t) to D (Tweedie's formula, so any solver then
follows the posterior probability-flow ODE); projection style corrects x0_hat towards
the measurements. Either way the solvers see only a denoiser.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from diffinv.diffusion.denoisers import Denoiser, content_hash, fingerprint, rewrap, wrapped
from diffinv.errors import ConfigError
from diffinv.operators.base import LinearOperator


class Guidance:
    """Base class of guidance plug-ins; subclasses implement :meth:`conditional`."""

    cite: str = ""
    needs_grad: bool = False

    def __init__(self, operator: LinearOperator, y: Tensor) -> None:
        self.operator = operator
        self.y = y

    def __call__(self, D: Denoiser) -> Denoiser:
        return _Conditional(self, D)

    def conditional(self, D: Denoiser, x: Tensor, t: Tensor) -> Tensor:
        """x0 estimate of the posterior given x_t."""
        raise NotImplementedError

    def fingerprint(self) -> str | None:
        """Content hash of the observation model: class, options, operator and y (``None`` if some
        attribute cannot be hashed, see :func:`~diffinv.diffusion.denoisers.content_hash`)."""
        try:
            return content_hash((type(self).__module__, type(self).__qualname__, vars(self)))
        except TypeError:
            return None


def score_guided(
    D: Denoiser,
    x: Tensor,
    t: Tensor,
    loglik: Callable[[Tensor, Tensor], Tensor],
    weight: float = 1.0,
    alpha_power: float = 0.0,
) -> Tensor:
    """Tweedie-corrected denoiser D + w α_t^k (σ_t²/α_t) ∇_x log p̂(y | x_t), log p̂ = ``loglik(D(x, t), t)``.

    The gradient flows through the denoiser (Chung et al. 2023, Eq. 10; Song et al. 2023,
    ΠGDM Eq. 8). ``loglik`` returns one value per particle. k = ``alpha_power`` = 0 is the
    Tweedie correction itself; k > 0 damps it at high noise, where the vector-Jacobian
    product through an ε-parameterised network (∂x̂0/∂x_t ∝ 1/α_t) is unreliable.
    """
    sch = D.schedule
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        x0 = D(xg, t)
        (grad,) = torch.autograd.grad(loglik(x0, t).sum(), xg)
    shape = (-1,) + (1,) * (x.ndim - 1)
    scale = (
        (sch.sigma(t) ** 2 * sch.alpha(t) ** (alpha_power - 1))
        .to(device=x.device, dtype=x.dtype)
        .reshape(shape)
    )
    return x0.detach() + weight * scale * grad


class _Conditional:
    """The conditional denoiser D_y returned by a guidance (keeps the schedule attribute)."""

    def __init__(self, guidance: Guidance, D: Denoiser) -> None:
        self.guidance = guidance
        self.denoiser = D
        self.schedule = D.schedule

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        return self.guidance.conditional(self.denoiser, x, t)

    def fingerprint(self) -> str | None:
        """Content hash of the observation model and the prior (``None`` if either is unknown)."""
        own, inner = self.guidance.fingerprint(), fingerprint(self.denoiser)
        return None if own is None or inner is None else content_hash((own, inner))


def split_guidance(D: Denoiser) -> tuple[Guidance | None, Denoiser]:
    """The outermost guidance inside ``D``, seen through wrappers, and ``D`` without that guidance
    (the wrappers around it, e.g. a search's evaluation counter, rebuilt around its prior)."""
    inner = wrapped(D)
    if inner is None:
        return None, D
    guidance = getattr(D, "guidance", None)
    if isinstance(guidance, Guidance):
        return guidance, inner
    found, bare = split_guidance(inner)
    return found, (D if found is None else rewrap(D, bare))


class Unconditional(Guidance):
    """No guidance: sample the prior (the observation is ignored)."""

    def __call__(self, D: Denoiser) -> Denoiser:
        return D


def make_guidance(name: str, operator: LinearOperator, y: Tensor, **options: Any) -> Guidance:
    """Instantiate the guidance plug-in ``name``; unknown options are an error."""
    from diffinv.plugins import load

    cls = load("guidance", name)
    try:
        return cls(operator, y, **options)
    except TypeError as exc:
        raise ConfigError(f"guidance {name!r}: bad options {sorted(options)} ({exc})") from exc
