"""The calibration cache of fitted solvers keys on the prior's content and the observation model."""

import json

import pytest
import torch

from diffinv.diffusion.denoisers import GaussianMixtureDenoiser, NetworkDenoiser
from diffinv.guidance import make_guidance
from diffinv.search.base import CountingMemo
from diffinv.solvers import CountingDenoiser, make_solver
from diffinv.solvers.base import FunctionDenoiser
from diffinv.testbed import grid_prior, make_problem

from .conftest import make_gmm

# fitted solvers with small calibrations, and the name of the method each fits with
FITTED = [
    ("dc_solver", {"calibration_size": 8, "reference_substeps": 3}, "fit"),
    ("s3", {"calibration_size": 8, "reference_substeps": 3, "blocks": 2, "sweeps": 0}, "search"),
    ("fitted_lms", {"calibration_size": 8, "reference_steps": 60, "lattice": 30, "sweeps": 0}, "calibrate"),
]
STEPS = 10


class Fits:
    """A fitted solver on one cache file, counting its fits."""

    def __init__(self, name, options, method, cache):
        self.solver = make_solver(name, make_gmm().schedule, cache=str(cache), **options)
        self.calls = 0
        fit = getattr(self.solver, method)

        def counted(*args):
            self.calls += 1
            return fit(*args)

        setattr(self.solver, method, counted)

    def prepare(self, D, x):
        return self.solver.prepare(D, D.schedule.grid(STEPS), x)


def _x(dim: int) -> torch.Tensor:
    return torch.zeros(2, dim, dtype=torch.float64)


def _other_gmm() -> GaussianMixtureDenoiser:
    gmm = make_gmm()
    return GaussianMixtureDenoiser(
        gmm.schedule, gmm.log_weights.exp(), gmm.means + 0.5, torch.tensor([0.6, 0.8])
    )


@pytest.mark.parametrize("name,options,method", FITTED)
def test_another_prior_is_fitted_anew_and_the_same_prior_reuses_the_file(name, options, method, tmp_path):
    cache = tmp_path / "calibration.json"
    first = Fits(name, options, method, cache)
    first.prepare(make_gmm(), _x(3))
    other = Fits(name, options, method, cache)  # a fresh solver: only the file is shared
    other.prepare(_other_gmm(), _x(3))
    assert (first.calls, other.calls) == (1, 1)
    entries = list(json.loads(cache.read_text()).values())
    assert len(entries) == 2 and entries[0] != entries[1]
    again = Fits(name, options, method, cache)
    again.prepare(make_gmm(), _x(3))  # an equal prior (another object) hits the file
    again.prepare(CountingDenoiser(make_gmm()), _x(3))  # counting wrappers do not change the prior
    assert again.calls == 0


def test_a_different_observation_misses(tmp_path):
    problem = make_problem(4, 2, seed=0)
    name, options, method = FITTED[0]
    fits = Fits(name, options, method, tmp_path / "calibration.json")

    def guided(y, **guidance_options):
        return make_guidance("dds", problem.operator, y, **guidance_options)(problem.prior)

    fits.prepare(guided(problem.y), _x(4))
    fits.prepare(CountingMemo(guided(problem.y.clone())), _x(4))  # same observation: a hit
    assert fits.calls == 1
    fits.prepare(guided(problem.y + 0.1), _x(4))
    assert fits.calls == 2
    fits.prepare(guided(problem.y, reg=0.5), _x(4))  # another option of the guidance
    assert fits.calls == 3
    fits.prepare(make_guidance("pigdm", problem.operator, problem.y)(problem.prior), _x(4))
    assert fits.calls == 4
    fits.prepare(problem.prior, _x(4))  # unguided
    assert fits.calls == 5


def test_a_denoiser_without_fingerprint_stays_in_memory_and_never_reuses_a_prior_fit(tmp_path):
    cache = tmp_path / "calibration.json"
    name, options, method = FITTED[0]
    Fits(name, options, method, cache).prepare(make_gmm(), _x(3))
    stored = cache.read_text()
    gmm = make_gmm()
    function = FunctionDenoiser(gmm.schedule, gmm)  # the same values, but nothing says so
    fits = Fits(name, options, method, cache)
    fits.prepare(function, _x(3))
    assert fits.calls == 1 and cache.read_text() == stored
    fits.prepare(CountingDenoiser(function), _x(3))  # the same object: its fit, from memory
    assert fits.calls == 1
    fits.prepare(FunctionDenoiser(gmm.schedule, gmm), _x(3))  # another object
    assert fits.calls == 2 and cache.read_text() == stored


def test_fingerprints_follow_content():
    from diffinv.diffusion.denoisers import fingerprint

    s = make_gmm().schedule
    assert fingerprint(make_gmm()) == fingerprint(CountingMemo(make_gmm())) is not None
    assert fingerprint(make_gmm()) != fingerprint(_other_gmm())
    assert fingerprint(grid_prior(4, s, seed=0)) != fingerprint(grid_prior(4, s, seed=1))  # weights only
    assert fingerprint(FunctionDenoiser(s, make_gmm())) is None

    def network(seed: int) -> NetworkDenoiser:
        torch.manual_seed(seed)
        return NetworkDenoiser(torch.nn.Linear(3, 3), s)

    assert fingerprint(network(0)) == fingerprint(network(0)) != fingerprint(network(1))
    assert fingerprint(NetworkDenoiser(network(0).net, s, prediction="x0")) != fingerprint(network(0))
    problem = make_problem(4, 2, seed=0)
    guided = make_guidance("dds", problem.operator, problem.y)
    assert fingerprint(guided(problem.prior)) not in (None, fingerprint(problem.prior))
    assert fingerprint(guided(FunctionDenoiser(s, problem.prior))) is None
