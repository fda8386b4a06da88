"""ResShift (Yue, Wang & Loy 2023): schedule (Eq. 10), marginal (Eq. 2), posterior (Eq. 5–6),
the sampler with an oracle x0-predictor, bicubic geometry and checkpoints."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from diffinv.errors import ConfigError
from diffinv.solvers.base import PerSampleNoise
from diffinv.stages.atmos.resshift import (
    ResShiftSchedule,
    load_resshift,
    marginal,
    posterior,
    sample_resshift,
    save_resshift,
    train_resshift,
    upsample,
)

SCHED = ResShiftSchedule(steps=6, kappa=1.5, p=0.3, eta_1=1e-3, eta_T=0.98)


def test_schedule_is_eq10() -> None:
    """√η_t = √η_1 b_0^{β_t}, β_t = ((t−1)/(T−1))^p (T−1), b_0 = exp(log(η_T/η_1)/(2(T−1))):
    the paper's form evaluated term by term; float64 rounding is ~1e-16 relative."""
    T, p = SCHED.steps, SCHED.p
    b0 = math.exp(math.log(SCHED.eta_T / SCHED.eta_1) / (2 * (T - 1)))
    expected = [
        (math.sqrt(SCHED.eta_1) * b0 ** (((t - 1) / (T - 1)) ** p * (T - 1))) ** 2 for t in range(1, T + 1)
    ]
    torch.testing.assert_close(SCHED.eta(), torch.tensor(expected, dtype=torch.float64), rtol=1e-13, atol=0)
    assert float(SCHED.eta()[0]) == pytest.approx(SCHED.eta_1, rel=1e-15)
    assert float(SCHED.eta()[-1]) == pytest.approx(SCHED.eta_T, rel=1e-15)


@pytest.mark.parametrize("bad", [dict(steps=1), dict(eta_1=0.5, eta_T=0.4), dict(kappa=0.0)])
def test_schedule_refuses(bad: dict) -> None:
    with pytest.raises(ConfigError):
        ResShiftSchedule(**bad)


def test_marginal_composes_transitions(rng: torch.Generator) -> None:
    """Composing q(x_t | x_{t−1}, y) = N(x_{t−1} + α_t e0, κ² α_t I) (Eq. 1) from x0 gives Eq. 2:
    means and variances add; the sums telescope, so float64 agrees to ~T·1e-16."""
    x0 = torch.randn(1, 2, 3, 5, generator=rng, dtype=torch.float64)
    y = torch.randn(1, 2, 3, 5, generator=rng, dtype=torch.float64)
    eta = SCHED.eta()
    mean, var = x0.clone(), 0.0
    for t in range(1, SCHED.steps + 1):
        a_t = float(eta[t - 1] - (eta[t - 2] if t > 1 else 0.0))
        mean, var = mean + a_t * (y - x0), var + SCHED.kappa**2 * a_t
        m, v = marginal(SCHED, x0, y, torch.tensor([t]))
        torch.testing.assert_close(m, mean, rtol=0, atol=1e-14)
        assert float(v) == pytest.approx(var, rel=1e-13)


def test_posterior_is_bayes_rule(rng: torch.Generator) -> None:
    """q(x_{t−1} | x_t, x0, y) ∝ q(x_t | x_{t−1}, y) q(x_{t−1} | x0, y): the product of two Gaussians
    in terms of e0 = y − x0; Eq. 5–6 eliminates e0, so agreement checks that algebra (float64)."""
    x0, y, x_t = (torch.randn(4, 1, 3, 3, generator=rng, dtype=torch.float64) for _ in range(3))
    eta, k2 = SCHED.eta(), SCHED.kappa**2
    for t in range(2, SCHED.steps + 1):
        e_prev, a_t = float(eta[t - 2]), float(eta[t - 1] - eta[t - 2])
        v1, v2 = k2 * e_prev, k2 * a_t
        m1, obs = x0 + e_prev * (y - x0), x_t - a_t * (y - x0)
        var = 1 / (1 / v1 + 1 / v2)
        mean, v = posterior(SCHED, x_t, x0, torch.full((4,), t))
        torch.testing.assert_close(mean, var * (m1 / v1 + obs / v2), rtol=0, atol=1e-12)
        torch.testing.assert_close(v, torch.full_like(v, var), rtol=1e-13, atol=0)
    mean, v = posterior(SCHED, x_t, x0, torch.full((4,), 1))
    assert torch.equal(mean, x0) and bool((v == 0).all())


@dataclass
class Oracle:
    """A perfect x0-predictor that records what it is called with."""

    x0: Tensor
    schedule: ResShiftSchedule
    shape: tuple[int, int]
    factor: int

    def __post_init__(self) -> None:
        self.calls: list[tuple[Tensor, Tensor, int]] = []

    def __call__(self, x_t: Tensor, y: Tensor, t: Tensor) -> Tensor:
        self.calls.append((x_t.clone(), y.clone(), int(t[0])))
        return self.x0.expand_as(x_t)


