"""Reduction identities of the extended solvers, caches, guidance pass-through and option errors."""

import json

import pytest
import torch

from diffinv.diffusion.denoisers import GaussianMixtureDenoiser
from diffinv.errors import ConfigError
from diffinv.plugins import describe_plugins
from diffinv.solvers import CountingDenoiser, make_solver, sample


def run(gmm, x, name, steps=12, **options):
    s = gmm.schedule
    return sample(make_solver(name, s, **options), gmm, x, s.grid(steps, "logsnr"))


@pytest.mark.parametrize(
    "name,options,base,base_options",
    [
        ("hb", {"beta": 1.0, "order": 2}, "dpmpp_2m", {}),
        ("hb", {"beta": 1.0, "order": 1}, "ddim", {}),
        ("ghvb", {"beta": 1.0, "order": 2}, "dpmpp_2m", {}),
        ("mrs", {"mu": 0.0, "order": 2}, "dpmpp_2m", {}),
        ("mrs", {"mu": 0.0, "order": 3}, "dpmpp_3m", {}),
        ("dc_solver", {"ratios": [1.0] * 12}, "unipc", {}),
        ("timeshift", {"base": "unipc", "cutoff": 1.0}, "unipc", {}),
        ("timeshift", {"base": "deis", "base_options": {"order": 2}, "cutoff": 0.999}, "deis", {"order": 2}),
        ("dualfast", {"base": "dpmpp_3m", "coefficient": 0.0}, "dpmpp_3m", {}),
        ("dualfast", {"base": "unipc", "coefficient": 0.0}, "unipc", {}),
        ("tstitch", {"fraction": 0.0}, "dpmpp_2m", {}),
        ("s3", {"plan": {"orders": [2] * 12, "correctors": [False] * 12}}, "dpmpp_2m", {}),
        ("s3", {"plan": {"orders": [3] * 12, "correctors": [True] * 12}}, "unipc", {"order": 3}),
    ],
)
def test_reduces_to_base(smooth_gmm, x_start, name, options, base, base_options):
    ours, expected = run(smooth_gmm, x_start, name, **options), run(smooth_gmm, x_start, base, **base_options)
    assert torch.allclose(ours, expected, rtol=0, atol=1e-12), float((ours - expected).abs().max())


def test_timeshift_beyond_t_is_bit_identical(smooth_gmm, x_start):
    ours = run(smooth_gmm, x_start, "timeshift", base="dpmpp_3m", cutoff=1.0)
    assert torch.equal(ours, run(smooth_gmm, x_start, "dpmpp_3m"))


