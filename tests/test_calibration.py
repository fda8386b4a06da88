"""Split conformal calibration and the uncertainty diagnostics, checked on values."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy.stats import norm

from diffinv.calibration import (
    calibrate,
    calibrate_stores,
    central_interval,
    conformal_quantile,
    coverage_and_width,
)
from diffinv.errors import InputError
from diffinv.io.store import open_zarr, write_zarr
from diffinv.uncertainty import (
    coverage_breakdown,
    crps_ensemble,
    object_support,
    rank_histogram,
    spread_skill,
)


def too_narrow(rng: np.random.Generator, cases: int, samples: int = 32, shape=(16, 16), complex_=False):
    """Truth ~ N(mu, 1) per pixel; samples ~ N(mu, 0.5²): a posterior half as wide as it should be."""

    def draw(size):
        x = rng.normal(size=size)
        return x + 1j * rng.normal(size=size) if complex_ else x

    mu = 3 * draw((cases, *shape))
    truth = mu + draw((cases, *shape))
    return mu[:, None] + 0.5 * draw((cases, samples, *shape)), truth


def test_conformal_quantile_is_the_ceil_n_plus_one_order_statistic():
    scores = np.random.default_rng(0).permutation(np.arange(1.0, 101.0))  # 1..100
    lam, q = conformal_quantile(scores, 0.1)
    assert lam == 91.0 and q == pytest.approx(0.91)  # ceil(101 * 0.9) = 91
    lam, q = conformal_quantile(np.arange(1.0, 10.0), 0.05)  # ceil(10 * 0.95) = 10 > 9
    assert math.isinf(lam)


@pytest.mark.parametrize("method", ["scaled", "cqr"])
def test_calibration_brings_a_too_narrow_posterior_to_the_level(method):
    rng = np.random.default_rng(1)
    cal_s, cal_t = too_narrow(rng, 20)
    ev_s, ev_t = too_narrow(rng, 20)
    n = ev_t.size
    raw, _ = coverage_and_width(*central_interval(ev_s, 0.9), ev_t)
    assert raw < 0.7  # ~0.59 for a half-width posterior
    for level in (0.5, 0.9, 0.95):
        rec = calibrate(cal_s, cal_t, level, method)
        cover, _ = coverage_and_width(*rec.bounds(ev_s), ev_t)
        # independent pixels: binomial error of the evaluation fraction, plus the calibration
        # quantile's own spread (same order), and the 1/(n+1) upper slack
        tol = 4 * math.sqrt(2 * level * (1 - level) / n) + 1 / (n + 1)
        assert abs(cover - level) < tol, (level, cover)
        assert rec.calibration_cases == 20 and rec.calibration_pixels == cal_t.size


def test_complex_images_calibrate_as_channels_sharing_lambda(tmp_path):
    rng = np.random.default_rng(2)
    stores = []
    for name, first in (("cal", 0), ("eval", 30)):
        samples, truth = too_narrow(rng, 30, samples=16, complex_=True)
        ds = xr.Dataset(
            {
                "samples": (("case", "sample", "y", "x"), samples.astype(np.complex64)),
                "truth": (("case", "y", "x"), truth.astype(np.complex64)),
            },
            coords={"case": [f"f:{first + i}" for i in range(30)]},
            attrs={"method": "m-g", "acceleration": 4},
        )
        stores.append(write_zarr(ds, tmp_path / f"{name}.zarr"))
    rec, table = calibrate_stores(*stores, tmp_path / "out.zarr", tmp_path / "cal.csv", level=0.9)
    out = open_zarr(tmp_path / "out.zarr")
    assert out["lower"].dims == ("case", "y", "x", "channel")
    assert list(out["channel"].values) == ["real", "imag"]
    assert rec.calibration_pixels == 30 * 2 * 16 * 16
    primary = table[table["primary"]].iloc[0]
    assert primary["coverage_raw"] < 0.7 and abs(primary["coverage_calibrated"] - 0.9) < 0.02
    assert primary["width_calibrated"] > primary["width_raw"]
    assert json.loads(out.attrs["calibration"])["lam"] == pytest.approx(rec.lam)
    assert sorted(table["level"]) == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]


def _store(path, samples, truth, first):
    ds = xr.Dataset(
        {
            "samples": (("volume", "sample", "z", "y", "x"), samples.astype(np.float32)),
            "reference": (("volume", "z", "y", "x"), truth.astype(np.float32)),
        },
        coords={"volume": [f"v{first + i}" for i in range(samples.shape[0])]},
        attrs={"method": "fast"},
    )
    return write_zarr(ds, path)


def test_lambda_uses_only_calibration_cases(tmp_path):
    """Poisoning the evaluation truth changes the evaluated coverage, never λ (3D, real, 'reference')."""
    rng = np.random.default_rng(3)
    cal = _store(tmp_path / "cal.zarr", *too_narrow(rng, 6, 8, (4, 8, 8)), 0)
    ev_s, ev_t = too_narrow(rng, 3, 8, (4, 8, 8))
    clean = _store(tmp_path / "clean.zarr", ev_s, ev_t, 6)
    poisoned = _store(tmp_path / "poisoned.zarr", ev_s, ev_t + 100.0, 6)
    a, ta = calibrate_stores(cal, clean, tmp_path / "a.zarr", tmp_path / "a.csv", level=0.9, method="cqr")
    b, tb = calibrate_stores(cal, poisoned, tmp_path / "b.zarr", tmp_path / "b.csv", level=0.9, method="cqr")
    assert a == b and np.array_equal(ta["lambda"], tb["lambda"])
    assert (tb["coverage_calibrated"] == 0).all() and (ta["coverage_calibrated"] > 0).all()
    with pytest.raises(InputError, match="disjoint"):
        calibrate_stores(cal, cal, tmp_path / "c.zarr", tmp_path / "c.csv")


def test_calibrate_stores_verb_on_volume_stores(tmp_path):
    """``diffinv calibrate-stores`` on 3D CT-like stores (volume, sample, z, y, x; 'reference'): the
    record's λ is that of :func:`calibrate` on the calibration arrays, the written bounds are
    :meth:`Calibration.bounds` of the evaluation samples, and the samples, too narrow by half,
    get λ ≈ 2 (y − m ≈ N(0, 1) against h ≈ 1.645 · 0.5, so the 90 % score quantile ≈ 1.645 / 0.8225)."""
    from diffinv.cli import main

    rng = np.random.default_rng(5)
    cal_s, cal_t = too_narrow(rng, 4, 64, (4, 8, 8))
    ev_s, ev_t = too_narrow(rng, 2, 64, (4, 8, 8))
    cal, ev = _store(tmp_path / "cal.zarr", cal_s, cal_t, 0), _store(tmp_path / "ev.zarr", ev_s, ev_t, 4)
    out, table = tmp_path / "bounds.zarr", tmp_path / "curve.csv"
    argv = ["calibrate-stores", "--calibration", str(cal), "--evaluation", str(ev), "-o", str(out)]
    assert main([*argv, "--table", str(table)]) == 0
    rec = json.loads(open_zarr(out).attrs["calibration"])
    expected = calibrate(cal_s.astype(np.float32), cal_t.astype(np.float32), 0.9)
    assert rec["lam"] == pytest.approx(expected.lam, rel=1e-6) and 1.8 < rec["lam"] < 2.3
    lo, hi = expected.bounds(ev_s.astype(np.float32))
    np.testing.assert_allclose(open_zarr(out)["lower"].values, lo, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(open_zarr(out)["upper"].values, hi, rtol=1e-5, atol=1e-5)
    row = pd.read_csv(table).query("primary").iloc[0]
    assert row["coverage_raw"] < 0.7 and 0.85 < row["coverage_calibrated"] < 0.95


def test_coverage_breakdown_on_a_constructed_image():
    """Object: a 4x4 block of 1 in an 8x8 image of 0, one corner at 0.05 (under the 10 %
    threshold: background); samples truth + k·0.01·(1+i), k = -2..2. The object is covered
    at every level; of the background the zeros never (sampled magnitudes > 0: the Rician
    floor), the 0.05 pixel always (magnitudes 0.036..0.073); the complex channels always."""
    truth = np.zeros((8, 8), complex)
    truth[2:6, 2:6] = 1.0
    truth[2, 2] = 0.05
    support = object_support(truth)
    assert support.sum() == 15 and support[2:6, 2:6].sum() == 15 and not support[2, 2]
    assert object_support(truth, dilation=1).sum() == 35  # the 6x6 block less its corner (1, 1)
    k = np.arange(-2, 3).reshape(5, 1, 1)
    samples = truth + 0.01 * k * (1 + 1j)
    out = coverage_breakdown(samples, truth, (0.5, 0.9))
    assert out["support_fraction"] == 15 / 64
    for level in (50, 90):
        assert out[f"coverage_object_{level}"] == 1.0
        assert out[f"coverage_background_{level}"] == 1 / 49
        assert out[f"coverage_{level}"] == 16 / 64
        assert out[f"coverage_complex_{level}"] == 1.0


def test_crps_matches_the_gaussian_closed_form():
    rng = np.random.default_rng(4)
    sigma, y = 2.0, np.linspace(-3, 3, 61)
    samples = sigma * rng.normal(size=(20000, 1))  # one ensemble against every y
    z = y / sigma
    exact = sigma * (z * (2 * norm.cdf(z) - 1) + 2 * norm.pdf(z) - 1 / math.sqrt(math.pi))
    assert crps_ensemble(samples, y) == pytest.approx(exact, rel=0.02)
    small = rng.normal(size=(5, 3))  # the sorted-sum form equals the double sum
    brute = np.abs(small - 0.3).mean(0) - np.abs(small[:, None] - small[None]).sum((0, 1)) / (2 * 5 * 4)
    np.testing.assert_allclose(crps_ensemble(small, 0.3), brute)


def test_spread_skill_and_rank_histogram_of_a_calibrated_ensemble():
    rng = np.random.default_rng(5)
    mu = rng.normal(size=(20000,))
    truth = mu + rng.normal(size=mu.shape)
    samples = mu + rng.normal(size=(9, *mu.shape))
    assert spread_skill(samples, truth) == pytest.approx(1.0, abs=0.03)
    assert spread_skill(mu + 0.5 * rng.normal(size=(9, *mu.shape)), truth) < 0.6
    counts = rank_histogram(samples, truth)
    assert counts.size == 10 and np.abs(counts / counts.sum() - 0.1).max() < 0.01


def test_summary_joins_the_calibration_columns_on_the_posterior_rows(tmp_path):
    from diffinv.stages.evaluate import summarise

    metrics = tmp_path / "metrics.csv"
    pd.DataFrame(
        [
            {"case": c, "method": "a-b", "acceleration": 4, "reconstruction": r, "note": "", "psnr": 30.0}
            for c in ("s:0", "s:1")
            for r in ("posterior_mean", "zero_filled")
        ]
    ).to_csv(metrics, index=False)
    cal = tmp_path / "calibration.csv"
    pd.DataFrame(
        [
            {"method": "a-b", "acceleration": 4, "level": lvl, "primary": lvl == 0.9}
            | {"calibration_method": "scaled", "lambda": 2.0 + lvl, "calibration_cases": 8}
            | {"coverage_raw": 0.5, "coverage_calibrated": lvl, "width_raw": 1.0, "width_calibrated": 2.0}
            for lvl in (0.5, 0.9)
        ]
    ).to_csv(cal, index=False)
    summary = summarise([metrics], tmp_path / "summary.csv", [cal]).set_index("reconstruction")
    assert summary.loc["posterior_mean", "calibration_lambda"] == 2.9
    assert summary.loc["posterior_mean", "coverage_complex_calibrated"] == 0.9
    assert np.isnan(summary.loc["zero_filled", "calibration_lambda"])
