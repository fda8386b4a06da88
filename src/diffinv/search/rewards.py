"""Rewards and verifiers: plain callables ``reward(x) -> (batch,)`` (higher is better)."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from torch import Tensor

from diffinv.errors import ConfigError
from diffinv.operators.base import LinearOperator, inner

Reward = Callable[[Tensor], Tensor]


def data_consistency(operator: LinearOperator, y: Tensor, noise_std: float | None = None) -> Reward:
    """The Gaussian data log-likelihood −‖y − A x‖² / (2σ_y²) (σ_y from the operator, floored at 1e-3)."""
    sigma = max(operator.noise_std if noise_std is None else noise_std, 1e-3)

    def reward(x: Tensor) -> Tensor:
        r = y - operator.A(x)
        return -inner(r, r) / (2 * sigma**2)

    return reward


def load_reward(spec: str | Reward | None, operator: LinearOperator | None, y: Tensor | None) -> Reward:
    """A reward from a callable, ``"data_consistency"`` or ``"module:function"``.

    ``"data_consistency"`` is the default when an observation is given.
    """
    if callable(spec):
        return spec
    if spec is None or spec == "data_consistency":
        if operator is None or y is None:
            raise ConfigError(
                "search: reward data_consistency needs an operator and y (fix: pass reward='module:function')"
            )
        return data_consistency(operator, y)
    module, sep, attr = str(spec).partition(":")
    if not sep:
        raise ConfigError(f"search: reward {spec!r} (fix: use 'data_consistency' or 'module:function')")
    try:
        func = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"search: reward {spec!r} cannot be imported ({exc})") from exc
    if not callable(func):
        raise ConfigError(f"search: reward {spec!r} is not callable")
    return func
