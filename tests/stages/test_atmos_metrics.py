"""Atmospheric ensemble metrics against hand computations and closed forms."""

import math

import numpy as np
import pytest

from diffinv.errors import ConfigError
from diffinv.stages.atmos.figures import (
    infer_factor,
    plot_maps,
    plot_rank_histogram,
    plot_spectra,
    plot_spread_skill,
)
from diffinv.stages.atmos.metrics import (
    binned_spread_skill,
    error_by_distance,
    field_metrics,
    radial_power_spectrum,
    station_metrics,
)
from diffinv.uncertainty import crps_ensemble


def test_two_member_ensemble_scores_by_hand():
    """Members {0, 2} against truth 3 and 1 (one channel, two pixels).

    Mean 1, errors −2 and 0: RMSE √2, MAE 1, bias −1. Fair CRPS = mean|x − y| − |0 − 2|/2:
    2 − 1 = 1 and 1 − 1 = 0, mean 0.5. Spread √2 (sample variance 2), spread-skill
    √(3/2)·√2/√2. The 90 % interval [0.1, 1.9] holds 1, not 3: coverage 0.5.
    """
    members = np.array([[0.0, 0.0], [2.0, 2.0]]).reshape(2, 1, 1, 2)
    truth = np.array([3.0, 1.0]).reshape(1, 1, 2)
    row = field_metrics(members, truth, ["t850"]).iloc[0]
    assert row["channel"] == "t850"
    expected = {"rmse": math.sqrt(2), "mae": 1.0, "bias": -1.0, "crps": 0.5, "spread": math.sqrt(2)}
    expected |= {"spread_skill": math.sqrt(1.5), "cov90": 0.5}
    for name, value in expected.items():
        assert row[name] == pytest.approx(value, abs=1e-14), name


def test_calibrated_gaussian_ensemble_scores_its_closed_forms():
    """Truth and M = 21 members iid N(μ, σ_c²) at 64² points per channel (σ = 1 and 5 in
    different units). Tolerances are 4.5 standard errors over N = 4096 points:

    - spread-skill 1 (RMSE² of the mean has relative std √(2/N), so the ratio ≈ 1/√(2N) = 0.011);
    - RMSE σ√(1 + 1/M), bias 0 (std σ√(1 + 1/M)/√N);
    - 90 % coverage of the interval between the 2nd and 20th of 21 order statistics
      (np.quantile at 0.05·20 and 0.95·20) is exactly (20 − 2)/22 = 9/11 for exchangeable
      draws (binomial std 0.006);
    - mean CRPS σ/√π (E|X − Y| − E|X − X'|/2 = 2σ/√π − σ/√π), standard error measured.
    """
    m, n = 21, 64
    sigma = np.array([1.0, 5.0])
    gen = np.random.default_rng(7)
    mu = gen.normal(size=(2, n, n)) * 10
    draws = mu + sigma[:, None, None] * gen.normal(size=(m + 1, 2, n, n))
    members, truth = draws[:m], draws[m]
    table = field_metrics(members, truth, ["a", "b"]).set_index("channel")
    big_n = n * n
    for c, name in enumerate("ab"):
        row = table.loc[name]
        rmse = sigma[c] * math.sqrt(1 + 1 / m)
        assert row["spread_skill"] == pytest.approx(1.0, abs=4.5 / math.sqrt(2 * big_n))
        assert row["rmse"] == pytest.approx(rmse, rel=4.5 / math.sqrt(2 * big_n))
        assert abs(row["bias"]) < 4.5 * rmse / math.sqrt(big_n)
        assert row["cov90"] == pytest.approx(9 / 11, abs=4.5 * math.sqrt(9 / 11 * 2 / 11 / big_n))
        per_point = crps_ensemble(members[:, c], truth[c])
        se = per_point.std() / math.sqrt(big_n)
        assert row["crps"] == pytest.approx(sigma[c] / math.sqrt(math.pi), abs=4.5 * se)


