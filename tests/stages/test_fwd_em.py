"""The EM prior of the fwd stage (Rozet et al. 2024) on linear-Gaussian toys, where every step is exact.

Toy: x ~ N(μ*, Σ*) in d = 4 (non-diagonal Σ*), observed through four 3×4 operators with
orthonormal rows (jointly of rank 4; each identifies 6 of the 10 covariance entries, so together
they identify Σ*) and noise σ = 0.1. With a Gaussian prior the E-step posterior is Gaussian in
closed form (testbed.gmm_posterior) and the EM update is closed form
(:func:`~diffinv.stages.fwd.em.gaussian_em_step`), the oracle of the sampled rounds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import xarray as xr

from diffinv.diffusion.denoisers import GaussianMixtureDenoiser
from diffinv.diffusion.schedule import VPSchedule
from diffinv.diffusion.training import TrainConfig
from diffinv.errors import ConfigError
from diffinv.operators.base import adjointness_error
from diffinv.operators.ct import ParallelBeamCT
from diffinv.operators.svd import MatrixSVD
from diffinv.stages.core import Method
from diffinv.stages.ct3d.volumes import Normalisation
from diffinv.stages.fwd.data import load_observations
from diffinv.stages.fwd.em import (
    CTObservations,
    EStep,
    GaussianMoments,
    NetworkFit,
    StackedOperator,
    fit_gaussian,
    gaussian_em_step,
    posterior_draws,
    ppca,
    rotated_views,
    train_em,
)
from diffinv.testbed import gmm_posterior

S = VPSchedule()
D, NOISE = 4, 0.1


def _toy(n: int, seed: int = 0):
    """Truth (μ*, Σ*), four operators, and ``n`` observations y_i = A_{i mod 4} x_i + σ n_i (float64)."""
    g = torch.Generator().manual_seed(0)
    root = torch.randn(D, D, generator=g, dtype=torch.float64)
    cov = root @ root.T / D + 0.1 * torch.eye(D, dtype=torch.float64)
    mu = torch.randn(D, generator=g, dtype=torch.float64)
    mats = [
        torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))[0][:, :3].T for _ in range(4)
    ]
    ops = [MatrixSVD(m.contiguous(), NOISE) for m in mats]
    gg = torch.Generator().manual_seed(100 + seed)
    x = mu + torch.randn(n, D, generator=gg, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    per_obs = [ops[i % 4] for i in range(n)]
    y = torch.stack([op.matrix @ xi for op, xi in zip(per_obs, x)])
    y = y + NOISE * torch.randn(n, 3, generator=gg, dtype=torch.float64)
    return mu, cov, per_obs, y


def _gaussian(mean: torch.Tensor, cov: torch.Tensor) -> GaussianMixtureDenoiser:
    return GaussianMixtureDenoiser(S, torch.ones(1), mean[None], cov[None])


def test_stacked_operator_is_adjoint_on_odd_shapes():
    """Three CT operators with different view sets on 5×7 slices: the block operator's adjoint is the
    blocks' adjoints (float64 rounding, measured ~1e-16)."""
    ops = [ParallelBeamCT((5, 7), np.array(a) * math.pi / 9, 9) for a in ([0, 3], [1, 4], [2, 5])]
    stacked = StackedOperator(ops)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 7, generator=g, dtype=torch.float64)
    y = torch.randn(2, 3, 2, 9, generator=g, dtype=torch.float64)
    assert adjointness_error(stacked, x, y) < 1e-12
    assert torch.equal(stacked.A(x)[:, 1], ops[1].A(x[:, 1]))
    with pytest.raises(ConfigError, match="different noise_std"):
        StackedOperator([ops[0], ParallelBeamCT((5, 7), [0.1], 9, noise_std=0.5)])