def test_oracle_sampling(rng: torch.Generator) -> None:
    """With f = x0: x_T = y + κ√η_T ε (same ε stream), every visited x_t follows q(x_t | x0, y)
    (standardised draws: 2000 members × 20 pixels, mean within 5 SE = 0.025 of 0 and variance within
    5 SE = 0.05 of 1; the seeds are fixed), and the last step returns x0 exactly (η_0 = 0)."""
    x0 = torch.randn(1, 1, 4, 5, generator=rng, dtype=torch.float64)
    coarse = torch.randn(1, 1, 2, 3, generator=rng, dtype=torch.float64)
    oracle = Oracle(x0, SCHED, (4, 5), 2)
    seeds = list(range(100, 2100))
    out = sample_resshift(oracle, coarse, PerSampleNoise(seeds))
    assert torch.equal(out, x0.expand_as(out))
    y = upsample(coarse, (4, 5), 2)
    eps = PerSampleNoise(seeds).randn((1, 4, 5), torch.float64)
    x_T, y_seen, t_first = oracle.calls[0]
    assert t_first == SCHED.steps and torch.equal(y_seen, y.expand_as(y_seen))
    torch.testing.assert_close(x_T, y + SCHED.kappa * math.sqrt(SCHED.eta_T) * eps, rtol=0, atol=1e-14)
    assert [c[2] for c in oracle.calls] == list(range(SCHED.steps, 0, -1))
    for x_t, _, t in oracle.calls:
        mean, var = marginal(SCHED, x0, y, torch.tensor([t]))
        z = (x_t - mean) / var.sqrt()
        assert abs(float(z.mean())) < 0.025, t
        assert abs(float(z.var()) - 1) < 0.05, t


def test_upsample_puts_cells_at_block_centres() -> None:
    """Coarse cell i covers fine rows f i … min(f i + f, H) − 1 and sits at their centre: block values
    p(centre) of a cubic p(row) + q(col) come back as p(row) + q(col) on every fine cell (the cubic
    spline reproduces cubics, extrapolation included, up to scipy's iterative spline solve, ~1e-5 of
    values up to ~15: 5e-4; a centre off by half a cell errs by ≥ 0.1).
    33 × 50 at f = 4: both last blocks are partial (centres 32 and 48.5)."""
    f, h, w = 4, 33, 50

    def p(r):
        return 1e-3 * (r - 16) ** 3 - 0.01 * r**2 + 0.5 * r

    def q(c):
        return -2e-4 * (c - 20) ** 3 + 0.3 * c

    def centres(n: int) -> torch.Tensor:
        return torch.tensor([(i + min(i + f, n) - 1) / 2 for i in range(0, n, f)], dtype=torch.float64)

    rc, cc = centres(h), centres(w)
    assert rc[-1] == 32 and cc[-1] == 48.5
    coarse = (p(rc)[:, None] + q(cc)[None, :]).reshape(1, 1, 9, 13)
    up = upsample(coarse, (h, w), f)
    rows, cols = torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64)
    expected = (p(rows)[:, None] + q(cols)[None, :]).reshape(1, 1, h, w)
    assert up.dtype == torch.float64
    torch.testing.assert_close(up, expected, rtol=0, atol=5e-4)
    with pytest.raises(ConfigError):
        upsample(coarse, (h, w), 3)


def test_checkpoint_round_trip_and_batch_independence(tmp_path, rng: torch.Generator) -> None:
    """A few training steps, save, load: identical weights give bitwise-identical samples, and a
    member's sample does not depend on the other members of its batch (up to float32 rounding of
    batched convolutions, ~1e-7 per layer, carried through 3 steps: 1e-5)."""
    torch.set_num_threads(1)
    fine = torch.randn(6, 1, 5, 7, generator=rng)
    coarse = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(fine, (0, 1, 0, 1)), 2)
    sched = ResShiftSchedule(steps=3)
    net = dict(widths=(8, 8), norm_groups=4)
    model, log = train_resshift(fine, coarse, 2, sched, net, steps=3, batch_size=4, seed=1)
    assert len(log) == 2 and all(math.isfinite(v) for _, v, _ in log)
    save_resshift(tmp_path / "rs", model, log, {"data": "random"})
    loaded = load_resshift(tmp_path / "rs")
    a = sample_resshift(model, coarse[:1], PerSampleNoise([5, 6, 7]))
    b = sample_resshift(loaded, coarse[:1], PerSampleNoise([5, 6, 7]))
    assert torch.equal(a, b)
    c = sample_resshift(loaded, coarse[:1], PerSampleNoise([6]))
    torch.testing.assert_close(c[0], b[1], rtol=0, atol=1e-5)
