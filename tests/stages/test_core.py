"""The shared sampling core: exact NFE of every plug-in, seeds by identity, precision, registry."""

import pytest
import torch

from diffinv.diffusion.denoisers import GaussianMixtureDenoiser, NetworkDenoiser
from diffinv.diffusion.networks import build_unet
from diffinv.diffusion.schedule import VPSchedule
from diffinv.operators.mri import MRIOperator, fft2c
from diffinv.plugins import BUILTINS, load
from diffinv.stages import get_verb, stages, verb_config
from diffinv.stages.core import CaseSeeds, Method, Problem, Sampling, case_key, network_dtype, sample_case
from diffinv.testbed import OWN_SOLVER, SMALL_SEARCH_OPTIONS

STEPS, SAMPLES = 4, 3
SAMPLING = Sampling(samples=SAMPLES, batch_size=2, steps=STEPS, final_dc=False, hallucination_steps=2)
CALIBRATED = {"dc_solver", "s3", "fitted_lms"}


class Rows:
    """An independent count of denoiser rows, below the core's own counter."""

    def __init__(self, denoiser):
        self.denoiser, self.schedule, self.rows = denoiser, denoiser.schedule, 0

    def __call__(self, x, t):
        self.rows += x.shape[0]
        return self.denoiser(x, t)


def _problem():
    g = torch.Generator().manual_seed(0)
    truth = torch.randn(2, 8, 8, generator=g)
    mask = torch.zeros(8, dtype=torch.bool)
    mask[[0, 3, 4, 6]] = True
    op = MRIOperator(mask, None)
    return Problem(op, op.mask * fft2c(torch.complex(truth[0], truth[1]))[None], (2, 8, 8))


