"""SVD operators: adjointness, A = U s Vᵀ, orthogonality of V, on odd shapes."""

import pytest
import torch

from diffinv.errors import ConfigError
from diffinv.operators import adjointness_error
from diffinv.operators.mri import MRIOperator, sampling_mask
from diffinv.operators.svd import BlockAverage, Inpainting, MatrixSVD, as_svd


def _cases(rng):
    mask = torch.rand(3, 7, 5, generator=rng) > 0.4
    masks = torch.stack([sampling_mask("random", 15, 3, 0.2, seed=i) for i in range(2)])
    return {
        "matrix_wide": (MatrixSVD(torch.randn(3, 8, generator=rng, dtype=torch.float64)), (8,)),
        "matrix_tall": (MatrixSVD(torch.randn(9, 5, generator=rng, dtype=torch.float64)), (5,)),
        "inpainting": (Inpainting(mask), (3, 7, 5)),
        "fourier_1d_mask": (as_svd(MRIOperator(masks[0])), (2, 9, 15)),
        "fourier_2d_mask": (as_svd(MRIOperator(masks)), (2, 9, 15)),
        "block_average": (BlockAverage(3, (3, 9, 15)), (3, 9, 15)),
    }


@pytest.mark.parametrize(
    "name",
    ["matrix_wide", "matrix_tall", "inpainting", "fourier_1d_mask", "fourier_2d_mask", "block_average"],
)
def test_svd_operator_is_consistent_on_odd_shapes(name, rng):
    op, shape = _cases(rng)[name]
    x = torch.randn((2,) + shape, generator=rng, dtype=torch.float64)
    ax = op.A(x)
    y = torch.randn(ax.shape, generator=rng, dtype=ax.dtype)
    tol = 1e-5 if ax.dtype in (torch.complex64, torch.float32) else 1e-12
    assert adjointness_error(op, x, y) < tol
    s = op.singular_values
    # A = U diag(s) Vᵀ and Aᵀ = V diag(s) Uᵀ
    assert torch.allclose(op.U(s * op.V_T(x)), ax, atol=10 * tol)
    assert torch.allclose(op.V(s * op.U_T(y)), op.A_adjoint(y).to(x.dtype), atol=10 * tol)
    # V is orthogonal: round trip and norm preservation
    c = op.V_T(x)
    assert torch.allclose(op.V(c), x, atol=10 * tol)
    assert torch.allclose(c.flatten(1).norm(dim=1), x.flatten(1).norm(dim=1), atol=10 * tol)
    # ȳ is the pseudo-inverse in spectral coordinates: A V(ȳ) = y projected on range(A)
    clean = op.A(x)
    assert torch.allclose(op.A(op.V(op.spectral_y(clean))), clean, atol=10 * tol)


def test_operators_without_svd_or_bad_factor_are_config_errors(rng):
    sens = torch.randn(1, 2, 9, 15, dtype=torch.complex64, generator=rng)
    with pytest.raises(ConfigError, match="no known SVD"):
        as_svd(MRIOperator(sampling_mask("random", 15, 3, 0.2, seed=0), sens))
    with pytest.raises(ConfigError, match="must divide"):
        BlockAverage(2, (1, 9, 15))
