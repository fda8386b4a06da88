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


#: First-order solvers: their variance bias on this prior falls like 1/steps (measured with 40k-100k
#: draws, relative to the exact variance: ddpm -17% / -10% / -5% / -2.3% at 50 / 100 / 200 / 400
#: steps, ddim -10% at 50 and -1.5% at 400, hb -5% at 50, diffpir -12% / -4% / -3% at 50 / 200 / 800,
#: where its fixed fresh-noise fraction zeta = 0.1 leaves a small residual), too much for the sampling
#: tolerance at 50 steps; their variance is checked at 400 steps instead.
VARIANCE_STEPS = {"ddim": 400, "ddpm": 400, "diffpir": 400, "hb": 400}
#: Solvers whose variance does not converge to the prior's as steps grow (a property of the kernel,
#: measured at 50 to 800 steps): the check is expected to fail; if it passes, remove the entry.
KNOWN_VARIANCE_BIAS = {
    "ddrm": "DDRM's unobserved-coordinate kernel draws a fixed fraction eta^2 = 0.72 of fresh noise at "
    "every step, however small the step, so the x0 estimate's missing variance is never recovered: "
    "-15% to -30% at 50 to 800 steps (eta=0 is ddim and converges)",
    "dualfast": "the reduction term c_t (D - D_ref) pushes every prediction away from the first one and does "
    "not vanish as steps grow: variance +27% to +36% at 50 to 800 steps (coefficient=0 matches the prior)",
}
N_PRIOR = 4000


def exact_covariance(gmm):
    """Σ_k w_k (Σ_k + μ_k μ_kᵀ) − μμᵀ of the mixture."""
    w = gmm.log_weights.exp()
    mean = (w[:, None] * gmm.means).sum(0)
    second = (w[:, None, None] * (gmm.covs + gmm.means[:, :, None] * gmm.means[:, None, :])).sum(0)
    return second - torch.outer(mean, mean)


@pytest.fixture(scope="module")
def covariance_tolerance(gmm):
    """Exact covariance and the allowed deviation of a sample covariance of N_PRIOR draws.

    Sampling part: 4.5 standard deviations of the sample covariance of N_PRIOR exact draws,
    the standard deviation measured over 300 exact sample sets (about 2% of the variance per
    dimension; a mixture's fourth moment makes it differ from the Gaussian sqrt(2/n) = 2.2%).
    Discretisation part: 2.5% of sqrt(var_i var_j), the largest bias measured at 50 steps for
    the higher-order solvers (timeshift -2.0%, ghvb +1.0%, dpmpp_2m +0.7%, against a 2000-step
    reference on the same x_T) and at 400 steps for the first-order ones (VARIANCE_STEPS).
    """
    g = torch.Generator().manual_seed(123)
    covs = torch.stack([gmm.sample(N_PRIOR, g).T.cov() for _ in range(300)])
    exact = exact_covariance(gmm)
    scale = exact.diagonal().sqrt()
    return exact, 4.5 * covs.std(0) + 0.025 * torch.outer(scale, scale)


def _prior_draws(gmm, name, steps):
    s = gmm.schedule
    noise = PerSampleNoise(range(N_PRIOR))
    x_t = noise.randn((3,), torch.float64) * float(s.sigma(s.t_max))
    return sample(make_solver(name, s), gmm, x_t, s.grid(steps, "logsnr"), noise)


@pytest.mark.parametrize("name", SOLVERS)
def test_every_solver_samples_the_prior(gmm, name, covariance_tolerance):
    """Sampled mean, per-mode mass and covariance match the exact mixture (4000 particles, 50 steps;
    the covariance of first-order solvers at 400 steps, see VARIANCE_STEPS)."""
    x = _prior_draws(gmm, name, 50)
    exact_mean = (gmm.log_weights.exp()[:, None] * gmm.means).sum(0)
    # std of the mean of n draws ≤ sqrt(max var ≈ 1.8 / n) ≈ 0.021: allow 4.5 standard errors
    assert torch.allclose(x.mean(0), exact_mean, atol=0.1), (name, x.mean(0), exact_mean)
    frac_right = float((x[:, 0] > 0).double().mean())
    assert abs(frac_right - 0.6) < 0.05
    if name in VARIANCE_STEPS:
        x = _prior_draws(gmm, name, VARIANCE_STEPS[name])
    exact_cov, tol = covariance_tolerance
    cov = x.T.cov()
    ok = bool(((cov - exact_cov).abs() <= tol).all())
    ratio = (cov.diagonal() / exact_cov.diagonal()).tolist()
    if name in KNOWN_VARIANCE_BIAS:
        assert not ok, f"{name}: covariance now matches the prior; remove it from KNOWN_VARIANCE_BIAS"
        pytest.xfail(f"{name}: variance ratio {[round(r, 3) for r in ratio]}: {KNOWN_VARIANCE_BIAS[name]}")
    assert ok, (name, cov, exact_cov, tol, ratio)


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
