"""IGRA v2 reader: the Vienna sample, the demo generator's files, and bad input."""

from __future__ import annotations

import gzip
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from diffinv.demo import igra as demo_igra
from diffinv.demo.era5 import synthetic_atmosphere
from diffinv.errors import DiffinvError, InputError
from diffinv.io.igra import ingest, iter_igra_soundings, read_igra
from diffinv.io.store import get_provenance

VIENNA = "igra/AUM00011035-data.txt.gz"


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return demo_igra.write_demo(tmp_path_factory.mktemp("igra"), seed=3)


def _quiet_read(paths, **options) -> xr.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the demo's trailing header without levels
        return read_igra(paths, **options)


# --- real file -----------------------------------------------------------------------------------


def test_vienna_facts(real_data: Path) -> None:
    path = real_data / VIENNA
    ds = read_igra(path)
    headers = [int(line[32:36]) for line in gzip.open(path, "rt") if line.startswith("#")]
    assert ds.sizes["sounding"] == 321 == len(headers)
    np.testing.assert_array_equal(ds["num_levels"].values, headers)
    assert ds.sizes["level"] == max(headers)
    assert str(ds["time"].values[0])[:19] == "2015-01-23T12:00:00"
    assert str(ds["time"].values[-1])[:10] == "2015-06-30"
    assert set(ds["station"].values) == {"AUM00011035"}
    np.testing.assert_allclose(ds["latitude"].values, 48.2333)
    np.testing.assert_allclose(ds["longitude"].values, 16.35)
    # release times: 11:34 for the 12 UTC sounding, 23:30 of the previous day for 00 UTC
    assert str(ds["launch_time"].values[0])[:16] == "2015-01-23T11:34"
    assert str(ds["launch_time"].values[1])[:16] == "2015-01-23T23:30"
    first = ds.isel(sounding=0, level=0)  # "21 -9999  99200B-9999    38B-9999    22   300    50"
    assert float(first["pressure"]) == pytest.approx(992.0)
    assert float(first["temperature"]) == pytest.approx(3.8 + 273.15, abs=1e-4)
    assert int(first["pressure_flag"]) == 2 and int(first["temperature_flag"]) == 2
    assert int(first["level_type_major"]) == 2 and int(first["level_type_minor"]) == 1
    assert np.isnan(first["geopotential_height"]) and np.isnan(first["relative_humidity"])
    assert float(first["dewpoint_depression"]) == pytest.approx(2.2)
    assert float(first["wind_speed"]) == pytest.approx(5.0)
    # "10 -9999   7000 18010B-8888 -9999 -8888   305   390": removed by QA (-8888) becomes NaN
    hit = (
        (ds["pressure"] == 70.0)
        & (ds["geopotential_height"] == 18010)
        & (ds["wind_direction"] == 305)
        & (ds["wind_speed"] == 39.0)
    )
    assert int(hit.sum()) == 1
    assert bool((hit & ds["temperature"].isnull() & ds["dewpoint_depression"].isnull()).any())
    # padding beyond each sounding's count
    assert np.isnan(ds["pressure"].isel(sounding=3, level=int(ds["num_levels"][3]))).all()
    assert int(ds["level_type_major"].isel(sounding=3, level=-1)) == -1


def test_vienna_ingest_matches_reader_and_selects(real_data: Path, tmp_path: Path) -> None:
    path = real_data / VIENNA
    out = ingest([path], tmp_path / "igra.zarr", block_soundings=50)
    store = xr.open_zarr(out, consolidated=False).load()
    xr.testing.assert_identical(store.drop_attrs(), read_igra(path).drop_attrs())
    assert get_provenance(store)["source_files"] == [str(path)]
    march = read_igra(path, time=["2015-03-01", "2015-03-31T23"], lat=[45, 50], lon=[10, 20])
    assert march.sizes["sounding"] == int(
        ((store["time"] >= np.datetime64("2015-03-01")) & (store["time"] < np.datetime64("2015-04-01"))).sum()
    )
    with pytest.raises(InputError, match="no soundings selected"):
        ingest([path], tmp_path / "none.zarr", lon=[100, 120])
    assert not (tmp_path / "none.zarr").exists()


def test_iter_soundings_trims_levels(real_data: Path) -> None:
    first = next(iter_igra_soundings(real_data / VIENNA))
    assert first.sizes["level"] == int(first["num_levels"]) == 123
    assert not np.isnan(first["pressure"]).any()


# --- demo files ----------------------------------------------------------------------------------