def _prior():
    means = torch.randn(2, 128, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return GaussianMixtureDenoiser(VPSchedule(), torch.ones(2), means)


# the ddrm and diffpir solvers are named like the guidance they pair with (OWN_SOLVER)
@pytest.mark.parametrize("name", sorted(BUILTINS["solver"]))
def test_exact_nfe_of_every_solver(name):
    """NFE per sample is steps × the solver's calls per step; calibration is counted apart."""
    options = {"calibration_size": 4} if name == "fitted_lms" else {}
    method = Method(name, OWN_SOLVER.get(name, "dds"), solver_options=options)
    prior = Rows(_prior())
    out = sample_case(_problem(), prior, method, SAMPLING, CaseSeeds.of(0, "case"), "cpu")
    assert out.nfe == STEPS * load("solver", name).nfe_per_step
    assert (out.calibration_nfe > 0) == (name in CALIBRATED)
    assert out.nfe * SAMPLES + out.calibration_nfe == prior.rows


class Times(Rows):
    """Rows, plus the times of the calls and the particles of the first one."""

    def __init__(self, denoiser):
        super().__init__(denoiser)
        self.times, self.first = [], None

    def __call__(self, x, t):
        self.times.append(float(t.max()))
        self.first = x.clone() if self.first is None else self.first
        return super().__call__(x, t)


def test_a_later_start_samples_from_the_diffused_zero_image_over_the_steps_below_it():
    """Sampling.t_start: DDIM calls the prior once at each grid time from t_start on, starting
    from σ(t_start)·ε (the std of 128 × 8 draws is within 4 standard errors, ~2.5 %, of σ)."""
    import dataclasses

    prior = Times(_prior())
    sampling = dataclasses.replace(SAMPLING, samples=8, batch_size=8, t_start=0.4)
    sample_case(_problem(), prior, Method("ddim", "dds"), sampling, CaseSeeds.of(0, "case"), "cpu")
    schedule = prior.schedule
    assert prior.times == pytest.approx(schedule.grid(STEPS, "logsnr", t_start=0.4)[:-1].tolist(), abs=1e-6)
    sigma = float(schedule.sigma(torch.tensor(0.4)))
    assert prior.first.std().item() == pytest.approx(sigma, rel=4 / (2 * prior.first.numel()) ** 0.5)


def test_an_initial_estimate_is_diffused_to_the_first_grid_time():
    """x_init (CCDF): the first particles are α(t_start)·x_init plus the very noise a zero start
    draws (same seeds), so they differ from the zero start by exactly α(t_start)·x_init."""
    import dataclasses

    sampling = dataclasses.replace(SAMPLING, t_start=0.4)
    x_init = torch.randn(2, 8, 8, generator=torch.Generator().manual_seed(5))
    firsts = []
    for start in (None, x_init):
        prior = Times(_prior())
        sample_case(
            _problem(), prior, Method("ddim", "dds"), sampling, CaseSeeds.of(0, "case"), "cpu", x_init=start
        )
        firsts.append(prior.first)
    alpha = float(prior.schedule.alpha(torch.tensor(0.4)))
    assert 0.1 < alpha < 0.99
    torch.testing.assert_close(
        firsts[1] - firsts[0], (alpha * x_init).expand_as(firsts[0]), atol=1e-6, rtol=0
    )
    with pytest.raises(ValueError, match=r"x_init has shape \(8, 8\), not \(2, 8, 8\)"):
        sample_case(
            _problem(),
            _prior(),
            Method("ddim", "dds"),
            sampling,
            CaseSeeds.of(0, "c"),
            "cpu",
            x_init=x_init[0],
        )


# closed forms: populations of P particles cost P × steps per returned sample
FIXED_COST = {"smc": 2 * STEPS, "mcgdiff": 2 * STEPS, "best_of_n": 2 * STEPS, "path_search": 2 * STEPS}


@pytest.mark.parametrize("search", sorted(BUILTINS["search"]))
def test_exact_nfe_of_every_search(search):
    """Searches count every particle row: the core's NFE is the rows evaluated per sample."""
    expected = FIXED_COST.get(search)
    options = SMALL_SEARCH_OPTIONS[search]
    method = Method("ddpm", "none" if search == "mcgdiff" else "dds", search, search_options=options)
    prior = Rows(_prior())
    out = sample_case(_problem(), prior, method, SAMPLING, CaseSeeds.of(0, "case"), "cpu")
    assert out.nfe * SAMPLES == prior.rows and out.calibration_nfe == 0
    assert out.nfe >= STEPS
    if expected is not None:
        assert out.nfe == expected
    assert out.samples.shape == (SAMPLES, 2, 8, 8) and out.samples.dtype == torch.float32


def test_every_registered_search_and_solver_is_covered():
    assert set(SMALL_SEARCH_OPTIONS) == set(BUILTINS["search"])


def test_case_seeds_follow_the_identity_not_the_position():
    a, b = CaseSeeds.of(3, "file_a.h5:7"), CaseSeeds.of(3, "file_a.h5:7")
    assert a == b and a.samples(0, 4)[2:] == a.samples(2, 4)
    assert CaseSeeds.of(3, "file_a.h5:8").mask != a.mask and CaseSeeds.of(4, "file_a.h5:7").mask != a.mask
    assert case_key("file_a.h5:7") == case_key("file_a.h5:7") < 2**63


def test_samples_do_not_depend_on_the_batch_size():
    method = Method("ddim", "dds", solver_options={"eta": 1.0})
    runs = [
        sample_case(
            _problem(), _prior(), method, Sampling(3, b, STEPS, final_dc=False), CaseSeeds.of(0, "c"), "cpu"
        )
        for b in (1, 3)
    ]
    torch.testing.assert_close(runs[0].samples, runs[1].samples, rtol=0, atol=1e-6)


def _network():
    torch.manual_seed(0)
    net = build_unet([8, 8], widths=[8, 16], norm_groups=4).eval().requires_grad_(False)
    return NetworkDenoiser(net, VPSchedule(), "epsilon", clip=2.5)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_runs_the_network_only(precision):
    """Autocast changes the network's arithmetic only: outputs stay float32, close to fp32."""
    prior, method = _network(), Method("ddim", "dds")
    ref = sample_case(_problem(), prior, method, SAMPLING, CaseSeeds.of(0, "c"), "cpu")
    low = sample_case(
        _problem(),
        prior,
        method,
        Sampling(SAMPLES, 2, STEPS, final_dc=False, precision=precision),
        CaseSeeds.of(0, "c"),
        "cpu",
    )
    assert low.samples.dtype == torch.float32 and prior.autocast is None, "the prior is restored"
    diff = float((low.samples - ref.samples).norm() / ref.samples.norm())
    assert 0 < diff < 0.05, diff  # bf16 keeps 8 mantissa bits (3e-3 per operation); fp16 10
    assert network_dtype(prior) == "float32" and network_dtype(_prior()) == "float64"


def test_stages_register_their_verbs_and_config_paths():
    found = stages()
    assert {"mri", "ads"} <= set(found)
    assert get_verb("mri", "train").run == "diffinv.stages.mri.run:train"
    from diffinv.config import load_config

    cfg = load_config("config/config.yaml")
    train = verb_config(cfg, "mri", "train")
    assert set(train) == {"seed", "mri"} and set(train["mri"]) == {"data", "prior"}
    assert "sampling" not in train["mri"] and "checkpoint" not in train["mri"]["prior"]
    sample = verb_config(cfg, "mri", "sample", method="dpmpp_2m-dds")
    assert [m["solver"] for m in sample["mri"]["sampling"]["methods"]] == ["dpmpp_2m"]
    assert "accelerations" not in sample["mri"]["sampling"] and "ads" not in sample
    ads = verb_config(cfg, "ads", "sample")
    assert "methods" not in ads["mri"]["sampling"] and "enabled" not in ads["ads"]


def test_tstitch_small_model_steps_are_counted():
    """The small prior's steps go through the core's counter too (rewrap shares the count)."""
    method = Method("tstitch", "dds", solver_options={"fraction": 0.5, "small": _prior()})
    prior = Rows(_prior())
    out = sample_case(_problem(), prior, method, SAMPLING, CaseSeeds.of(0, "case"), "cpu")
    assert out.nfe == STEPS, "half the steps on each model, all counted"
    assert prior.rows == (STEPS // 2) * SAMPLES, "the large prior ran only its half"