def test_closed_form_em_with_the_identity_operator_reaches_the_known_mle():
    """A = I: the marginal is N(μ, Σ + σ²I), so the MLE is μ = ȳ, Σ = S_y − σ²I (when PSD); EM's
    missing-information rate is σ²/(λ_min + σ²) <= 0.09 here, so 60 updates reach it to rounding."""
    mu, cov, _, _ = _toy(1)
    g = torch.Generator().manual_seed(3)
    x = mu + torch.randn(2000, D, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    y = x + NOISE * torch.randn(2000, D, generator=g, dtype=torch.float64)
    op = MatrixSVD(torch.eye(D, dtype=torch.float64), NOISE)
    fit = fit_gaussian(y, [op] * 2000, (D,), 60)
    centred = y - y.mean(0)
    mle = centred.T @ centred / 2000 - NOISE**2 * torch.eye(D, dtype=torch.float64)
    assert torch.allclose(fit.mean, y.mean(0), atol=1e-10)
    assert torch.allclose(fit.cov, mle, atol=1e-10)


def test_closed_form_em_climbs_the_likelihood_and_moves_to_the_truth():
    """EM never lowers the marginal likelihood (Dempster et al. 1977) and, from μ = 0, Σ = I, moves
    the fit towards (μ*, Σ*). Distances after 1, 2, 5, 10, 50 updates measured over data seeds 0-4:
    ‖μ − μ*‖ 0.45-0.48, 0.23-0.27, 0.05-0.07, 0.02-0.04, 0.02-0.04 (start 1.88; complete data, the
    floor, 0.02-0.05); ‖Σ − Σ*‖_F 1.41-1.51, 0.98-1.09, 0.44-0.56, 0.16-0.30, 0.07-0.16 (start
    2.72; complete data 0.08-0.11). Bounds: twice the worst seed at 50 updates."""
    mu, cov, ops, y = _toy(3000)
    fit = fit_gaussian(y, ops, (D,), 50)
    steps = np.diff(fit.log_likelihood)
    assert (steps > -1e-10).all(), steps.min()
    assert float((fit.mean - mu).norm()) < 0.1
    assert float((fit.cov - cov).norm()) < 0.32
    m, c = torch.zeros(D, dtype=torch.float64), torch.eye(D, dtype=torch.float64)
    distances = []
    for _ in range(5):
        distances.append(float((m - mu).norm()) + float((c - cov).norm()))
        m, c, _, _ = gaussian_em_step(m, c, y, ops, (D,))
    assert all(b < a for a, b in zip(distances, distances[1:])), distances


def test_ppca_keeps_a_rank_plus_isotropic_covariance_and_the_trace():
    """U diag(l) Uᵀ + D I is its own rank-r projection; on a full matrix the trace is kept (D takes
    the mean of the dropped eigenvalues, Tipping & Bishop 1999, Eq. 8)."""
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(6, 2, generator=g, dtype=torch.float64))
    c = u @ torch.diag(torch.tensor([3.0, 2.0], dtype=torch.float64)) @ u.T + 0.5 * torch.eye(
        6, dtype=torch.float64
    )
    assert torch.allclose(ppca(c, 2), c, atol=1e-12)
    root = torch.randn(6, 6, generator=g, dtype=torch.float64)
    full = root @ root.T
    assert float(ppca(full, 2).trace()) == pytest.approx(float(full.trace()), rel=1e-12)
    vals = torch.linalg.eigvalsh(ppca(full, 2))
    assert torch.allclose(vals[:4], vals[:4].mean().expand(4), atol=1e-12)  # isotropic outside the top 2


