import pytest
import torch

from diffinv.complex import channels_to_complex, complex_to_channels
from diffinv.operators import adjointness_error, conjugate_gradient, inner
from diffinv.operators.mri import MRIOperator, estimate_sensitivities, fft2c, ifft2c, sampling_mask

SHAPES = [(37, 31), (16, 16), (9, 24)]


def _operator(kind, b, c, h, w, rng):
    masks = torch.stack([sampling_mask("random", w, 3, 0.2, seed=i) for i in range(b)])
    sens = torch.randn(b, c, h, w, dtype=torch.complex64, generator=rng) if kind == "multicoil" else None
    return MRIOperator(masks, sens)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["singlecoil", "multicoil"])
def test_mri_operator_adjoint_on_odd_shapes(shape, kind, rng):
    b, c = 3, 4
    op = _operator(kind, b, c, *shape, rng)
    x = torch.randn(b, 2, *shape, generator=rng)
    y = torch.randn(op.A(x).shape, dtype=torch.complex64, generator=rng)
    assert adjointness_error(op, x, y) < 1e-5


@pytest.mark.parametrize("shape", SHAPES)
def test_centred_fft_is_unitary(shape, rng):
    z = torch.randn(2, *shape, dtype=torch.complex64, generator=rng)
    assert torch.allclose(ifft2c(fft2c(z)), z, atol=1e-5)
    assert torch.allclose(fft2c(z).norm(), z.norm(), rtol=1e-5)


def test_complex_channel_round_trip(rng):
    z = torch.randn(2, 3, 5, 7, dtype=torch.complex64, generator=rng)
    assert complex_to_channels(z).shape == (2, 3, 2, 5, 7)
    assert torch.equal(channels_to_complex(complex_to_channels(z)), z)


def test_masks_are_reproducible_and_hit_the_acceleration():
    m1 = sampling_mask("equispaced_fraction", 64, 4, 0.08, seed=3)
    assert torch.equal(m1, sampling_mask("equispaced_fraction", 64, 4, 0.08, seed=3))
    assert int(m1.sum()) == 16
    centre = sampling_mask("random", 64, 8, 0.125, seed=0)
    assert centre[28:36].all(), "fastMRI masks always hold the centre lines"


def test_estimated_sensitivities_recover_smooth_maps(rng):
    """Maps estimated from 12 calibration lines match the true (normalised) smooth maps."""
    h = w = 32
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    true = torch.stack(
        [
            torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2)) * torch.exp(1j * (cx * xx))
            for cy, cx in [(-1, 0), (1, 0), (0, 1), (0, -1)]
        ]
    )
    true = true / (true.abs() ** 2).sum(0).sqrt()
    image = torch.ones(h, w, dtype=torch.complex64)
    kspace = fft2c(true * image)
    est = estimate_sensitivities(kspace, 12)
    assert torch.allclose((est.abs() ** 2).sum(0), torch.ones(h, w), atol=1e-4)
    inner_region = (slice(6, 26), slice(6, 26))
    assert (
        est[:, inner_region[0], inner_region[1]] - true[:, inner_region[0], inner_region[1]]
    ).abs().max() < 0.05


@pytest.mark.parametrize("kind", ["singlecoil", "multicoil"])
def test_projection_is_the_nearest_consistent_image(kind, rng):
    """P(x) satisfies A P(x) = y and is no farther from x than the true image, which is
    also consistent; single-coil projection is exact and idempotent."""
    h, w = 16, 12
    op = _operator(kind, 2, 3, h, w, rng)
    x_true = torch.randn(2, 2, h, w, generator=rng)
    y = op.A(x_true)
    x0 = torch.randn(2, 2, h, w, generator=rng)
    x = op.project(x0, y, cg_steps=100)
    assert (op.A(x) - y).abs().norm() < 1e-2 * y.abs().norm()
    assert ((x - x0).flatten(1).norm(dim=1) <= (x_true - x0).flatten(1).norm(dim=1) + 1e-4).all()
    if not op.multicoil:
        assert torch.allclose(op.project(x, y), x, atol=1e-5)


def test_conjugate_gradient_solves_each_sample_independently(rng):
    n = 6
    a = torch.randn(2, n, n, dtype=torch.float64, generator=rng)
    spd = a @ a.transpose(-1, -2) + n * torch.eye(n, dtype=torch.float64)
    b = torch.randn(2, n, dtype=torch.float64, generator=rng)
    x = conjugate_gradient(lambda v: torch.einsum("bij,bj->bi", spd, v), b, torch.zeros_like(b), steps=n)
    assert torch.allclose(x, torch.linalg.solve(spd, b), atol=1e-8)
    x0 = conjugate_gradient(
        lambda v: torch.einsum("ij,bj->bi", spd[0], v), b[:1], torch.zeros_like(b[:1]), steps=3
    )
    both = conjugate_gradient(lambda v: torch.einsum("ij,bj->bi", spd[0], v), b, torch.zeros_like(b), steps=3)
    assert torch.allclose(both[:1], x0, atol=1e-12), "a sample's CG must not depend on the batch"
    assert inner(b, b).shape == (2,)


@pytest.mark.parametrize("kind", ["random", "equispaced", "equispaced_fraction"])
@pytest.mark.parametrize("width", [16, 32, 37, 368])
@pytest.mark.parametrize("acceleration", [4, 8, 16])
def test_masks_hold_exactly_the_line_budget(kind, width, acceleration):
    centre = int(round(width * 0.08))
    for seed in range(3):
        mask = sampling_mask(kind, width, acceleration, 0.08, seed)
        assert int(mask.sum()) == max(centre, round(width / acceleration))
