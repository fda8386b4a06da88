"""ERA5 reader: real CDS netCDF, GRIB, ERA-Interim and zarr samples, the demo files, bad input."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from diffinv.demo import era5 as demo_era5
from diffinv.errors import DiffinvError, InputError
from diffinv.io.era5 import ingest, read_era5
from diffinv.io.store import get_provenance


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return demo_era5.write_demo(tmp_path_factory.mktemp("era5"), seed=1)


def _open(path: Path, **kwargs) -> xr.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the ERA-Interim sample's NaN _FillValue on int16
        return xr.open_dataset(path, **kwargs)


def _schema(ds: xr.Dataset, dtype: type = np.float32) -> None:
    assert np.all(np.diff(ds["latitude"].values) > 0)
    assert np.all(np.diff(ds["longitude"].values) > 0)
    assert ds["time"].dtype == np.dtype("datetime64[ns]")
    for name, var in ds.data_vars.items():
        assert np.issubdtype(var.dtype, dtype), name
        assert var.attrs["units"] and var.attrs["long_name"], name
        assert var.dims[0] == "time" and var.dims[-2:] == ("latitude", "longitude")


# --- real files ----------------------------------------------------------------------------------


def test_uk_grib(real_data: Path, tmp_path: Path) -> None:
    try:
        import cfgrib  # noqa: F401
    except (ImportError, RuntimeError):  # RuntimeError: cfgrib without the ecCodes library
        pytest.skip("GRIB needs the grib extra: pip install 'diffinv[grib]' (cfgrib, ecCodes)")
    path = real_data / "era5/era5-2mt-2019-03-uk.grib"
    out = ingest([path], tmp_path / "uk.zarr", time_chunk=200)
    ds = xr.open_zarr(out, consolidated=False)
    _schema(ds)
    assert dict(ds.sizes) == {"time": 744, "latitude": 33, "longitude": 49}
    assert (np.diff(ds["time"].values) == np.timedelta64(1, "h")).all()
    assert (
        str(ds["time"].values[0])[:19] == "2019-03-01T00:00:00"
        and str(ds["time"].values[-1])[:19] == "2019-03-31T23:00:00"
    )
    assert ds["latitude"].values[[0, -1]].tolist() == [50.0, 58.0]
    assert ds["longitude"].values[[0, -1]].tolist() == [-10.0, 2.0]
    assert ds["t2m"].attrs["units"] == "K"
    assert 250 < float(ds["t2m"].min()) and float(ds["t2m"].max()) < 295
    assert ds["t2m"].encoding["chunks"] == (200, 33, 49)
    assert get_provenance(ds)["options"] == {"time_chunk": 200}


def test_cds_netcdf_packed(real_data: Path, tmp_path: Path) -> None:
    files = [real_data / f"era5/earthkit/era5_2t_{k}.nc" for k in (2, 1)]
    raw = _open(files[1], mask_and_scale=False)
    assert raw["t2m"].dtype == np.int16  # packed on disk
    ds = read_era5(files[1]).load()
    _schema(ds, np.floating)
    assert dict(ds.sizes) == {"time": 1, "latitude": 9, "longitude": 18}
    assert ds["longitude"].values[[0, -1]].tolist() == [-180.0, 160.0]
    decoded = _open(files[1])["t2m"].sel(latitude=40.0, longitude=20.0).values
    np.testing.assert_allclose(ds["t2m"].sel(latitude=40.0, longitude=20.0).values, decoded, rtol=1e-6)
    assert read_era5(files[1], lon_convention="0..360")["longitude"].values[[0, -1]].tolist() == [0.0, 340.0]
    store = xr.open_zarr(ingest(files, tmp_path / "2t.zarr"), consolidated=False)
    assert [str(t)[:13] for t in store["time"].values] == [
        "2021-03-01T12",
        "2021-03-02T12",
    ]  # ordered by time
    assert store["t2m"].dtype == np.float32


def test_era_interim_legacy_levels_and_month_axis(real_data: Path) -> None:
    path = real_data / "era5/eraint_uvz.nc"
    ds = read_era5(path)
    _schema(ds, np.floating)
    assert dict(ds.sizes) == {"time": 2, "level": 3, "latitude": 241, "longitude": 480}
    assert ds["level"].values.tolist() == [200.0, 500.0, 850.0] and ds["level"].attrs["units"] == "hPa"
    assert ds["month"].values.tolist() == [1, 7]
    assert ds["latitude"].values[[0, -1]].tolist() == [-90.0, 90.0]
    sub = read_era5(path, variables=["u"], levels=[500], lat=[30, 60], lon=[-30, 40]).load()
    assert list(sub.data_vars) == ["u"] and sub["level"].values.tolist() == [500.0]
    assert sub["latitude"].values[[0, -1]].tolist() == [30.0, 60.0]
    assert sub["longitude"].values[[0, -1]].tolist() == [-30.0, 39.75]
    raw = _open(path)["u"].isel(month=1).sel(level=500, latitude=45.0, longitude=9.75).values
    np.testing.assert_allclose(
        sub["u"].isel(time=1).sel(latitude=45.0, longitude=9.75).values, raw, rtol=1e-6
    )
    january, july = (float(sub["u"].isel(time=k).mean()) for k in (0, 1))
    assert 5 < july < january < 25  # mid-latitude westerlies at 500 hPa, stronger in winter


def test_zarr_v2_analysis(real_data: Path) -> None:
    path = real_data / "era5/earthkit/test4_t_z_2007.zarr"
    ds = read_era5(path).load()
    _schema(ds, np.floating)
    assert dict(ds.sizes) == {"time": 1, "level": 2, "latitude": 181, "longitude": 360}
    assert ds["level"].values.tolist() == [500.0, 850.0]
    raw = xr.open_zarr(path)["t"].sel(level=850, latitude=50.0, longitude=350.0).values
    np.testing.assert_allclose(ds["t"].sel(level=850, latitude=50.0, longitude=-10.0).values, raw, rtol=1e-6)
    z500 = ds["z"].sel(level=500) / 9.80665
    assert 4600 < float(z500.min()) and float(z500.max()) < 6000


# --- demo files ----------------------------------------------------------------------------------


def test_demo_new_cds_layout_round_trip(demo_files: list[Path], tmp_path: Path) -> None:
    raw = _open(demo_files[0], decode_times=False)
    assert {"valid_time", "pressure_level", "number", "expver"} <= set(raw.variables)
    assert raw["valid_time"].attrs["units"] == "seconds since 1970-01-01" and raw["expver"].dtype.kind in "OU"
    store = xr.open_zarr(
        ingest([demo_files[0].parent], tmp_path / "demo.zarr"), consolidated=False
    ).load()  # a folder of files
    truth = demo_era5.synthetic_atmosphere(1)
    _schema(store)
    assert store.sizes["time"] == 16 and store["expver"].values.tolist() == [1] * 16
    for name in truth.data_vars:
        np.testing.assert_array_equal(store[name].values, truth[name].sel(level=store["level"]).values)
    # physically plausible: lapse rate, poleward cooling, hydrostatic thickness, geostrophic westerlies
    t = store["t"].mean(("time", "longitude"))
    assert (t.sel(level=1000) - t.sel(level=500) > 25).all()
    assert float(t.sel(level=850).isel(latitude=0)) > float(t.sel(level=850).isel(latitude=-1)) + 10
    thickness = (store["z"].sel(level=500) - store["z"].sel(level=1000)) / 9.80665
    t_layer = store["t"].sel(level=[1000, 925, 850, 700, 500]).mean("level")
    corr = np.corrcoef(thickness.values.ravel(), t_layer.values.ravel())[0, 1]
    assert corr > 0.95
    assert float(store["u"].sel(level=250).mean()) > float(store["u"].sel(level=850).mean()) + 5


def test_arco_style_zarr_with_selection(tmp_path: Path) -> None:
    fields = demo_era5.synthetic_atmosphere(0, lon=[0, 30])
    arco = (
        fields.rename(t="temperature", z="geopotential")
        .drop_vars(["u", "v", "q"])
        .isel(latitude=slice(None, None, -1))
    )
    arco.to_zarr(tmp_path / "arco.zarr", zarr_format=3, consolidated=False)
    ds = read_era5(
        tmp_path / "arco.zarr", time=["2020-01-02", "2020-01-02T18"], lon=[5, 10], lon_convention="0..360"
    ).load()
    _schema(ds, np.floating)
    assert sorted(ds.data_vars) == ["t", "z"]
    assert [str(t)[:13] for t in ds["time"].values] == [
        "2020-01-02T00",
        "2020-01-02T06",
        "2020-01-02T12",
        "2020-01-02T18",
    ]
    assert ds["longitude"].values.tolist() == [5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    np.testing.assert_array_equal(
        ds["t"].values, fields["t"].sel(time=ds["time"], longitude=ds["longitude"]).values
    )


def test_ensemble_member_axis(tmp_path: Path) -> None:
    ds = demo_era5.to_cds_netcdf(demo_era5.synthetic_atmosphere(0, times=2))[["t"]].drop_vars("number")
    ens = xr.concat([ds, ds + 1], dim="number").assign_coords(number=[0, 1])
    ens.to_netcdf(tmp_path / "ens.nc")
    out = read_era5(tmp_path / "ens.nc")
    assert out["t"].dims == ("time", "member", "level", "latitude", "longitude")


# --- bad input -----------------------------------------------------------------------------------


def test_truncated_netcdf(demo_files: list[Path], tmp_path: Path) -> None:
    bad = tmp_path / "cut.nc"
    bad.write_bytes(demo_files[0].read_bytes()[:5000])
    with pytest.raises(InputError, match=r"cut\.nc: unreadable"):
        ingest([bad], tmp_path / "out.zarr")
    assert not (tmp_path / "out.zarr").exists()


def test_missing_variable_and_level(demo_files: list[Path], tmp_path: Path) -> None:
    with pytest.raises(
        InputError, match=r"era5_pl_0\.nc: variable 'msl' not in the file \(has t, z, u, v, q\)"
    ):
        ingest(demo_files, tmp_path / "out.zarr", variables=["t", "msl"])
    with pytest.raises(InputError, match=r"level 600 hPa not in the file"):
        read_era5(demo_files[0], levels=[500, 600])
    assert not (tmp_path / "out.zarr").exists()


def test_unknown_layout_and_format(tmp_path: Path) -> None:
    xr.Dataset({"a": (("x", "y"), np.zeros((2, 3)))}).to_netcdf(tmp_path / "xy.nc")
    with pytest.raises(InputError, match=r"xy\.nc: unknown layout: no latitude axis"):
        ingest([tmp_path / "xy.nc"], tmp_path / "out.zarr")
    (tmp_path / "notes.nc").write_text("not netCDF")
    with pytest.raises(InputError, match=r"notes\.nc: unknown format"):
        read_era5(tmp_path / "notes.nc")
    assert not (tmp_path / "out.zarr").exists()


def test_incompatible_inputs_and_options(demo_files: list[Path], tmp_path: Path) -> None:
    with pytest.raises(InputError, match="times overlap"):
        ingest([demo_files[0], demo_files[0]], tmp_path / "out.zarr")
    with pytest.raises(DiffinvError, match=r"unknown option 'area'.*lon_convention"):
        read_era5(demo_files[0], area=[60, -10, 40, 20])
    with pytest.raises(InputError, match="crosses the seam"):
        read_era5(demo_files[0], lon=[-10, 10], lon_convention="0..360")
    assert not (tmp_path / "out.zarr").exists()


def test_demo_store_says_it_is_synthetic(tmp_path):
    files = demo_era5.write_demo(tmp_path / "demo", seed=0, times=2, files=1, resolution=10.0)
    ds = xr.open_zarr(ingest(files, tmp_path / "demo.zarr"))
    assert "SYNTHETIC" in ds.attrs["comment"] and "ECMWF" not in ds.attrs["institution"].split("(")[0]
