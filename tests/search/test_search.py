"""Search plug-ins on the exact test bed (Gaussian-mixture prior, closed-form targets)."""

import itertools

import pytest
import torch

from diffinv.errors import ConfigError
from diffinv.plugins import available
from diffinv.search import make_search
from diffinv.search.rewards import load_reward
from diffinv.solvers import PerSampleNoise, make_solver, sample
from diffinv.testbed import distance_to, make_problem, noise_floor, tilt

torch.set_num_threads(2)
PROBLEM = make_problem(8, 2, seed=0)  # 4 posterior modes with mass 0.70 / 0.21 / 0.05 / 0.03
SCH = PROBLEM.prior.schedule
DIRECTION = torch.ones(8, dtype=torch.float64) / 8**0.5
LAM = 0.1


def linear_reward(x):
    return LAM * (x.reshape(x.shape[0], -1) @ DIRECTION.to(x.dtype))


def _x_T(rows, seed=0):
    return torch.randn(rows, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_mcgdiff_approaches_the_noise_floor_as_particles_grow():
    """SW2 to the exact posterior (100 runs, 100 steps) must fall with N. Measured at 150 runs:
    N=1: 15.3, N=4: 8.8, N=16: 3.1 against a noise floor of 1.07 at 150 samples; the SW2
    standard error across seeds is about 0.3, so the asserted drops (> 1 each) are > 3
    standard errors. N=16 is still 2.9x the floor (see benchmarks/guidance_testbed.py)."""
    runs, sw = 100, []
    for n in (1, 4, 16):
        m = make_search("mcgdiff", PROBLEM.operator, PROBLEM.y, particles=n)
        r = m.run(
            make_solver("ddpm", SCH),
            PROBLEM.prior,
            _x_T(runs * n),
            SCH.grid(100),
            PerSampleNoise(range(runs * n)),
        )
        sw.append(distance_to(PROBLEM.posterior, r.x))
        assert r.ess.shape == (runs,)
        if n > 1:  # a sharp likelihood (contrast test_mcgdiff_ess_is_n_under_a_flat_likelihood): measured
            # mean lowest ESS 1.8 of 4 and 6.2 of 16, so nearly every population resamples
            assert float(r.diagnostics["min_ess"].mean()) < 0.5 * n
            assert float((r.diagnostics["min_ess"] < 0.5 * n).double().mean()) > 0.8
    floor = noise_floor(PROBLEM.posterior, runs)
    print(f"MCGdiff SW2 at N=1,4,16: {[round(v, 2) for v in sw]}, noise floor {floor:.2f}")
    assert sw[0] - sw[1] > 1 and sw[1] - sw[2] > 1
    assert sw[2] < 4 * floor


@pytest.mark.parametrize("lam,mean_ess", [(0.0, 16.0), (0.1, 4.3), (0.3, 2.7)])
def test_smc_ess_is_that_of_its_final_weights(lam, mean_ess):
    """Without resampling (``ess_threshold=0``) the twisted weights telescope to the target's
    potential: particle j ends with log w_j = r(x_j) exactly. So the reported ESS must equal
    (Σ e^{r_j})² / Σ e^{2 r_j} over the final particles, which the base sampler reproduces
    from the same population noise; it is N for a flat reward (λ = 0) and falls as λ grows
    (measured means 4.3 and 2.7 of 16 at λ = 0.1 and 0.3)."""
    from diffinv.search.base import PopulationNoise

    runs, n, solver, grid = 20, 16, make_solver("ddpm", SCH), SCH.grid(20)

    def reward(x):
        return lam * (x.reshape(x.shape[0], -1) @ DIRECTION.to(x.dtype))

    seeds = list(range(runs * n))
    m = make_search("smc", None, None, reward=reward, particles=n, ess_threshold=0.0)
    r = m.run(solver, PROBLEM.prior, _x_T(runs * n), grid, PerSampleNoise(seeds))
    particles = sample(
        solver, PROBLEM.prior, _x_T(runs * n), grid, PopulationNoise.like(PerSampleNoise(seeds), n)
    ).reshape(runs, n, 8)
    w = reward(particles.reshape(-1, 8)).reshape(runs, n).exp()
    torch.testing.assert_close(r.ess, w.sum(1) ** 2 / (w**2).sum(1), rtol=1e-10, atol=0)
    assert all(bool((particles[k] == r.x[k]).all(1).any()) for k in range(runs))  # picks a final particle
    assert abs(float(r.ess.mean()) - mean_ess) < 0.1


def test_mcgdiff_ess_is_n_under_a_flat_likelihood():
    """σ_y = 1e4 and a noiseless y: the log-likelihood varies by < 1e-4 across the prior's
    support, so the weights stay equal and the ESS stays N (measured N − ESS ≈ 2e-5 at N = 16;
    it grows like 1/σ_y⁴). With the sharp likelihood of PROBLEM the lowest ESS falls below N/2
    (test_mcgdiff_approaches_the_noise_floor_as_particles_grow)."""
    from diffinv.operators.svd import MatrixSVD

    runs, n, matrix = 10, 16, PROBLEM.operator.matrix
    m = make_search("mcgdiff", MatrixSVD(matrix, 1e4), (matrix @ PROBLEM.truth)[None], particles=n)
    r = m.run(
        make_solver("ddpm", SCH), PROBLEM.prior, _x_T(runs * n), SCH.grid(30), PerSampleNoise(range(runs * n))
    )
    assert float((r.ess - n).abs().max()) < 1e-3, r.ess
    assert float((r.diagnostics["min_ess"] - n).abs().max()) < 1e-3, r.diagnostics["min_ess"]


def test_dts_distance_to_the_tilted_target_falls_as_rollouts_grow():
    """One growing tree per run (anytime): SW2 to p(x) exp(λ aᵀx) after 1 and 8 rollouts.
    Measured 12.9 -> 5.7 (floor 1.7 at 100 samples); the drop is > 10 standard errors."""
    target = tilt(PROBLEM.prior, DIRECTION, LAM)
    m = make_search("dts", None, None, reward=linear_reward)
    res = m.anytime(
        make_solver("ddpm", SCH), PROBLEM.prior, _x_T(100), SCH.grid(20), PerSampleNoise(range(100)), [1, 8]
    )
    sw = [distance_to(target, r.x) for r in res]
    print(
        f"DTS SW2 after 1 and 8 rollouts: {sw[0]:.2f}, {sw[1]:.2f}"
        f" at NFE/sample {res[0].nfe_per_sample:.0f}, {res[1].nfe_per_sample:.0f}"
    )
    assert sw[1] < 0.6 * sw[0]
    assert res[1].nfe_per_sample < 8 * 20  # the tree is reused: later rollouts start below the root


def test_svdd_with_one_candidate_is_its_base_sampler():
    solver, n = make_solver("ddpm", SCH), 16
    base = sample(solver, PROBLEM.prior, _x_T(n), SCH.grid(10), PerSampleNoise(range(n)))
    m = make_search("svdd", None, None, reward=linear_reward, candidates=1)
    r = m.run(solver, PROBLEM.prior, _x_T(n), SCH.grid(10), PerSampleNoise(range(n)))
    assert torch.equal(r.x, base)
    assert r.nfe == n * (10 + 1)  # one x0 per step (reused by the next step) plus the first


def test_minority_guidance_with_zero_weight_is_its_base_sampler():
    solver, n = make_solver("ddpm", SCH), 8
    base = sample(solver, PROBLEM.prior, _x_T(n), SCH.grid(10), PerSampleNoise(range(n)))
    r = make_search("minority", None, None, reward=linear_reward, weight=0.0).run(
        solver, PROBLEM.prior, _x_T(n), SCH.grid(10), PerSampleNoise(range(n))
    )
    assert torch.equal(r.x, base)


def _max_of_n_moments(mixture, n):
    """Mean and std of the largest of n i.i.d. rewards λ aᵀx, x ~ ``mixture`` (a 1D Gaussian mixture)."""
    w = mixture.log_weights.exp()
    m = LAM * mixture.means @ DIRECTION
    sd = LAM * torch.einsum("i,kij,j->k", DIRECTION, mixture.covs, DIRECTION).sqrt()
    r = torch.linspace(float((m - 10 * sd).min()), float((m + 10 * sd).max()), 200_001, dtype=torch.float64)
    cdf = (w * torch.special.ndtr((r[:, None] - m) / sd)).sum(1)
    p = torch.diff(cdf**n, prepend=torch.zeros(1, dtype=torch.float64))  # law of the max on the grid
    mean = (r * p).sum()
    return float(mean), float(((r - mean) ** 2 * p).sum().sqrt())


def test_best_of_n_reward_follows_the_order_statistics_of_its_base_sampler():
    """Best-of-N returns the largest of N i.i.d. rewards: with a base sampler close to the prior
    (dpmpp_2m, 20 steps), the mean best reward over R runs must match E[max of N] of the exact
    prior's reward law, 0.91 / 3.49 / 4.56 at N = 1 / 4 / 16. Tolerance: 4.5 standard errors
    sd_N/sqrt(R) (sd_N exact: 2.54 / 1.44 / 0.29) plus 0.05 for the sampler's bias (measured at
    4000 draws: mean reward 0.899 vs 0.907, E[max of 4] 3.452, E[max of 16] 4.543)."""
    runs, sizes = 200, (1, 4, 16)
    pool = _x_T(runs * 16, seed=1).reshape(runs, 16, 8)
    solver, grid = make_solver("dpmpp_2m", SCH), SCH.grid(20)
    means = []
    for n in sizes:
        res = make_search("best_of_n", None, None, reward=linear_reward, n=n).run(
            solver, PROBLEM.prior, pool[:, :n].reshape(-1, 8), grid, PerSampleNoise(range(runs * n))
        )
        assert res.nfe == runs * n * 20
        torch.testing.assert_close(res.reward, linear_reward(res.x))
        exact, sd = _max_of_n_moments(PROBLEM.prior, n)
        mean = float(res.reward.mean())
        means.append(mean)
        print(f"best-of-{n}: mean reward {mean:.3f}, exact E[max] {exact:.3f} ± {sd / runs**0.5:.3f}")
        assert abs(mean - exact) < 4.5 * sd / runs**0.5 + 0.05, (n, mean, exact)
    assert means[0] + 2.0 < means[1] < means[2] - 0.7  # exact gaps 2.58 and 1.07


def test_rbf_stays_within_its_budget():
    m = make_search("rbf", None, None, reward=linear_reward, budget=60)
    r = m.run(make_solver("ddpm", SCH), PROBLEM.prior, _x_T(10), SCH.grid(10), PerSampleNoise(range(10)))
    assert r.nfe_per_sample <= 60


@pytest.mark.parametrize("name", sorted(available("search")))
def test_every_search_runs_with_the_data_consistency_reward(name):
    m = make_search(name, PROBLEM.operator, PROBLEM.y)
    n = 2 * m.particles_per_run
    r = m.run(make_solver("ddpm", SCH), PROBLEM.prior, _x_T(n), SCH.grid(6), PerSampleNoise(range(n)))
    assert r.x.shape == (2, 8) and torch.isfinite(r.x).all() and r.nfe > 0
    assert r.diagnostics["residual"].shape == (2,)
    if m.population:
        assert r.ess is not None


def test_bad_search_options_and_rewards_are_config_errors():
    with pytest.raises(ConfigError, match="svdd"):
        make_search("svdd", None, None, reward=linear_reward, candidates=0)
    with pytest.raises(ConfigError, match="bad options"):
        make_search("svdd", None, None, reward=linear_reward, particles=3)
    with pytest.raises(ConfigError, match="needs an operator"):
        make_search("best_of_n", None, None)
    with pytest.raises(ConfigError, match="cannot be imported"):
        load_reward("no_such_module:f", None, None)
    assert load_reward("tests.search.test_search:linear_reward", None, None) is linear_reward


def test_dts_star_best_reward_never_falls_as_rollouts_grow():
    """Anytime property. DTS* returns the best leaf of a tree that only grows (same seeds), so
    each run's best reward is non-decreasing in the rollouts: asserted exactly (tolerance 0),
    both along one growing tree and across separate calls with more rollouts. The mean must
    also rise clearly from 4 to 64 rollouts (measured 2.9 -> 4.6 at 20 runs; SE about 0.2)."""
    runs, checkpoints = 20, [4, 16, 32, 64]
    solver, grid = make_solver("ddpm", SCH), SCH.grid(20)
    m = make_search("dts_star", None, None, reward=linear_reward)
    res = m.anytime(solver, PROBLEM.prior, _x_T(runs), grid, PerSampleNoise(range(runs)), checkpoints)
    for a, b in itertools.pairwise(res):
        assert bool((b.reward >= a.reward).all()) and b.nfe >= a.nfe
    assert float(res[-1].reward.mean()) > float(res[0].reward.mean()) + 1.0
    single = [
        make_search("dts_star", None, None, reward=linear_reward, rollouts=c).run(
            solver, PROBLEM.prior, _x_T(runs), grid, PerSampleNoise(range(runs))
        )
        for c in (16, 32)
    ]
    assert torch.equal(single[0].reward, res[1].reward) and bool((single[1].reward >= single[0].reward).all())


@pytest.mark.parametrize(
    "name,options",
    [("dts", {"rollouts": 12}), ("dts_star", {"rollouts": 12}), ("svdd", {"candidates": 4, "alpha": 0.5})],
)
def test_tree_and_svdd_results_do_not_depend_on_the_batch(name, options):
    """One tree (or SVDD chain) per run with its own noise stream and selection generator:
    K runs in one batch give what each run gives alone."""
    runs, solver, grid = 4, make_solver("ddpm", SCH), SCH.grid(10)
    m = make_search(name, None, None, reward=linear_reward, **options)
    together = m.run(solver, PROBLEM.prior, _x_T(runs), grid, PerSampleNoise(range(runs)))
    for r in range(runs):
        alone = m.run(solver, PROBLEM.prior, _x_T(runs)[r : r + 1], grid, PerSampleNoise([r]))
        torch.testing.assert_close(alone.x[0], together.x[r], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["smc", "mcgdiff"])
def test_population_results_do_not_depend_on_the_batch(name):
    """One generator per population (noise, resampling and the final pick) and per-run
    resampling decisions: K populations in one batch give what each gives alone."""
    runs, n, solver, grid = 4, 8, make_solver("ddpm", SCH), SCH.grid(30)
    m = make_search(name, PROBLEM.operator, PROBLEM.y, particles=n)
    seeds = list(range(runs * n))
    together = m.run(solver, PROBLEM.prior, _x_T(runs * n), grid, PerSampleNoise(seeds))
    for r in range(runs):
        rows = slice(r * n, (r + 1) * n)
        alone = m.run(solver, PROBLEM.prior, _x_T(runs * n)[rows], grid, PerSampleNoise(seeds[rows]))
        torch.testing.assert_close(alone.x[0], together.x[r], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(alone.ess[0], together.ess[r])


def test_minority_score_of_a_sample_does_not_depend_on_the_batch():
    """The minority score's noise draws are shared by all rows: a row scores the same alone or in a batch."""
    from diffinv.search.minority import minority_score

    x0 = _x_T(5)
    together = minority_score(PROBLEM.prior, x0)
    alone = torch.cat([minority_score(PROBLEM.prior, x0[r : r + 1]) for r in range(5)])
    torch.testing.assert_close(alone, together, rtol=1e-12, atol=1e-12)
