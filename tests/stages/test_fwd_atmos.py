"""The fwd stage's atmosphere instance: training reads observations only, the observation-space loss,
and the rendered station denoiser under the shared solvers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from diffinv.diffusion.schedule import VPSchedule
from diffinv.solvers import PerSampleNoise
from diffinv.stages.core import CaseSeeds, Method, Problem, Sampling, sample_case
from diffinv.stages.fwd.atmos import (
    FwdAtmosModel,
    Grid,
    StationDenoiser,
    StationPlan,
    atmos_loss,
    observe,
    posterior_fields,
    splat,
    split_stations,
    train_fwd_atmos,
)
from diffinv.stages.fwd.model import FwdTrain
from diffinv.stages.fwd.run import TargetSpace

LAT = np.linspace(58.0, 50.0, 9)
LON = np.linspace(-6.0, 6.0, 13)
SITE_LAT = np.array([57.1, 56.3, 55.0, 54.2, 53.7, 52.9, 51.4, 50.6])
SITE_LON = np.array([-5.2, 3.3, -1.1, 0.4, 5.0, -3.6, 2.2, -0.7])
NETWORK = {"widths": [8, 16], "norm_groups": 4}


def _grid() -> Grid:
    return Grid.of(LAT, LON, 4, NETWORK["widths"])


def _truth(n: int) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(n, 1, len(LAT), len(LON))


def _train(obs, grid, sites) -> FwdAtmosModel:
    train = FwdTrain(steps=2, batch_size=2, lr=1e-3, warmup=1, log_every=1)
    plan = StationPlan(per_time=5, context=3)
    model, log, record = train_fwd_atmos(obs, grid, sites, NETWORK, VPSchedule(), plan, train)
    assert len(log) == 2 and record["model"] == "fwd-atmos"
    return model


def test_training_reads_observations_only():
    """Observations built from a truth that is then NaN-poisoned train bitwise the same model as
    observations of an untouched copy: nothing downstream of :func:`observe` reads the field."""
    grid = _grid()
    sites = grid.stations(SITE_LAT, SITE_LON)
    cases = [f"t{i}" for i in range(6)]
    truth = _truth(6)
    obs = observe(truth, grid, sites, 5, (0.02, 0.05), cases, seed=0)
    truth.fill_(float("nan"))
    poisoned = _train(obs, grid, sites)
    clean = _train(observe(_truth(6), grid, sites, 5, (0.02, 0.05), cases, seed=0), grid, sites)
    assert all(bool(obs.observed[i].sum() == 5) for i in range(6))
    a, b = poisoned.net.state_dict(), clean.net.state_dict()
    assert all(torch.isfinite(v).all() for v in a.values())
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_observation_loss_equals_its_closed_form():
    """S = x + k reproduces every noise-free observation plus k (bilinear weights and block-average
    weights each sum to 1), so L = k² (1 + w_s + w_c) exactly; S = x gives 0."""
    grid = _grid()
    sites = grid.stations(SITE_LAT, SITE_LON)
    x = _truth(2).double()
    obs = observe(x, grid, sites, 6, (0.0, 0.0), ["a", "b"], seed=3)
    ctx, trgt = split_stations(obs.observed, 4, np.random.default_rng(0))
    assert not bool((ctx & trgt).any()) and torch.equal(ctx | trgt, obs.observed)
    y_s = sites.interpolate(x)[..., 0]  # float64 observations (obs holds float32)
    plan = StationPlan(coarse_weight=0.3, context_weight=0.7)
    exact = atmos_loss(x, grid, sites, grid.coarse.A(x), y_s, trgt, ctx, plan)
    assert float(exact) == 0.0
    k = 0.4
    loss = atmos_loss(x + k, grid, sites, grid.coarse.A(x), y_s, trgt, ctx, plan)
    assert float(loss) == pytest.approx(k**2 * (1 + 0.7 + 0.3), rel=1e-12)


def test_splat_is_the_adjoint_of_interpolation():
    """<Aᵀ(m v), S> = Σ_sites m v · (A S): the value channel is the exact bilinear adjoint; the weight
    channel sums to the number of masked sites (each site's bilinear weights sum to 1)."""
    grid = _grid()
    sites = grid.stations(SITE_LAT, SITE_LON)
    v = torch.randn(2, len(SITE_LAT), dtype=torch.float64)
    m = torch.rand(2, len(SITE_LAT)) > 0.4
    img = splat(sites, v, m)
    s = torch.randn(2, 1, len(LAT), len(LON), dtype=torch.float64)
    lhs = (img[:, :1] * s).sum((1, 2, 3))
    rhs = (m * v * sites.A(s)[..., 0]).sum(1)
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(img[:, 1].sum((1, 2)), m.sum(1).double(), rtol=1e-12, atol=1e-12)


class _Oracle(nn.Module):
    """A signal network that returns a fixed field (padded like the real one's output)."""

    def __init__(self, image: torch.Tensor, pad: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.image = torch.nn.functional.pad(image, (pad[2], pad[3], pad[0], pad[1]))

    def forward(self, context: torch.Tensor, target: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.image.to(target).expand(target.shape[0], -1, -1, -1)


def test_station_denoiser_with_an_oracle_signal_recovers_the_target():
    """With S ≡ x, D(o_t, t) = A_trgt x at every t, so DDIM (η = 0) from o_T ends at
    α_min x0 + (σ_min/σ_max)(o_T − α_max x0) (constant data prediction), → A_trgt x as t → 0,
    and the signal read at the last particles is x."""
    grid = _grid()
    x = _truth(1)
    schedule = VPSchedule()
    model = FwdAtmosModel(_Oracle(x, grid.pad), grid, schedule, StationPlan())  # type: ignore[arg-type]
    target = grid.stations(SITE_LAT[:3], SITE_LON[:3])
    context = torch.zeros(1, 3, len(LAT), len(LON))
    seeds = CaseSeeds.of(0, "atmos:case")
    fields, nfe = posterior_fields(model, context, target, Method("ddim", "none"), Sampling(2, 2, 6), seeds)
    torch.testing.assert_close(fields, x.expand(2, -1, -1, -1))
    assert nfe == 7
    D = StationDenoiser(model, context, target, 1.0)
    shape = (3, 1)
    res = sample_case(
        Problem(TargetSpace(), torch.zeros(1, *shape), shape),
        D,
        Method("ddim", "none"),
        Sampling(2, 2, 6, final_dc=False),
        seeds,
        "cpu",
    )
    x0 = target.A(x)
    grid_t = schedule.grid(6, "logsnr")
    start = PerSampleNoise(seeds.samples(0, 2)).randn(shape) * float(schedule.sigma(grid_t[0]))
    a_min, s_min = float(schedule.alpha(grid_t[-1])), float(schedule.sigma(grid_t[-1]))
    a_max, s_max = float(schedule.alpha(grid_t[0])), float(schedule.sigma(grid_t[0]))
    expected = a_min * x0 + s_min / s_max * (start - a_max * x0)
    torch.testing.assert_close(res.samples, expected, rtol=1e-5, atol=1e-5)
    assert float((res.samples - x0).abs().max()) < 0.05  # α_min ≈ 1, σ_min/σ_max ≈ 0: near A_trgt x


class _Gain(nn.Module):
    """A signal network returning ``gain`` × the first context channel (the bicubic field)."""

    def __init__(self, gain: float) -> None:
        super().__init__()
        self.gain = gain

    def forward(self, context: torch.Tensor, target: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.gain * context[:, :1]


def test_guidance_scale_extrapolates_the_context_signal():
    """S = S_u + w (S_c − S_u); with S = ctx₀ (S_u = 0 for a zeroed context), S = w · ctx₀."""
    grid = _grid()
    model = FwdAtmosModel(_Gain(1.0), grid, VPSchedule(), StationPlan())  # type: ignore[arg-type]
    ctx = torch.rand(1, 3, len(LAT), len(LON))
    target = grid.stations(SITE_LAT[:2], SITE_LON[:2])
    S = StationDenoiser(model, ctx, target, 2.5).signal(torch.zeros(2, 2, 1), torch.full((2,), 0.3))
    torch.testing.assert_close(S, 2.5 * ctx[:, :1].expand(2, -1, -1, -1))