def test_timeshift_shifts_to_the_matching_noise_level(smooth_gmm):
    ts = make_solver("timeshift", smooth_gmm.schedule, window=0.2)
    x = (
        torch.randn(64, 4096, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 0.8
    )  # Var ≈ 0.64
    sigma2 = smooth_gmm.schedule.sigma(ts.shifted_time(x, 0.6)) ** 2
    assert torch.allclose(sigma2, x.var(dim=1, unbiased=False), atol=3e-3)  # one grid cell of 1/1000


def test_tstitch_switches_between_models(smooth_gmm, x_start):
    s = smooth_gmm.schedule
    small = GaussianMixtureDenoiser(
        s, torch.tensor([0.5, 0.5]), smooth_gmm.means + 0.3, torch.tensor([0.6, 0.8])
    )
    all_small = run(smooth_gmm, x_start, "tstitch", small=small, fraction=1.0)
    assert torch.allclose(all_small, run(small, x_start, "dpmpp_2m"), rtol=0, atol=1e-12)
    counter_large, counter_small = CountingDenoiser(smooth_gmm), CountingDenoiser(small)
    sample(make_solver("tstitch", s, small=counter_small, fraction=0.25), counter_large, x_start, s.grid(12))
    assert (counter_small.nfe, counter_large.nfe) == (3, 9)


def test_tstitch_keeps_guidance(smooth_gmm, x_start):
    """A guided denoiser is rebuilt around the small prior (guidance is not dropped)."""

    class Shift:
        def __init__(self, D):
            self.guidance, self.denoiser, self.schedule = Shift, D, D.schedule

        def __call__(self, x, t):
            return self.denoiser(x, t) + 1.0

    s = smooth_gmm.schedule
    out = sample(
        make_solver("tstitch", s, small=smooth_gmm, fraction=1.0), Shift(smooth_gmm), x_start, s.grid(6)
    )
    assert torch.allclose(out, run(Shift(smooth_gmm), x_start, "dpmpp_2m", steps=6), atol=1e-12)


def test_mrs_matches_dpmpp_on_the_equivalent_vp_problem(smooth_gmm, x_start):
    """x − μ follows a VP process for x0 − μ, so MRS on the MR prior is μ + DPM-Solver++ on the
    shifted prior."""
    s = smooth_gmm.schedule
    mu = torch.tensor([0.7, -0.4, 0.2], dtype=torch.float64)
    shifted = GaussianMixtureDenoiser(
        s, smooth_gmm.log_weights.exp(), smooth_gmm.means - mu, torch.tensor([0.6, 0.8])
    )

    class MeanReverting:
        schedule = s

        def __call__(self, x, t):  # E[x0 | x_t] for x_t = α x0 + (1 − α) μ + σ ε
            return shifted(x - mu, t) + mu

    x_T = x_start + mu
    ours = sample(make_solver("mrs", s, mu=mu.tolist()), MeanReverting(), x_T, s.grid(15))
    assert torch.allclose(ours, mu + run(shifted, x_start, "dpmpp_2m", steps=15), atol=1e-12)


def test_dc_solver_fits_caches_and_reuses_ratios(smooth_gmm, x_start, tmp_path):
    s = smooth_gmm.schedule
    cache = tmp_path / "dc.json"
    ref = run(smooth_gmm, x_start, "unipc", steps=400, order=3)
    counter = CountingDenoiser(smooth_gmm)
    dc = sample(make_solver("dc_solver", s, cache=str(cache)), counter, x_start, s.grid(10))
    fitted_nfe = counter.nfe
    entry = next(iter(json.loads(cache.read_text()).values()))
    assert len(entry["ratios"]) == 10 and entry["ratios"][:2] == [1.0, 1.0] and entry["ratios"] != [1.0] * 10
    err = float((dc - ref).pow(2).mean().sqrt())
    assert err < float((run(smooth_gmm, x_start, "unipc", steps=10) - ref).pow(2).mean().sqrt())
    counter.nfe = 0
    again = sample(make_solver("dc_solver", s, cache=str(cache)), counter, x_start, s.grid(10))
    assert counter.nfe == 10 < fitted_nfe and torch.equal(again, dc)


def test_s3_search_beats_its_start_and_is_reused(smooth_gmm, x_start, tmp_path):
    s = smooth_gmm.schedule
    cache = tmp_path / "s3.json"
    solver = make_solver("s3", s, cache=str(cache), blocks=4)
    out = sample(solver, smooth_gmm, x_start, s.grid(6))
    entry = next(iter(json.loads(cache.read_text()).values()))
    assert entry["loss"] <= entry["baseline_loss"] and len(entry["orders"]) == 6 and len(entry["times"]) == 7
    counter = CountingDenoiser(smooth_gmm)
    again = sample(make_solver("s3", s, cache=str(cache), blocks=4), counter, x_start, s.grid(6))
    assert counter.nfe == 6 and torch.equal(again, out)


@pytest.mark.parametrize(
    "name,options,match",
    [
        ("deis", {"order": 4}, "order"),
        ("deis", {"basis": "sigma"}, "basis"),
        ("unipc", {"variant": "bh3"}, "variant"),
        ("hb", {"beta": 0.0}, "beta"),
        ("tstitch", {"fraction": 0.5}, "small"),
        ("timeshift", {"base": "nope"}, "dpmpp_2m"),
        ("dpmpp_2m", {"threshold_ratio": 1.5}, "threshold_ratio"),
    ],
)
def test_bad_options_are_config_errors(smooth_gmm, name, options, match):
    with pytest.raises(ConfigError, match=match):
        make_solver(name, smooth_gmm.schedule, **options)


def test_plan_with_wrong_length_is_a_config_error(smooth_gmm, x_start):
    s = smooth_gmm.schedule
    with pytest.raises(ConfigError, match="one per step"):
        sample(make_solver("dc_solver", s, ratios=[1.0]), smooth_gmm, x_start, s.grid(4))
    with pytest.raises(ConfigError, match="one entry per step"):
        sample(
            make_solver("s3", s, plan={"orders": [2], "correctors": [True]}), smooth_gmm, x_start, s.grid(4)
        )


def test_plugins_lists_every_solver_with_a_citation():
    text = describe_plugins()
    for name in (
        "dpmpp_2s",
        "dpmpp_3m",
        "deis",
        "unipc",
        "timeshift",
        "hb",
        "ghvb",
        "dc_solver",
        "dualfast",
        "tstitch",
        "mrs",
        "s3",
        "fitted_lms",
    ):
        line = next(line for line in text.splitlines() if line.strip().startswith(name + " "))
        assert "[" in line and "]" in line, line