def test_pooled_row_only_in_normalised_units():
    """Channel b is channel a in units 10× smaller: divided by scales (1, 10) they are the same
    ensemble, so the pooled row equals channel a's scores."""
    gen = np.random.default_rng(3)
    a = gen.normal(size=(5, 1, 6, 7))
    truth_a = gen.normal(size=(1, 6, 7))
    members, truth = np.concatenate([a, 10 * a], 1), np.concatenate([truth_a, 10 * truth_a])
    assert list(field_metrics(members, truth, ["a", "b"])["channel"]) == ["a", "b"]
    table = field_metrics(members, truth, ["a", "b"], scales=[1.0, 10.0]).set_index("channel")
    assert np.allclose(table.loc["all"].to_numpy(float), table.loc["a"].to_numpy(float), rtol=1e-12)
    assert table.loc["b", "rmse"] == pytest.approx(10 * table.loc["a", "rmse"], rel=1e-12)
    with pytest.raises(ConfigError, match="1 names for 2 channels"):
        field_metrics(members, truth, ["a"])


def test_station_metrics_leave_out_missing_entries():
    """Members {0, 2} and {1, 1}; soundings 3, NaN, 1, with one member missing at the 4th entry.

    Scored: (0,2) vs 3, (0,2) vs 1, (1,1) vs 1. Ensemble-mean errors −2, 0, 0: RMSE √(4/3),
    bias −2/3. CRPS 1, 0, 0 (a point ensemble at its truth): mean 1/3. Spread √((2+2+0)/3)."""
    members = np.array([[[0.0, 0.0], [0.0, 1.0]], [[2.0, 0.0], [2.0, 1.0]]])
    members[1, 0, 1] = np.nan  # (M, S, K) = (2, 2, 2)
    observed = np.array([[3.0, 5.0], [1.0, 1.0]])
    observed[0, 1] = np.nan
    out = station_metrics(members, observed)
    assert out["count"] == 3
    assert out["rmse"] == pytest.approx(math.sqrt(4 / 3), abs=1e-14)
    assert out["bias"] == pytest.approx(-2 / 3, abs=1e-14)
    assert out["crps"] == pytest.approx(1 / 3, abs=1e-14)
    assert out["spread"] == pytest.approx(math.sqrt(4 / 3), abs=1e-14)
    assert out["spread_skill"] == pytest.approx(math.sqrt(1.5), abs=1e-14)
    empty = station_metrics(members, np.full((2, 2), np.nan))
    assert empty["count"] == 0 and math.isnan(empty["rmse"])


def test_error_by_distance_on_a_constructed_field():
    """Distance = 100 km × column (0-500 km); errors ±1 below 200 km, ±3 beyond; one NaN.
    Column 5 (500 km) lies beyond the last edge; bin [450, 480) is empty."""
    distance = np.broadcast_to(100.0 * np.arange(6), (4, 6))
    error = np.where(distance < 200, 1.0, 3.0) * np.where(np.arange(4)[:, None] % 2, 1, -1)
    error = np.stack([error, error])  # a leading (time) axis, pooled
    error[0, 0, 0] = np.nan
    table = error_by_distance(error, distance, [0, 200, 400, 450, 480])
    assert list(table["count"]) == [15, 16, 8, 0]
    assert list(table["rmse"][:3]) == [1.0, 3.0, 3.0] and math.isnan(table["rmse"][3])
    assert list(table["lower_km"]) == [0, 200, 400, 450] and list(table["upper_km"]) == [200, 400, 450, 480]
    with pytest.raises(ConfigError, match="must increase strictly"):
        error_by_distance(error, distance, [0, 200, 200])


