"""Solvers on an exact Gaussian-mixture denoiser: convergence order, registry, reproducibility."""

import math

import numpy as np
import pytest
import torch

from diffinv.diffusion.denoisers import GaussianMixtureDenoiser
from diffinv.diffusion.schedule import VPSchedule
from diffinv.errors import ConfigError
from diffinv.plugins import available
from diffinv.solvers import PerSampleNoise, make_solver, sample

SOLVERS = sorted(available("solver"))


@pytest.fixture(scope="module")
def gmm():
    """Broad 2-mode mixture in 3D: smooth enough that no particle switches mode between step counts."""
    s = VPSchedule("cosine")
    means = torch.tensor([[-1.0, 0.5, 0.0], [1.0, -0.5, 0.5]], dtype=torch.float64)
    return GaussianMixtureDenoiser(s, torch.tensor([0.4, 0.6]), means, torch.tensor([0.6, 0.8]))


def _observed_order(gmm, name, steps=(20, 40, 80)):
    s = gmm.schedule
    x_t = torch.randn(500, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref = sample(make_solver("dpmpp_2m", s), gmm, x_t, s.grid(2000, "logsnr"))
    errs = [
        float((sample(make_solver(name, s), gmm, x_t, s.grid(n, "logsnr")) - ref).pow(2).mean().sqrt())
        for n in steps
    ]
    return np.polyfit(np.log(steps), np.log(errs), 1)[0] * -1, errs


@pytest.mark.parametrize("name,order,tol", [("ddim", 1.0, 0.15), ("dpmpp_2m", 2.0, 0.15)])
def test_observed_convergence_order(gmm, name, order, tol):
    slope, errs = _observed_order(gmm, name)
    assert abs(slope - order) < tol, f"{name}: observed order {slope:.2f}, errors {errs}"


@pytest.mark.parametrize("name", SOLVERS)
def test_every_solver_samples_the_prior(gmm, name):
    """Sampled mean and per-mode mass match the exact mixture (4000 particles, 50 steps)."""
    s = gmm.schedule
    n = 4000
    noise = PerSampleNoise(range(n))
    solver = make_solver(name, s)
    x_t = noise.randn((3,), torch.float64) * float(s.sigma(s.t_max))
    x = sample(solver, gmm, x_t, s.grid(50, "logsnr"), noise)
    exact_mean = (gmm.log_weights.exp()[:, None] * gmm.means).sum(0)
    # std of the mean of n draws ≤ sqrt(max var ≈ 1.8 / n) ≈ 0.021: allow 4.5 standard errors
    assert torch.allclose(x.mean(0), exact_mean, atol=0.1), (name, x.mean(0), exact_mean)
    frac_right = float((x[:, 0] > 0).double().mean())
    assert abs(frac_right - 0.6) < 0.05


def test_stochastic_draws_do_not_depend_on_batch_size(gmm):
    s = gmm.schedule
    solver = make_solver("ddpm", s)
    seeds = [11, 12, 13, 14]
    full_noise = PerSampleNoise(seeds)
    full = sample(solver, gmm, full_noise.randn((3,), torch.float64), s.grid(10), full_noise)
    parts = []
    for chunk in (seeds[:1], seeds[1:]):
        noise = PerSampleNoise(chunk)
        parts.append(sample(solver, gmm, noise.randn((3,), torch.float64), s.grid(10), noise))
    assert torch.equal(torch.cat(parts), full)


def test_registry_errors_list_known_names(gmm):
    with pytest.raises(ConfigError, match="dpmpp_2m"):
        make_solver("dpmpp_9z", gmm.schedule)
    with pytest.raises(ConfigError, match="bad options"):
        make_solver("ddim", gmm.schedule, etaa=1.0)
    with pytest.raises(ConfigError, match="stochastic"):
        sample(
            make_solver("ddpm", gmm.schedule),
            gmm,
            torch.zeros(2, 3, dtype=torch.float64),
            gmm.schedule.grid(3),
        )


def test_ddim_first_step_matches_closed_form(gmm):
    s = gmm.schedule
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    g = s.grid(5)
    out, _ = make_solver("ddim", s).step(gmm, x, {}, g[0], g[1])
    d = gmm(x, g[0].expand(4))
    h = float(s.lam(g[1]) - s.lam(g[0]))
    expected = float(s.sigma(g[1]) / s.sigma(g[0])) * x + float(s.alpha(g[1])) * (1 - math.exp(-h)) * d
    assert torch.allclose(out, expected, atol=1e-12)
