"""Optimal boundary conditions (Ma et al., ICLR 2024): selection on a toy deterministic sampler
whose error is a known function of the start noise, reproducible candidates, round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from diffinv.boundary import BoundarySelection, candidate_noise, load_boundary, save_boundary, select_boundary
from diffinv.errors import ConfigError, InputError

SHAPE = (1, 4, 6)


def toy(target: Tensor, truths: list[Tensor], gains: list[float]):
    """reconstruct(ε, r) = truth_r + c_r (ε − v): RMSE = |c_r| · RMSE(ε − v), minimised by the
    candidate closest to v for every reference."""

    def reconstruct(eps: Tensor, r: int) -> Tensor:
        return truths[r] + gains[r] * (eps.double() - target)

    return reconstruct


def test_selects_the_known_best(rng: torch.Generator) -> None:
    cands = candidate_noise(7, 12, SHAPE).double()
    target = cands[5] + 0.05 * torch.randn(SHAPE, generator=rng, dtype=torch.float64)
    truths = [torch.randn(SHAPE, generator=rng, dtype=torch.float64) for _ in range(3)]
    gains = [0.5, 2.0, -1.0]
    sel = select_boundary(toy(target, truths, gains), truths, 12, SHAPE, seed=7, batch_size=5)
    rmse = (cands - target).pow(2).flatten(1).mean(1).sqrt()
    expected = rmse[:, None].numpy() * np.abs(gains)[None]
    np.testing.assert_allclose(sel.scores, expected, rtol=1e-12)
    assert sel.best == 5 == int(np.argmin(expected.mean(1)))
    assert torch.equal(sel.noise, candidate_noise(7, 12, SHAPE)[5])
    assert sum(row["selected"] for row in sel.table()) == 1 and sel.table()[5]["selected"]


def test_candidates_reproducible(rng: torch.Generator) -> None:
    """Same seed, same candidates; candidate k does not depend on K or the scoring batches."""
    assert torch.equal(candidate_noise(3, 6, SHAPE), candidate_noise(3, 6, SHAPE))
    assert torch.equal(candidate_noise(3, 6, SHAPE)[:4], candidate_noise(3, 4, SHAPE))
    assert not torch.equal(candidate_noise(3, 4, SHAPE), candidate_noise(4, 4, SHAPE))
    truths = [torch.randn(SHAPE, generator=rng, dtype=torch.float64)]
    rec = toy(torch.zeros(SHAPE, dtype=torch.float64), truths, [1.0])
    one = select_boundary(rec, truths, 6, SHAPE, seed=3, metric="mae", batch_size=1)
    six = select_boundary(rec, truths, 6, SHAPE, seed=3, metric="mae", batch_size=6)
    assert np.array_equal(one.scores, six.scores) and one.best == six.best


def test_round_trip_bitwise(tmp_path, rng: torch.Generator) -> None:
    sel = BoundarySelection(
        torch.randn(SHAPE, generator=rng), np.random.default_rng(0).random((4, 3)), 2, "rmse", 11, {"k": "v"}
    )
    back = load_boundary(save_boundary(tmp_path / "obc", sel))
    assert torch.equal(back.noise, sel.noise) and back.noise.dtype == sel.noise.dtype
    assert np.array_equal(back.scores, sel.scores)
    assert (back.best, back.metric, back.seed, dict(back.record)) == (2, "rmse", 11, {"k": "v"})


def test_refusals(tmp_path) -> None:
    truths = [torch.zeros(SHAPE)]
    with pytest.raises(ConfigError, match="metric"):
        select_boundary(lambda e, r: e, truths, 2, SHAPE, seed=0, metric="psnr")
    with pytest.raises(ConfigError, match="shape"):
        select_boundary(lambda e, r: e, [torch.zeros(1, 4, 5)], 2, SHAPE, seed=0)
    with pytest.raises(InputError, match="missing"):
        load_boundary(tmp_path)
