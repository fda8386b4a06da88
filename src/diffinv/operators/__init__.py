"""Linear forward models with ``A``, ``A_adjoint`` and normal-equation solvers."""

from diffinv.operators.base import LinearOperator, adjointness_error, conjugate_gradient, inner

__all__ = ["LinearOperator", "adjointness_error", "conjugate_gradient", "inner"]
