"""Shared fixtures of the solver tests: a smooth exact Gaussian-mixture prior and its reference."""

import pytest
import torch

from diffinv.diffusion.denoisers import GaussianMixtureDenoiser
from diffinv.diffusion.schedule import VPSchedule

torch.set_num_threads(1)


def make_gmm() -> GaussianMixtureDenoiser:
    """Broad 2-mode mixture in 3D (no particle switches mode between step counts)."""
    s = VPSchedule("cosine")
    means = torch.tensor([[-1.0, 0.5, 0.0], [1.0, -0.5, 0.5]], dtype=torch.float64)
    return GaussianMixtureDenoiser(s, torch.tensor([0.4, 0.6]), means, torch.tensor([0.6, 0.8]))


@pytest.fixture(scope="session")
def smooth_gmm() -> GaussianMixtureDenoiser:
    return make_gmm()


@pytest.fixture(scope="session")
def x_start() -> torch.Tensor:
    """200 starting points at t_max (float64)."""
    s = VPSchedule("cosine")
    return torch.randn(200, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * float(
        s.sigma(s.t_max)
    )