def test_demo_round_trip(demo_files: list[Path], tmp_path: Path) -> None:
    data = [p for p in demo_files if p.name.endswith("-data.txt.gz")]
    with pytest.warns(UserWarning, match="header without levels at the end"):
        out = ingest(data, tmp_path / "demo.zarr")
    ds = xr.open_zarr(out, consolidated=False).load()
    fields = synthetic_atmosphere(3)
    assert ds.sizes["sounding"] == 4 * 8  # 4 stations x (00, 12 UTC) of 4 days
    assert (
        (ds["latitude"] > 35) & (ds["latitude"] < 65) & (ds["longitude"] > -15) & (ds["longitude"] < 25)
    ).all()
    # the standard 500 hPa level against the fields it was sampled from (noise 0.3 K, 5 m)
    at500 = ds["pressure"] == 500.0
    assert int(at500.sum()) == ds.sizes["sounding"]
    t_obs = ds["temperature"].where(at500).max("level").values
    z_obs = ds["geopotential_height"].where(at500).max("level").values
    where = {k: xr.DataArray(ds[k].values, dims="sounding") for k in ("latitude", "longitude", "time")}
    col = fields.sel(level=500.0, time=where["time"]).interp(
        latitude=where["latitude"], longitude=where["longitude"]
    )
    ok = ~np.isnan(t_obs)  # a few temperatures are removed by QA (-8888)
    assert ok.sum() > 25
    assert np.sqrt(np.mean((t_obs - col["t"].values)[ok] ** 2)) < 1.0
    assert np.sqrt(np.mean((z_obs - col["z"].values / 9.80665) ** 2)) < 15.0
    assert (ds["level_type_minor"].isel(level=0) == 1).all()  # surface first


def test_demo_derived_files(demo_files: list[Path]) -> None:
    derived = _quiet_read([p for p in demo_files if p.name.endswith("-drvd.txt")])
    data = _quiet_read([p for p in demo_files if p.name.endswith("-data.txt.gz")])
    assert derived.attrs["source"] == "IGRA v2 derived files"
    assert derived.sizes["sounding"] == data.sizes["sounding"]
    assert np.isnan(derived["latitude"]).all()  # derived files carry no coordinates
    t500 = derived["temperature"].where(derived["pressure"] == 500.0).max("level")
    t500_data = data["temperature"].where(data["pressure"] == 500.0).max("level")
    assert float(abs(t500 - t500_data).max()) < 2.0
    assert np.isnan(derived["cape"]).all()  # -99999 is missing


def test_derived_coordinates_from_station_list(demo_files: list[Path], tmp_path: Path) -> None:
    listing = tmp_path / "igra2-station-list.txt"
    listing.write_text(
        "ZZM00090001  45.0000   10.0000  100.0    DEMO STATION\n"
        + "".join(f"ZZM0009000{k}  50.0000   20.0000  100.0    DEMO\n" for k in (2, 3, 4))
    )
    ds = _quiet_read(
        [p for p in demo_files if p.name.endswith("-drvd.txt")], station_list=listing, lat=[44, 46]
    )
    assert set(ds["station"].values) == {"ZZM00090001"}
    np.testing.assert_allclose(ds["latitude"].values, 45.0)


# --- bad input -----------------------------------------------------------------------------------


def _lines(path: Path) -> list[str]:
    return gzip.open(path, "rt").read().splitlines()


def test_truncated_gzip(demo_files: list[Path], tmp_path: Path) -> None:
    raw = demo_files[1].read_bytes()
    bad = tmp_path / "cut-data.txt.gz"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match=r"cut-data\.txt\.gz: truncated or corrupt gzip"):
        ingest([bad], tmp_path / "out.zarr")
    assert not (tmp_path / "out.zarr").exists()


def test_shifted_columns_name_the_line(demo_files: list[Path], tmp_path: Path) -> None:
    lines = _lines(demo_files[1])
    lines[3] = " " + lines[3][:-1]
    bad = tmp_path / "shifted-data.txt"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"shifted-data\.txt, line 4: columns"):
        ingest([bad], tmp_path / "out.zarr")
    assert not (tmp_path / "out.zarr").exists()


def test_level_count_mismatch(demo_files: list[Path], tmp_path: Path) -> None:
    lines = _lines(demo_files[1])
    del lines[2]
    bad = tmp_path / "short-data.txt"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        InputError,
        match=r"short-data\.txt, line 1: header declares \d+ levels but the next header comes after",
    ):
        read_igra(bad)


def test_not_igra_and_mixed_kinds(demo_files: list[Path], tmp_path: Path) -> None:
    bad = tmp_path / "table.txt"
    bad.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(InputError, match=r"table\.txt, line 1: level line before any header"):
        read_igra(bad)
    with pytest.raises(InputError, match="derived file among data files"):
        _quiet_read([demo_files[1], demo_files[-1]])


def test_unknown_option() -> None:
    with pytest.raises(DiffinvError, match=r"unknown option 'bbox'.*lat:"):
        read_igra("x.txt", bbox=[0, 1])


def test_folder_input(demo_files: list[Path], tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for p in demo_files[1:3]:
        shutil.copy(p, folder)
    assert _quiet_read(folder).sizes["sounding"] == 16
