"""Ensemble calibration of atmos posteriors: spread inflation and conformal intervals on Gaussian
ensembles whose under-/over-dispersion is known in closed form.

Model: per point a posterior centre μ, the truth y = μ + s e and M members μ + d s z_j (e, z
standard normal). The ensemble mean's error has E[err²] = s² (1 + d²/M), the member variance
(ddof 1) E[var] = d² s², so the corrected spread-skill ratio is √((M+1)/M) d / √(1 + d²/M) and
the inflation that calibrates it is k* = √((M + d²) / ((M+1) d²)) (1 for d = 1).
Tolerances: k̂² is a ratio of two means over N points whose relative standard deviations are
√(2/N) (error², Gaussian) and √(2/((M−1)N)) (χ²_{M−1} variances), so k̂ has relative standard
deviation ½√(2/N + 2/((M−1)N)); the bounds below are five of those.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from diffinv.cli import main
from diffinv.errors import ConfigError, InputError
from diffinv.io.store import provenance, set_provenance, write_zarr
from diffinv.stages.atmos.calibrate import calibrate_stores, fit, inflate, inflation_factor
from diffinv.stages.atmos.data import calibration_times
from diffinv.uncertainty import spread_skill

M = 8


def k_star(d: float, m: int = M) -> float:
    """The closed-form inflation of an ensemble with dispersion factor ``d``."""
    return float(np.sqrt((m + d**2) / ((m + 1) * d**2)))


def rel_sd(n: int, m: int = M) -> float:
    """Relative standard deviation of k̂ over ``n`` points (module docstring)."""
    return 0.5 * float(np.sqrt(2 / n + 2 / ((m - 1) * n)))


def gaussian_ensemble(rng: np.random.Generator, shape: tuple[int, ...], d: float, s: float = 0.7):
    """(members (M, *shape), truth (*shape)) of the module's model."""
    mu = 3.0 * rng.standard_normal(shape)
    truth = mu + s * rng.standard_normal(shape)
    return mu + d * s * rng.standard_normal((M, *shape)), truth


@pytest.mark.parametrize("d", [0.5, 1.0, 1.6])
def test_inflation_recovers_the_known_dispersion(d: float) -> None:
    n = 200_000
    members, truth = gaussian_ensemble(np.random.default_rng(1), (n,), d)
    k = inflation_factor(members, truth)
    assert abs(k / k_star(d) - 1) < 5 * rel_sd(n)


