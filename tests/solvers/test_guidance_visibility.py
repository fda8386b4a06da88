"""Solvers that look through the denoiser for its guidance (T-Stitch, DDRM) keep it under search wrappers."""

import pytest
import torch

from diffinv.diffusion.denoisers import GaussianMixtureDenoiser
from diffinv.guidance import make_guidance
from diffinv.search import make_search
from diffinv.search.base import CountingMemo
from diffinv.solvers import PerSampleNoise, make_solver, sample
from diffinv.solvers.tstitch import rebind
from diffinv.testbed import make_problem

PROBLEM = make_problem(8, 2, seed=0)
PRIOR, SCH = PROBLEM.prior, PROBLEM.prior.schedule
SMALL = GaussianMixtureDenoiser(SCH, PRIOR.log_weights.exp(), PRIOR.means + 1.0)  # another prior
STEPS = 8


def _guided(name: str, prior: GaussianMixtureDenoiser = PRIOR):
    return make_guidance(name, PROBLEM.operator, PROBLEM.y)(prior)


def _x_T(rows: int) -> torch.Tensor:
    return torch.randn(rows, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) * float(
        SCH.sigma(SCH.t_max)
    )


def _tstitch(fraction: float):
    return make_solver("tstitch", SCH, base="ddpm", small=SMALL, fraction=fraction)


def _search(solver, D, name: str, rows: int, **options):
    """``name`` run on ``rows`` particles; the solver is prepared first, as the pipeline stages do."""
    grid, x_T = SCH.grid(STEPS), _x_T(rows)
    grid = solver.prepare(D, grid, x_T)
    m = make_search(name, PROBLEM.operator, PROBLEM.y, **options)
    return m.run(solver, D, x_T, grid, PerSampleNoise(range(rows)))


def _plain(solver, D, rows: int) -> torch.Tensor:
    return sample(solver, D, _x_T(rows), SCH.grid(STEPS), PerSampleNoise(range(rows)))


def test_rebind_through_a_counter_keeps_guidance_and_counts():
    memo = CountingMemo(_guided("dds"))
    x, t = _x_T(3), torch.full((3,), 0.5, dtype=torch.float64)
    out = rebind(memo, SMALL)(x, t)
    assert torch.allclose(out, _guided("dds", SMALL)(x, t), rtol=0, atol=1e-12)
    assert not torch.allclose(out, SMALL(x, t), rtol=0, atol=1e-6)
    assert memo.nfe == 3


def test_split_guidance_through_a_counter_keeps_counting():
    from diffinv.guidance.base import split_guidance  # new in the fix: import here, the others run without

    memo = CountingMemo(_guided("ddrm"))
    guidance, prior = split_guidance(memo)
    x, t = _x_T(4), torch.full((4,), 0.5, dtype=torch.float64)
    assert type(guidance).__name__ == "DDRM"
    assert torch.equal(prior(x, t), PRIOR(x, t)) and memo.nfe == 4


@pytest.mark.parametrize(
    "name,options",
    [
        ("smc", {"particles": 4}),
        ("best_of_n", {"n": 2}),
        ("zero_order", {"n": 2, "iterations": 2}),
        ("path_search", {"n": 2}),
        ("dts", {"rollouts": 3}),
        ("dts_star", {"rollouts": 3}),
    ],
)
def test_tstitch_all_small_under_a_search_is_the_guided_small_prior(name, options):
    """fraction 1: every step is the small prior's; under guidance that is the guided small prior."""
    rows = 2 * make_search(name, PROBLEM.operator, PROBLEM.y, **options).particles_per_run
    ours = _search(_tstitch(1.0), _guided("dds"), name, rows, **options)
    expected = _search(make_solver("ddpm", SCH), _guided("dds", SMALL), name, rows, **options)
    assert torch.allclose(ours.x, expected.x, rtol=0, atol=1e-12), float((ours.x - expected.x).abs().max())
    assert ours.nfe == expected.nfe


@pytest.mark.parametrize(
    "name,options", [("best_of_n", {"n": 1}), ("svdd", {"candidates": 1}), ("dts", {"rollouts": 1})]
)
def test_tstitch_under_a_one_candidate_search_is_its_plain_run(name, options):
    """Searches with one candidate reproduce their base sampler, T-Stitch's small steps included."""
    rows = 6
    ours = _search(_tstitch(0.5), _guided("dds"), name, rows, **options)
    plain = _plain(_tstitch(0.5), _guided("dds"), rows)
    assert torch.allclose(ours.x, plain, rtol=0, atol=1e-12), float((ours.x - plain).abs().max())


def test_tstitch_small_steps_are_counted_under_a_search():
    rows = 5
    assert _search(_tstitch(0.5), _guided("dds"), "best_of_n", rows, n=1).nfe == rows * STEPS


@pytest.mark.parametrize(
    "name,options", [("best_of_n", {"n": 1}), ("svdd", {"candidates": 1}), ("dts", {"rollouts": 1})]
)
def test_ddrm_kernel_under_a_one_candidate_search_is_its_plain_run(name, options):
    """The DDRM solver finds guidance ``ddrm`` through the search's counter (else its plain step)."""
    rows = 6
    solver = make_solver("ddrm", SCH)
    ours = _search(solver, _guided("ddrm"), name, rows, **options)
    plain = _plain(solver, _guided("ddrm"), rows)
    assert torch.allclose(ours.x, plain, rtol=0, atol=1e-12), float((ours.x - plain).abs().max())