@pytest.mark.parametrize("window", [None, "hann"])
def test_power_spectrum_obeys_parseval(window):
    gen = np.random.default_rng(1)
    field = gen.normal(size=(2, 3, 33, 49)) + 4.0
    k, power = radial_power_spectrum(field, window=window)
    taper = np.outer(np.hanning(33), np.hanning(49)) if window else np.ones((33, 49))
    centred = field - field.mean((-2, -1), keepdims=True)
    variance = (centred * taper).var(axis=(-2, -1)).mean() / np.mean(taper**2)
    assert power.sum() == pytest.approx(variance, rel=1e-12)
    assert k[0] == pytest.approx(1 / 33) and np.allclose(np.diff(k), 1 / 33)


@pytest.mark.parametrize("window", [None, "hann"])
def test_power_spectrum_of_a_sinusoid_peaks_at_its_wavenumber(window):
    """sin(2π·5x/64) along x (and constant in y): 5 cycles over the domain, variance ½ in bin 5."""
    x = np.arange(64)
    field = np.broadcast_to(np.sin(2 * np.pi * 5 * x / 64), (64, 64))
    k, power = radial_power_spectrum(field, dx_km=25.0, window=window)
    assert int(np.argmax(power)) == 4 and k[4] == pytest.approx(5 / (64 * 25.0))
    if window is None:
        assert power[4] == pytest.approx(0.5, abs=1e-14)
        assert np.delete(power, 4).max() < 1e-28


def test_binned_spread_skill_on_constructed_groups():
    """Spread 1 on 50 points with errors ±1, spread 2 on 50 points with errors 1 and −3 alternating:
    the median edge 1.5 splits them; bin RMSEs 1 and √5; with M = 4 the spread is corrected
    by √(5/4). Equal spreads cannot be split: 4 quantile bins of two values give 2 bins."""
    spread = np.r_[np.ones(50), 2 * np.ones(50)]
    error = np.r_[np.tile([1.0, -1.0], 25), np.tile([1.0, -3.0], 25)]
    table = binned_spread_skill(spread, error, bins=2)
    assert list(table["count"]) == [50, 50]
    assert np.allclose(table["spread"], [1.0, 2.0]) and np.allclose(table["rmse"], [1.0, math.sqrt(5)])
    corrected = binned_spread_skill(np.r_[spread, np.nan], np.r_[error, 0.0], bins=2, members=4)
    assert np.allclose(corrected["spread"], [math.sqrt(5 / 4), 2 * math.sqrt(5 / 4)])
    assert list(corrected["count"]) == [50, 50]
    assert list(binned_spread_skill(spread, error, bins=4)["count"]) == [50, 50]


def test_coarse_factor_is_inferred_only_when_unique():
    assert infer_factor((31, 41), (8, 11)) == 4
    with pytest.raises(ConfigError, match=r"fit factors \[7, 8\] \(fix: pass factor=\)"):
        infer_factor((33, 49), (5, 7))  # ⌈33/7⌉ = ⌈33/8⌉ = 5 and ⌈49/7⌉ = ⌈49/8⌉ = 7


def test_figures_are_written(tmp_path):
    gen = np.random.default_rng(2)
    lat, lon = np.linspace(35.0, 65.0, 31), np.linspace(-15.0, 25.0, 41)
    truth = np.add.outer(lat, 0.1 * lon)
    members = truth + gen.normal(size=(6, 31, 41))
    coarse = truth[::4, ::4]
    k, power = radial_power_spectrum(truth)
    paths = [
        plot_maps(
            lat,
            lon,
            truth,
            coarse,
            members.mean(0),
            members.std(0, ddof=1),
            np.array([40.0, 50.0]),
            np.array([0.0, 10.0]),
            np.array([False, True]),
            "t850",
            tmp_path / "maps.png",
            units="K",
        ),
        plot_rank_histogram(np.array([3, 5, 4, 6]), "rank", tmp_path / "rank.png"),
        plot_spread_skill(members.std(0, ddof=1), members.mean(0) - truth, tmp_path / "ss.png", members=6),
        plot_spectra(
            k, {"truth": power, "members": radial_power_spectrum(members)[1]}, tmp_path / "spec.png"
        ),
    ]
    for path in paths:
        assert path.stat().st_size > 5000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
