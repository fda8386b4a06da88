import pytest
import torch

from diffinv.diffusion.denoisers import GaussianMixtureDenoiser, NetworkDenoiser
from diffinv.diffusion.schedule import VPSchedule


def _gmm(rng, k=3, d=4, full=True):
    a = torch.randn(k, d, d, dtype=torch.float64, generator=rng)
    covs = (
        a @ a.transpose(-1, -2) / d + 0.1 * torch.eye(d, dtype=torch.float64)
        if full
        else torch.rand(k, dtype=torch.float64, generator=rng) + 0.1
    )
    return GaussianMixtureDenoiser(
        VPSchedule(),
        torch.tensor([0.2, 0.3, 0.5]),
        3 * torch.randn(k, d, dtype=torch.float64, generator=rng),
        covs,
    )


def test_single_gaussian_denoiser_is_the_linear_posterior_mean(rng):
    s = VPSchedule()
    d = 5
    a = torch.randn(d, d, dtype=torch.float64, generator=rng)
    cov = a @ a.T + 0.5 * torch.eye(d, dtype=torch.float64)
    mu = torch.randn(1, d, dtype=torch.float64, generator=rng)
    D = GaussianMixtureDenoiser(s, torch.ones(1), mu, cov[None])
    x = torch.randn(7, d, dtype=torch.float64, generator=rng)
    t = torch.full((7,), 0.4, dtype=torch.float64)
    al, sg = s.alpha(0.4), s.sigma(0.4)
    gain = al * cov @ torch.linalg.inv(al**2 * cov + sg**2 * torch.eye(d, dtype=torch.float64))
    expected = mu + (x - al * mu) @ gain.T
    assert torch.allclose(D(x, t), expected, atol=1e-10)


@pytest.mark.parametrize("full", [True, False])
def test_gmm_denoiser_is_the_conditional_expectation(rng, full):
    """E[(x0 - D(x_t)) g(x_t)] = 0 for g = 1 and g = x_t: Monte Carlo with 2e5 pairs."""
    D = _gmm(rng, full=full)
    x0 = D.sample(200_000, rng)
    t = torch.full((x0.shape[0],), 0.5, dtype=torch.float64)
    xt = D.schedule.add_noise(x0, t, torch.randn(x0.shape, dtype=torch.float64, generator=rng))
    r = x0 - D(xt, t)
    se = r.std(0) / 200_000**0.5  # standard error of the mean residual
    assert (r.mean(0).abs() < 5 * se).all()
    assert ((r * xt).mean(0).abs() < 5 * (r * xt).std(0) / 200_000**0.5).all()


def test_gmm_sampling_moments(rng):
    D = _gmm(rng)
    x = D.sample(100_000, rng)
    w = D.log_weights.exp()
    mean = (w[:, None] * D.means).sum(0)
    assert torch.allclose(x.mean(0), mean, atol=0.05)


@pytest.mark.parametrize("prediction", ["epsilon", "x0", "v"])
def test_network_denoiser_converts_each_prediction_to_x0(prediction):
    """A network that outputs the exact target of its parametrisation gives back x0."""
    s = VPSchedule()
    x0 = torch.randn(3, 2, 5, 7)
    eps = torch.randn(3, 2, 5, 7)
    t = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    xt = s.add_noise(x0, t, eps)
    a = s.alpha(t).float().reshape(-1, 1, 1, 1)
    sg = s.sigma(t).float().reshape(-1, 1, 1, 1)
    target = {"epsilon": eps, "x0": x0, "v": a * eps - sg * x0}[prediction]

    class Oracle(torch.nn.Module):
        def forward(self, x, tt):
            return target

    D = NetworkDenoiser(Oracle(), s, prediction)
    assert torch.allclose(D(xt, t), x0, atol=1e-4)
    assert NetworkDenoiser(Oracle(), s, prediction, clip=0.5)(xt, t).abs().max() <= 0.5