def _whitened(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> tuple[float, float, float]:
    """max |mean|, max |cov − I| on / off the diagonal of ``x`` whitened by N(mean, cov)."""
    chol = torch.linalg.cholesky(cov)
    z = torch.linalg.solve_triangular(chol, (x.to(torch.float64) - mean).T, upper=False).T
    c = torch.cov(z.T)
    off = c - torch.diag(c.diagonal())
    return float(z.mean(0).abs().max()), float((c.diagonal() - 1).abs().max()), float(off.abs().max())


def test_e_step_with_the_exact_gaussian_prior_samples_the_exact_posterior():
    """Three observations with different operators in one case (block CG exact after 3 × 3 = 9 steps),
    2000 draws each, DPM-Solver++(2M) 40 steps: whitened by each exact posterior, |mean| <
    4.5/√2000 = 0.10 and |cov − I| < 4.5 √(2/2000) = 0.14 on the diagonal, 0.10 off it (as in
    tests/guidance/test_mmps.py, where this solver's variance bias is 2-4 %)."""
    mu, cov, ops, y = _toy(3)
    prior = _gaussian(mu, cov)
    estep = EStep(Method("dpmpp_2m", "mmps", guidance_options={"cg_steps": 9}), 40, 2000, 3, slice_batch=6000)
    draws = posterior_draws(prior, y.float(), ops, (D,), estep, 0, ["a", "b", "c"], "em0")
    assert draws.samples.shape == (3, 2000, D)
    for i in range(3):
        post = gmm_posterior(prior, ops[i].matrix, NOISE, y[i])
        mean_err, diag_err, off_err = _whitened(draws.samples[i], post.means[0], post.covs[0])
        assert mean_err < 0.10 and diag_err < 0.14 and off_err < 0.10, (i, mean_err, diag_err, off_err)


def test_a_sampled_em_round_is_the_closed_form_update_up_to_monte_carlo_error():
    """One round of :func:`train_em` with the Gaussian M-step (draws' moments) against the closed-form
    update from the same prior N(0, I): draws x_ij ~ N(m_i, S_i), so the mean's error is
    N(0, S̄/(N·n)) (whitened: every component < 4.5), and each covariance entry's error is within
    4.5 sd of a sample covariance of N·n draws with covariance Σ', plus 5 % of S̄ for the
    solver's variance bias."""
    _, _, ops, y = _toy(12)
    n_draws = 500
    estep = EStep(
        Method("dpmpp_2m", "mmps", guidance_options={"cg_steps": 3}), 40, n_draws, 1, slice_batch=n_draws
    )
    start = (torch.zeros(D, dtype=torch.float64), torch.eye(D, dtype=torch.float64))
    ids = [f"obs{i}" for i in range(12)]
    prior, history = train_em(y.float(), ops, (D,), _gaussian(*start), 1, estep, GaussianMoments(S), 0, ids)
    mean, cov, means, _ = gaussian_em_step(*start, y, ops, (D,))
    s_bar = cov - (means - mean).T @ (means - mean) / 12
    total = 12 * n_draws
    z = torch.linalg.solve_triangular(
        torch.linalg.cholesky(s_bar / total), (prior.means[0] - mean)[:, None], upper=False
    )
    assert float(z.abs().max()) < 4.5, z
    sd = ((cov.diagonal()[:, None] * cov.diagonal()[None] + cov**2) / total).sqrt()
    bias = 0.05 * (s_bar.diagonal()[:, None] * s_bar.diagonal()[None]).sqrt()
    assert bool(((prior.covs[0] - cov).abs() < 4.5 * sd + bias).all()), prior.covs[0] - cov
    assert len(history) == 1 and history[0].e_nfe > 0


def test_rotated_views_cover_every_angle_with_equispaced_sets():
    views = rotated_views(90, 8, 320, seed=0)
    base = np.floor(np.arange(8) * 90 / 8).astype(int)
    offsets = views - base
    assert (offsets == offsets[:, :1]).all() and offsets.min() >= 0 and views.max() <= 89
    assert set(views.ravel().tolist()) == set(range(90))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A tiny LoDoPaB-layout store (2 volumes of 3 slices, 12×12, 12 views), and a copy whose truth
    is NaN."""
    from diffinv.demo.ct import write_demo
    from diffinv.io.ct import ingest

    root = tmp_path_factory.mktemp("fwd_em")
    write_demo(root / "demo", 0, volumes=2, slices=3, size=12, angles=12, noise=False)
    path = ingest([root / "demo"], root / "ct.zarr")
    ds = xr.open_zarr(path, consolidated=False).load()
    ds["truth"] = ds["truth"] * np.nan
    ds.to_zarr(root / "nan_truth.zarr", mode="w")
    return path, root / "nan_truth.zarr"


def test_ct_normalisation_keeps_the_observation_model_linear(store):
    """y = A x  =>  y_n = A x_n with x_n = (x − offset)/scale (the affine part moves into the data)."""
    obs = load_observations(store[0], [0], 3)
    ct = CTObservations.of(obs, rotated_views(12, 3, 3, seed=1))
    x = torch.rand(3, 12, 12, generator=torch.Generator().manual_seed(0))
    ct.y = torch.stack([op.A(xi[None])[0] for op, xi in zip(ct.operators, x)])
    norm = Normalisation(0.3, 0.2)
    n = ct.normalised(norm)
    x_n = norm.to_prior(x)
    for i in range(3):
        assert torch.allclose(n.operators[i].A(x_n[i : i + 1])[0], n.y[i], atol=1e-5)
        assert n.operators[i].noise_std == pytest.approx(ct.operators[i].noise_std / 0.2)
    assert len({id(op) for op in n.operators}) == len({tuple(v) for v in rotated_views(12, 3, 3, seed=1)})


def _train_on(path, out):
    obs = load_observations(path, [0, 1], 3)
    ct = CTObservations.of(obs, rotated_views(12, 3, 6, seed=0))
    fit = fit_gaussian(ct.y, ct.operators, (12, 12), 3)
    norm = Normalisation.of(fit.posterior_means.numpy())
    ctn = ct.normalised(norm)
    network = {"size": [12, 12], "channels": 1, "widths": [8, 16], "norm_groups": 4}
    fit_net = NetworkFit(out, network, S, TrainConfig(steps=2, batch_size=4, warmup=1), 1.5, {})
    estep = EStep(steps=3, group=3)
    prior, history = train_em(
        ctn.y, ctn.operators, (12, 12), fit.normalised(norm).denoiser(S), 2, estep, fit_net, 0, ct.case_ids
    )
    return prior, history


def test_the_training_path_never_reads_ground_truth(store, tmp_path):
    """Loader, Gaussian fit and two EM rounds (the second E-step runs the trained network) give the
    same network, bit for bit, from a store whose truth is NaN: truth cannot have entered."""
    a, history = _train_on(store[0], tmp_path / "a")
    b, _ = _train_on(store[1], tmp_path / "b")
    weights_a, weights_b = a.net.state_dict(), b.net.state_dict()
    assert all(torch.isfinite(v).all() for v in weights_a.values())
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert [h.round for h in history] == [0, 1]
    assert (tmp_path / "a" / "round1" / "model.safetensors").exists()


def test_refusals():
    _, _, ops, y = _toy(4)
    with pytest.raises(ConfigError, match="4 observations but 3 operators"):
        gaussian_em_step(torch.zeros(D), torch.eye(D), y, ops[:3], (D,))
    noiseless = [MatrixSVD(op.matrix, 0.0) for op in ops]
    with pytest.raises(ConfigError, match="noise_std > 0"):
        fit_gaussian(y, noiseless, (D,), 1)
    with pytest.raises(ConfigError, match="one operator and one id"):
        posterior_draws(
            _gaussian(torch.zeros(D), torch.eye(D)), y.float(), ops, (D,), EStep(), 0, ["a"], "em0"
        )
    with pytest.raises(ConfigError, match="rounds"):
        train_em(
            y, ops, (D,), _gaussian(torch.zeros(D), torch.eye(D)), 0, EStep(), GaussianMoments(S), 0, "abcd"
        )