def test_inflated_ensemble_is_calibrated_exactly_and_keeps_its_mean() -> None:
    members, truth = gaussian_ensemble(np.random.default_rng(2), (5000,), 0.4)
    k = inflation_factor(members, truth)
    out = inflate(members, k)
    assert spread_skill(out, truth) == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(out.mean(0), members.mean(0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(out - out.mean(0), k * (members - members.mean(0)), rtol=0, atol=1e-12)


def test_fit_on_one_draw_calibrates_another() -> None:
    """k and λ from calibration times make an independent draw's spread-skill 1 and its conformal
    90 % intervals cover 90 % (binomial σ = √(0.09/N) per draw; two independent draws)."""
    rng = np.random.default_rng(3)
    shape = (4, 1, 100, 100)  # (T, C, H, W)
    n = int(np.prod(shape))
    (cal, cal_truth), (ev, ev_truth) = (gaussian_ensemble(rng, shape, 0.5) for _ in range(2))
    (rec,) = fit(np.moveaxis(cal, 0, 1), cal_truth, ["t2m"], 0.9)
    assert abs(rec.inflation / k_star(0.5) - 1) < 5 * rel_sd(n)
    inflated, lo, hi = rec.apply(np.moveaxis(ev, 0, 1)[:, :, 0])
    assert abs(spread_skill(inflated, ev_truth[:, 0], axis=1) - 1) < 5 * np.sqrt(2) * rel_sd(n)
    coverage = float(((ev_truth[:, 0] >= lo) & (ev_truth[:, 0] <= hi)).mean())
    assert abs(coverage - 0.9) < 5 * np.sqrt(2 * 0.09 / n)


LEVELS = (850.0, 500.0)


def store(path: Path, rng: np.random.Generator, start: str, dispersion: dict[str, float]) -> Path:
    """An atmos store (t on two levels, t2m) of 4 times whose channels have the given dispersion."""
    times = np.datetime64(start) + np.arange(4) * np.timedelta64(6, "h")
    shape = (4, 60, 80)
    fields, truths = {}, {}
    for name, d in dispersion.items():
        members, truth = gaussian_ensemble(rng, shape, d)
        fields[name], truths[name] = np.moveaxis(members, 0, 1), truth  # (T, M, H, W)
    grid = ("latitude", "longitude")
    t = np.stack([fields["t850"], fields["t500"]], 2)  # (T, M, level, H, W)
    t_truth = np.stack([truths["t850"], truths["t500"]], 1)
    ds = xr.Dataset(
        {
            "t": (("time", "member", "level", *grid), t.astype(np.float32), {"units": "K"}),
            "t_mean": (("time", "level", *grid), t.mean(1).astype(np.float32)),
            "t_std": (("time", "level", *grid), t.std(1, ddof=1).astype(np.float32)),
            "t_truth": (("time", "level", *grid), t_truth.astype(np.float32)),
            "t2m": (("time", "member", *grid), fields["t2m"].astype(np.float32), {"units": "K"}),
            "t2m_mean": (("time", *grid), fields["t2m"].mean(1).astype(np.float32)),
            "t2m_std": (("time", *grid), fields["t2m"].std(1, ddof=1).astype(np.float32)),
            "t2m_truth": (("time", *grid), truths["t2m"].astype(np.float32)),
        },
        coords={
            "time": times,
            "member": np.arange(M),
            "level": list(LEVELS),
            "latitude": np.linspace(50, 55, 60),
            "longitude": np.linspace(-5, 2, 80),
        },
        attrs={
            "stage": "atmos",
            "method": "sda",
            "channels": json.dumps([["t", 850], ["t", 500], ["t2m", None]]),
        },
    )
    return write_zarr(set_provenance(ds, provenance(step="test")), path)


def test_calibrate_stores_per_channel(tmp_path: Path) -> None:
    """Each channel gets its own k (under-, nearly and over-dispersed channels); the mean and its
    RMSE are untouched; the written store holds the inflated members and the conformal bounds."""
    rng = np.random.default_rng(4)
    dispersion = {"t850": 0.5, "t500": 0.9, "t2m": 1.6}
    cal = store(tmp_path / "cal.zarr", rng, "2019-03-21T00", dispersion)
    ev = store(tmp_path / "ev.zarr", rng, "2019-03-22T00", dispersion)
    table = calibrate_stores(cal, ev, tmp_path / "out.zarr", tmp_path / "out.csv")
    n = 4 * 60 * 80
    raw, after = table[table.ensemble == "raw"], table[table.ensemble == "calibrated"]
    for (_, r), (_, a), d in zip(raw.iterrows(), after.iterrows(), dispersion.values()):
        assert abs(a["inflation"] / k_star(d) - 1) < 5 * rel_sd(n)
        assert a["rmse"] == pytest.approx(r["rmse"], rel=1e-6)  # float32 store round trip
        assert abs(a["spread_skill"] - 1) < 5 * np.sqrt(2) * rel_sd(n)
        assert abs(a["coverage_conformal"] - 0.9) < 5 * np.sqrt(2 * 0.09 / n)
    out = xr.open_zarr(tmp_path / "out.zarr").load()
    src = xr.open_zarr(ev).load()
    k850 = float(after["inflation"].iloc[0])
    dev = src["t"].sel(level=850.0) - src["t"].sel(level=850.0).mean("member")
    got = out["t"].sel(level=850.0) - out["t"].sel(level=850.0).mean("member")
    np.testing.assert_allclose(got.values, k850 * dev.values, atol=2e-5)
    k2m = float(after["inflation"].iloc[2])
    np.testing.assert_allclose(out["t2m_std"].values, k2m * src["t2m_std"].values, rtol=1e-4)
    np.testing.assert_allclose(out["t2m_mean"].values, src["t2m_mean"].values, rtol=0, atol=0)
    assert (out["t2m_lower"] <= out["t2m_upper"]).all()
    assert out.attrs["method"] == "sda_calibrated"
    assert len(json.loads(out.attrs["calibration"])["channels"]) == 3


def test_overlapping_or_mismatched_stores_are_refused(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(5)
    dispersion = {"t850": 0.5, "t500": 0.5, "t2m": 0.5}
    a = store(tmp_path / "a.zarr", rng, "2019-03-21T00", dispersion)
    b = store(tmp_path / "b.zarr", rng, "2019-03-21T18", dispersion)  # shares 18 UTC
    with pytest.raises(InputError, match="shares 1 time"):
        calibrate_stores(a, b, tmp_path / "o.zarr", tmp_path / "o.csv")
    argv = ["atmos-calibrate", "--calibration", str(a), "--evaluation", str(b)]
    assert main([*argv, "-o", str(tmp_path / "o.zarr"), "--table", str(tmp_path / "o.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "shares 1 time(s)" in err and "disjoint" in err
    c = xr.open_zarr(store(tmp_path / "c.zarr", rng, "2019-03-23T00", dispersion)).load()
    write_zarr(c.isel(member=slice(0, 4)), tmp_path / "c4.zarr")
    with pytest.raises(InputError, match="4 members against 8"):
        calibrate_stores(tmp_path / "c4.zarr", a, tmp_path / "o.zarr", tmp_path / "o.csv")
    assert not (tmp_path / "o.zarr").exists()


@pytest.mark.parametrize(
    ("times", "stride", "expected"),
    [
        ([13, 16], 2, [13, 15]),
        ([16, 20], 1, [16, 17, 18, 19]),
        (["2020-01-01T16", "2020-01-01T19"], 3, [16, 19]),
    ],
)
def test_calibration_times_follow_the_spans(times, stride, expected) -> None:
    hours = np.datetime64("2020-01-01T00") + np.arange(24) * np.timedelta64(1, "h")
    data = {"train": [0, 12], "eval": [12, 16], "eval_stride": 2}
    assert calibration_times(hours, data, {"times": times, "stride": stride}).tolist() == expected


@pytest.mark.parametrize(
    ("times", "stride", "named"), [([13, 15], 1, "evaluated times"), ([10, 13], 2, "atmos.data.train")]
)
def test_calibration_times_sharing_a_time_are_refused(times, stride, named) -> None:
    hours = np.datetime64("2020-01-01T00") + np.arange(24) * np.timedelta64(1, "h")
    data = {"train": [0, 12], "eval": [12, 16], "eval_stride": 2}
    with pytest.raises(ConfigError, match=rf"atmos\.calibration\.times: shares 1 time\(s\) with .*{named}"):
        calibration_times(hours, data, {"times": times, "stride": stride})
