import math

import pytest
import torch

from diffinv.diffusion.schedule import VPSchedule
from diffinv.errors import ConfigError

KINDS = ["cosine", "linear"]


@pytest.mark.parametrize("kind", KINDS)
def test_variance_preserving_and_lambda_inverse(kind):
    s = VPSchedule(kind)
    t = torch.linspace(s.t_min, s.t_max, 101, dtype=torch.float64)
    assert torch.allclose(s.alpha(t) ** 2 + s.sigma(t) ** 2, torch.ones_like(t), atol=1e-12)
    assert torch.allclose(s.lam(t), torch.log(s.alpha(t) / s.sigma(t)), atol=1e-10)
    assert torch.allclose(s.t_of_lambda(s.lam(t)), t, atol=1e-10)
    assert (s.lam(t[1:]) < s.lam(t[:-1])).all(), "lambda must decrease with t"


def test_cosine_matches_nichol_dhariwal_closed_form():
    s = VPSchedule("cosine")
    t = 0.37
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert float(s.alpha(t)) ** 2 == pytest.approx(f(t) / f(0.0), rel=1e-12)


def test_linear_matches_song_et_al_integral():
    s = VPSchedule("linear", beta_min=0.1, beta_max=20.0)
    t = 0.6
    integral = 0.1 * t + 0.5 * (20.0 - 0.1) * t**2  # ∫β = β0 t + (β1-β0) t²/2
    assert float(s.alpha(t)) == pytest.approx(math.exp(-0.5 * integral), rel=1e-12)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("grid", ["time_uniform", "logsnr", "karras"])
def test_grids_are_decreasing_and_span_the_interval(kind, grid):
    s = VPSchedule(kind)
    g = s.grid(12, grid)
    assert g.shape == (13,)
    assert g[0] == pytest.approx(s.t_max) and g[-1] == pytest.approx(s.t_min)
    assert (g[1:] < g[:-1]).all()
    if grid == "logsnr":
        dl = torch.diff(s.lam(g))
        assert torch.allclose(dl, dl.mean().expand_as(dl), rtol=1e-8)


@pytest.mark.parametrize("grid", ["time_uniform", "logsnr", "karras"])
def test_a_later_start_spends_every_step_below_it(grid):
    """t_start replaces t_max as the first time; the grid's rule holds between it and t_min."""
    s = VPSchedule()
    g = s.grid(10, grid, t_start=0.5)
    assert g[0] == pytest.approx(0.5, abs=1e-12) and g[-1] == pytest.approx(s.t_min, abs=1e-12)
    assert (g[1:] < g[:-1]).all()
    if grid == "time_uniform":
        assert torch.allclose(torch.diff(g), torch.full((10,), (s.t_min - 0.5) / 10, dtype=g.dtype))
    if grid == "logsnr":
        dl = torch.diff(s.lam(g))
        assert torch.allclose(dl, dl.mean().expand_as(dl), rtol=1e-8)
    assert torch.equal(s.grid(10, grid, t_start=s.t_max), s.grid(10, grid))


@pytest.mark.parametrize("t_start", [0.0, 1e-3, 0.9995, 1.5])
def test_a_start_outside_the_schedule_is_refused(t_start):
    with pytest.raises(ConfigError, match=r"t_start: must lie in \(0.001, 0.999\]"):
        VPSchedule().grid(10, "logsnr", t_start=t_start)


def test_bad_schedule_and_grid_are_clear_errors():
    with pytest.raises(ConfigError, match="schedule.kind"):
        VPSchedule("quadratic")
    with pytest.raises(ConfigError, match="grid"):
        VPSchedule().grid(5, "weird")
