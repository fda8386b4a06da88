"""The atmos stage: normalisation, padding, baselines, observations and a tiny train→sample→evaluate run."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from diffinv.config import validate_config
from diffinv.errors import ConfigError
from diffinv.guidance.gaussian_score import LikelihoodTerm
from diffinv.io.store import open_zarr, write_zarr
from diffinv.operators.atmos import CoarseGrain, StationOperator
from diffinv.operators.base import adjointness_error
from diffinv.stages.atmos.data import (
    Normalisation,
    crop,
    open_fields,
    pad_fields,
    padding,
    split,
    station_sites,
)
from diffinv.stages.atmos.run import WhitenedStack, bicubic, conservative

LAT = np.linspace(50.0, 52.0, 9)
LON = np.linspace(-3.0, -0.5, 11)


def synthetic(times: int = 10) -> xr.Dataset:
    """Smooth fields in the read_era5 schema: t on two levels and single-level t2m."""
    rng = np.random.default_rng(0)
    la, lo = np.meshgrid(LAT, LON, indexing="ij")
    base = np.stack([np.sin(la * 2 + k) + np.cos(lo * 1.5 - k) for k in range(times)])
    t = 270 + 5 * base[:, None] + np.array([0.0, -30.0])[None, :, None, None]
    t = t + 0.1 * rng.standard_normal(t.shape)
    t2m = 280 + 3 * base + 0.1 * rng.standard_normal(base.shape)
    coords = {
        "time": np.datetime64("2020-01-01T00") + np.arange(times) * np.timedelta64(6, "h"),
        "level": [850.0, 500.0],
        "latitude": LAT,
        "longitude": LON,
    }
    return xr.Dataset(
        {
            "t": (
                ("time", "level", "latitude", "longitude"),
                t.astype(np.float32),
                {"units": "K", "long_name": "Temperature", "standard_name": "air_temperature"},
            ),
            "t2m": (
                ("time", "latitude", "longitude"),
                t2m.astype(np.float32),
                {"units": "K", "long_name": "2 metre temperature"},
            ),
        },
        coords=coords,
    )


DATA = {"variables": ["t", "t2m"], "levels": [850, 500], "train": [0, 8], "eval": [8, 10], "eval_stride": 1}


def test_normalisation_round_trip_and_training_statistics() -> None:
    fields = open_fields(synthetic(), DATA)
    assert [c.name for c in fields.channels] == ["t850", "t500", "t2m"]
    train, evaluation = split(fields.times, DATA)
    norm = Normalisation.of(fields, train)
    # the mean/std of variable t are over its two levels and the training times only
    t = fields.values[:8, :2].astype(np.float64)
    assert norm.mean["t"] == pytest.approx(t.mean(), rel=1e-12)
    assert norm.std["t"] == pytest.approx(t.std(), rel=1e-12)
    x = fields.values[evaluation].astype(np.float64)
    back = norm.to_data(norm.to_prior(x, fields.channels), fields.channels)
    np.testing.assert_allclose(back, x, rtol=0, atol=1e-10)
    xn = norm.to_prior(fields.values[train].astype(np.float64), fields.channels)
    assert xn[:, 2].mean() == pytest.approx(0.0, abs=1e-10) and xn[:, 2].std() == pytest.approx(
        1.0, rel=1e-10
    )


def test_split_by_dates_and_overlap_refused() -> None:
    times = synthetic()["time"].values
    tr, ev = split(times, {"train": ["2020-01-01", "2020-01-02"], "eval": [8, 10], "eval_stride": 2})
    assert tr.tolist() == list(range(8)) and ev.tolist() == [8]
    with pytest.raises(ConfigError, match="atmos.data.eval"):
        split(times, {"train": [0, 9], "eval": [8, 10]})


def test_padding_is_cropped_back_exactly_and_periodic_wraps() -> None:
    x = torch.randn(2, 3, 33, 49, dtype=torch.float64)
    pad = padding((33, 49), 4)
    assert pad == (1, 2, 1, 2)
    padded = pad_fields(x, pad, periodic=True)
    assert padded.shape[-2:] == (36, 52)
    assert torch.equal(crop(padded, pad), x)
    assert torch.equal(padded[..., 1:-2, 0], x[..., -1])  # longitude wraps around the globe
    assert torch.equal(pad_fields(x, pad, periodic=False)[..., 1:-2, 0], x[..., 1])  # reflect


def test_wrong_variable_is_a_one_line_config_error() -> None:
    with pytest.raises(ConfigError) as exc:
        open_fields(synthetic(), {**DATA, "variables": ["tt"]})
    assert "atmos.data.variables" in str(exc.value) and "\n" not in str(exc.value)


def test_baselines_closed_form() -> None:
    shape, f = (33, 49), 4
    rows, cols = np.meshgrid(np.arange(33.0), np.arange(49.0), indexing="ij")
    plane = (0.3 * rows - 0.2 * cols + 1.0)[None]
    op = CoarseGrain(shape, f)
    coarse = op.A(torch.from_numpy(plane)[None])[0].numpy()
    # block means of a plane are its values at the block centres, and cubic interpolation
    # reproduces a plane exactly (also beyond the outer centres)
    np.testing.assert_allclose(bicubic(coarse, shape, f), plane, atol=1e-4)
    # piecewise-constant: block-averaging it returns the coarse field exactly
    pc = conservative(coarse, shape, f)
    np.testing.assert_allclose(
        op.A(torch.from_numpy(pc.astype(np.float64))[None])[0].numpy(), coarse, atol=1e-12
    )
    assert pc[0, 5, 9] == coarse[0, 1, 2]


def test_station_sites_fixed_and_held_out() -> None:
    a = station_sites({"n_random": 6, "held_out": 2}, LAT, LON, seed=3)
    b = station_sites({"n_random": 6, "held_out": 2}, LAT, LON, seed=3)
    np.testing.assert_array_equal(a.latitude, b.latitude)
    assert a.held_out.tolist() == [False] * 4 + [True] * 2
    assert ((a.latitude >= 50) & (a.latitude <= 52)).all()
    with pytest.raises(ConfigError, match=r"sites\[0\]"):
        station_sites({"sites": [[40.0, 0.0]], "n_random": None}, LAT, LON, seed=0)


def test_whitened_stack_is_adjoint_and_whitens() -> None:
    coarse = CoarseGrain((9, 11), 4)
    stations = StationOperator(LAT, LON, np.array([50.3, 51.7]), np.array([-2.0, -1.1]))
    x = torch.randn(1, 2, 9, 11, dtype=torch.float64)
    terms = [LikelihoodTerm(coarse, coarse.A(x), 0.1, 4.0), LikelihoodTerm(stations, stations.A(x), 0.5, 1.0)]
    stack = WhitenedStack(terms)
    probe = torch.randn(3, 2, 9, 11, dtype=torch.float64)
    assert (
        adjointness_error(stack, probe, torch.randn(3, stack.A(probe).shape[1], dtype=torch.float64)) < 1e-12
    )
    r = stack.whiten() - stack.A(probe[:1])
    expected = sum(t.weight * ((t.y - t.operator.A(probe[:1])) ** 2).sum() / t.noise_std**2 for t in terms)
    assert float((r**2).sum()) == pytest.approx(float(expected), rel=1e-12)


def _config(tmp: Path) -> dict:
    atmos = {
        "enabled": True,
        "data": DATA,
        "prior": {
            "network": {"widths": [8, 16]},
            "clip": None,
            "train": {"steps": 20, "batch_size": 4, "warmup": 2, "flips": False},
        },
        "observations": {
            "coarse": {"factor": 4, "noise_std": 0.05},
            "stations": {"n_random": 5, "held_out": 2, "noise_std": 0.1},
        },
        "sampling": {
            "samples": 2,
            "batch_size": 2,
            "steps": 2,
            "methods": [
                {
                    "name": "sda",
                    "solver": "ddim",
                    "guidance": "gaussian_score",
                    "guidance_options": {"gamma": 0.01},
                }
            ],
        },
    }
    return validate_config({"seed": 0, "atmos": atmos})


def test_stage_train_sample_evaluate(tmp_path: Path) -> None:
    from diffinv.stages import verb_config
    from diffinv.stages.atmos.evaluate import evaluate_store
    from diffinv.stages.atmos.run import SuperResolution, sample, train

    torch.set_num_threads(1)
    store = write_zarr(synthetic(), tmp_path / "era5.zarr")
    cfg = _config(tmp_path)
    train(
        argparse.Namespace(data=str(store), output=str(tmp_path / "prior"), quiet=True),
        verb_config(cfg, "atmos", "train"),
        "cpu",
    )
    out = tmp_path / "posterior.zarr"
    job_cfg = verb_config(cfg, "atmos", "sample", "sda")
    sample(
        argparse.Namespace(data=str(store), prior=str(tmp_path / "prior"), method="sda", output=str(out)),
        job_cfg,
        "cpu",
    )
    ds = open_zarr(out).load()
    assert ds["t"].dims == ("time", "member", "level", "latitude", "longitude")
    assert ds["t2m"].dims == ("time", "member", "latitude", "longitude")
    assert ds["t"].attrs["units"] == "K" and ds["t"].attrs["standard_name"] == "air_temperature"
    assert ds["level"].values.tolist() == [850.0, 500.0]
    np.testing.assert_allclose(ds["t2m_mean"].values, ds["t2m"].values.mean(1), rtol=1e-6)
    fields = open_fields(synthetic(), DATA)
    np.testing.assert_array_equal(ds["t_truth"].values, fields.values[8:10, :2])
    # the coarse input is CoarseGrain(truth) + the case-seeded noise: its residual has the noise's size
    norm = Normalisation.of(fields, np.arange(8))
    op = CoarseGrain((9, 11), 4, latitudes=LAT)
    clean = norm.to_data(
        op.A(torch.from_numpy(norm.to_prior(fields.values[8:10].astype(np.float64), fields.channels))),
        fields.channels,
    )
    noise = (ds["t2m_coarse"].values - clean[:, 2].numpy()) / norm.std["t2m"]
    assert 0.01 < noise.std() < 0.12 and abs(noise.mean()) < 0.05
    # baselines in the store are the closed-form interpolations of the stored coarse input
    np.testing.assert_allclose(
        ds["t_bicubic"].values[0], bicubic(ds["t_coarse"].values[0], (9, 11), 4), atol=1e-4
    )
    np.testing.assert_allclose(
        ds["t2m_conservative"].values[1], conservative(ds["t2m_coarse"].values[1:2], (9, 11), 4)[0], atol=1e-5
    )
    # station values: the truth interpolated at the sites plus noise; held-out sites are flagged
    sites = station_sites(cfg["atmos"]["observations"]["stations"], LAT, LON, 0)
    st = StationOperator(LAT, LON, sites.latitude, sites.longitude)
    np.testing.assert_allclose(
        ds["station_truth"].values,
        st.A(torch.from_numpy(fields.values[8:10].astype(np.float64))).numpy(),
        atol=1e-3,
    )
    assert ds["held_out"].values.tolist() == [0, 0, 0, 1, 1]
    assert (ds["nfe"].values == 2).all() and np.isfinite(ds["chi2_dof_coarse"].values).all()
    # held-out sites are absent from the conditioning: the station term holds the used sites only
    job = SuperResolution(argparse.Namespace(data=str(store), prior=str(tmp_path / "prior")), job_cfg, "cpu")
    obs = job.observe(int(job.eval_idx[0]))
    np.testing.assert_allclose(
        obs.stations[0].numpy(),
        norm.to_prior(ds["station_obs"].values[0].T[:, :, None], fields.channels)[:, :, 0].T,
        atol=1e-4,
    )
    problem, method = job.problem(job.terms(obs))
    (station_term,) = method.guidance_options["terms"]
    assert problem.operator is job.coarse_op and station_term.y.shape == (1, 3, 3)
    np.testing.assert_array_equal(station_term.y, obs.stations[:, :3])
    metrics = evaluate_store(out)
    assert isinstance(metrics, pd.DataFrame) and set(metrics["channel"]) >= {"t850", "t500", "t2m"}


def test_igra_soundings_at_the_channel_levels(tmp_path: Path) -> None:
    from diffinv.stages.atmos.data import igra_sites, read_soundings

    p = np.array(
        [[1000.0, 900.0, 700.0, 400.0], [1000.0, 925.0, 850.0, np.nan], [950.0, 850.0, 500.0, 300.0]]
    )
    temp = 300.0 + 20.0 * np.log(p / 1000.0)  # linear in log p: interpolation is exact
    igra = xr.Dataset(
        {"pressure": (("sounding", "level"), p), "temperature": (("sounding", "level"), temp)},
        coords={
            "station": ("sounding", ["B", "A", "OUT"]),
            "latitude": ("sounding", [51.0, 50.5, 10.0]),
            "longitude": ("sounding", [-1.0, -2.0, 0.0]),
            "time": (
                "sounding",
                np.array(["2020-01-03T00", "2020-01-03T00", "2020-01-03T00"], "datetime64[ns]"),
            ),
        },
    )
    store = write_zarr(igra, tmp_path / "igra.zarr")
    fields = open_fields(synthetic(), DATA)
    s = read_soundings(store, fields, fields.times[8:10])
    assert s.station.tolist() == ["A", "B"]  # sorted, the station outside the grid dropped
    expected_b = 300.0 + 20.0 * np.log(np.array([850.0, 500.0]) / 1000.0)
    np.testing.assert_allclose(s.values[0, 1, :2], expected_b, atol=1e-9)
    assert s.values[0, 0, 0] == pytest.approx(300.0 + 20.0 * np.log(0.85), abs=1e-9)
    assert np.isnan(s.values[0, 0, 1])  # 500 hPa is above sounding A's top
    assert np.isnan(s.values[:, :, 2]).all()  # t2m has no IGRA counterpart
    assert np.isnan(s.values[1]).all()  # no sounding at the second time
    assert igra_sites(s, {"held_out": 1}).held_out.tolist() == [False, True]
