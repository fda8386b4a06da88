"""ERA5-like pressure-level fields written as CDS netCDF in the new (2024) layout.

The fields are a balanced toy atmosphere over a mid-latitude box:

- temperature: a surface temperature falling poleward, a constant lapse rate
  (T = T_s (p / p_s)^(R Gamma / g)) up to an isothermal stratosphere, plus travelling
  synoptic waves whose phase tilts westward with height;
- geopotential: the 1000 hPa height anomaly of the waves, integrated upward hydrostatically
  (dPhi = -R T d ln p), so thickness follows temperature;
- winds: geostrophic from the geopotential on each level (u = -Phi_y / f, v = Phi_x / f),
  so the westerlies grow with height by thermal wind;
- specific humidity: from a relative humidity decreasing with height and the saturation
  vapour pressure (Bolton 1980).

The file layout follows the new CDS netCDF: ``valid_time`` (int64 seconds since 1970),
``pressure_level`` (hPa), latitude descending, scalar ``number``, string ``expver``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from diffinv.io import options as opt
from diffinv.io.store import atomic_path

R_DRY = 287.05  # J kg-1 K-1
GRAVITY = 9.80665  # m s-2
OMEGA = 7.292e-5  # s-1
EARTH_RADIUS = 6.371e6  # m
LAPSE_RATE = 0.0065  # K m-1
T_TROPOPAUSE = 217.0  # K

OPTIONS = {
    "times": "number of 6-hourly valid times (default 16)",
    "files": "number of files the times are split into (default 2)",
    "start": "first valid time (default 2020-01-01T00)",
    "resolution": "grid spacing in degrees (default 1.0)",
    "lat": "[south, north] of the domain (default [35, 65])",
    "lon": "[west, east] of the domain (default [-15, 25])",
    "levels": "pressure levels in hPa (default [1000, 925, 850, 700, 500, 300, 250, 200])",
}
DEFAULTS: dict[str, Any] = {
    "times": 16,
    "files": 2,
    "start": "2020-01-01T00",
    "resolution": 1.0,
    "lat": [35.0, 65.0],
    "lon": [-15.0, 25.0],
    "levels": [1000, 925, 850, 700, 500, 300, 250, 200],
}
#: Variable attributes as the CDS writes them.
ATTRS = {
    "t": {
        "units": "K",
        "long_name": "Temperature",
        "standard_name": "air_temperature",
        "GRIB_paramId": 130,
        "GRIB_shortName": "t",
    },
    "z": {
        "units": "m**2 s**-2",
        "long_name": "Geopotential",
        "standard_name": "geopotential",
        "GRIB_paramId": 129,
        "GRIB_shortName": "z",
    },
    "u": {
        "units": "m s**-1",
        "long_name": "U component of wind",
        "standard_name": "eastward_wind",
        "GRIB_paramId": 131,
        "GRIB_shortName": "u",
    },
    "v": {
        "units": "m s**-1",
        "long_name": "V component of wind",
        "standard_name": "northward_wind",
        "GRIB_paramId": 132,
        "GRIB_shortName": "v",
    },
    "q": {
        "units": "kg kg**-1",
        "long_name": "Specific humidity",
        "standard_name": "specific_humidity",
        "GRIB_paramId": 133,
        "GRIB_shortName": "q",
    },
}


def saturation_vapour_pressure(t: np.ndarray) -> np.ndarray:
    """Saturation vapour pressure over water in hPa at temperature ``t`` in K (Bolton 1980)."""
    return 6.112 * np.exp(17.67 * (t - 273.15) / (t - 29.65))


def synthetic_atmosphere(seed: int, **options: Any) -> xr.Dataset:
    """The demo fields in the diffinv ERA5 schema (time, level, latitude ascending, longitude).

    Parameters
    ----------
    seed
        Seeds the wave amplitudes, wavelengths and phases.
    **options
        See :data:`OPTIONS` (``files`` is ignored here).
    """
    opt.check_options("demo-data era5", options, OPTIONS)
    o = {**DEFAULTS, **options}
    rng = np.random.default_rng(seed)
    south, north = opt.float_range("lat", o["lat"])
    west, east = opt.float_range("lon", o["lon"])
    res = float(o["resolution"])
    lat = np.arange(south, north + res / 2, res)
    lon = np.arange(west, east + res / 2, res)
    levels = np.array(sorted(o["levels"], reverse=True), dtype=np.float64)
    time = pd.date_range(pd.Timestamp(o["start"]), periods=int(o["times"]), freq="6h").values.astype(
        "datetime64[ns]"
    )

    phi = np.deg2rad(lat)[None, None, :, None]
    lam = np.deg2rad(lon)[None, None, None, :]
    p = levels[None, :, None, None]
    hours = ((time - time[0]) / np.timedelta64(1, "h")).astype(float)[:, None, None, None]
    x = EARTH_RADIUS * np.cos(np.deg2rad(50.0)) * lam  # m, local Cartesian about 50N
    y = EARTH_RADIUS * phi

    # Synoptic waves: wavelengths 2500-5000 km, eastward phase speeds 8-15 m/s, westward tilt with height.
    wave = np.zeros((len(time), len(levels), len(lat), len(lon)))
    surface = np.zeros((len(time), 1, len(lat), len(lon)))
    for _ in range(3):
        kx = 2 * np.pi / rng.uniform(2.5e6, 5.0e6)
        ky = 2 * np.pi / rng.uniform(3.0e6, 6.0e6)
        speed = rng.uniform(8.0, 15.0)
        phase = rng.uniform(0, 2 * np.pi)
        amp = rng.uniform(0.6, 1.0)
        arg = kx * (x - speed * hours * 3600.0) + phase
        tilt = 0.6 * np.log(1000.0 / p)
        wave += amp * np.cos(arg + tilt) * np.cos(ky * (y - y.mean()))
        surface += amp * np.sin(arg) * np.cos(ky * (y - y.mean()))

    t_surface = 288.0 - 30.0 * (np.sin(phi) ** 2 - np.sin(np.deg2rad(45.0)) ** 2)
    t_mean = np.maximum(t_surface * (p / 1013.25) ** (R_DRY * LAPSE_RATE / GRAVITY), T_TROPOPAUSE)
    amplitude = 4.0 * np.clip(np.log(p / 150.0) / np.log(1000.0 / 150.0), 0.2, 1.0)  # K, largest low down
    t = t_mean + amplitude * wave

    # Hydrostatic integration upward from 1000 hPa (trapezoid in ln p).
    z = np.empty_like(t)
    z[:, 0] = GRAVITY * (110.0 + 80.0 * surface[:, 0])
    dlnp = np.log(levels[:-1] / levels[1:])[None, :, None, None]
    z[:, 1:] = z[:, :1] + np.cumsum(R_DRY * 0.5 * (t[:, 1:] + t[:, :-1]) * dlnp, axis=1)

    # Geostrophic winds on each level.
    f = 2 * OMEGA * np.sin(phi)
    dz_dphi = np.gradient(z, np.deg2rad(lat), axis=2)
    dz_dlam = np.gradient(z, np.deg2rad(lon), axis=3)
    u = -dz_dphi / (EARTH_RADIUS * f)
    v = dz_dlam / (EARTH_RADIUS * np.cos(phi) * f)

    rh = np.clip(0.85 * (p / 1000.0) ** 2 + 0.1 * wave, 0.05, 1.0)
    e = rh * saturation_vapour_pressure(t)
    q = 0.622 * e / (p - 0.378 * e)

    dims = ("time", "level", "latitude", "longitude")
    fields = {"t": t, "z": z, "u": u, "v": v, "q": q}
    return xr.Dataset(
        {
            k: (
                dims,
                val.astype(np.float32),
                {a: ATTRS[k][a] for a in ("units", "long_name", "standard_name")},
            )
            for k, val in fields.items()
        },
        coords={
            "time": ("time", time),
            "level": ("level", levels, {"units": "hPa", "long_name": "pressure level"}),
            "latitude": ("latitude", lat, {"units": "degrees_north", "long_name": "latitude"}),
            "longitude": ("longitude", lon, {"units": "degrees_east", "long_name": "longitude"}),
        },
    )


def to_cds_netcdf(ds: xr.Dataset) -> xr.Dataset:
    """Lay out schema fields as the new CDS netCDF does (valid_time, pressure_level, ...)."""
    seconds = (ds["time"].values - np.datetime64("1970-01-01", "ns")) // np.timedelta64(1, "s")
    out = ds.rename(time="valid_time", level="pressure_level").isel(latitude=slice(None, None, -1))
    out = out.assign_coords(
        valid_time=(
            "valid_time",
            seconds.astype(np.int64),
            {
                "units": "seconds since 1970-01-01",
                "calendar": "proleptic_gregorian",
                "standard_name": "time",
                "long_name": "time",
            },
        ),
        pressure_level=(
            "pressure_level",
            ds["level"].values,
            {"units": "hPa", "long_name": "pressure", "standard_name": "air_pressure", "positive": "down"},
        ),
        number=(
            (),
            np.int64(0),
            {"long_name": "ensemble member numerical id", "units": "1", "standard_name": "realization"},
        ),
        expver=(
            "valid_time",
            np.array(["0001"] * ds.sizes["time"], dtype=object),
            {"long_name": "Experiment version"},
        ),
    )
    for name in out.data_vars:
        out[name].attrs = dict(ATTRS[name], GRIB_typeOfLevel="isobaricInhPa", GRIB_gridType="regular_ll")
    out.attrs = {
        "GRIB_centre": "ecmf",
        "GRIB_centreDescription": "European Centre for Medium-Range Weather Forecasts",
        "GRIB_subCentre": 0,
        "Conventions": "CF-1.7",
        "institution": "none: synthetic data written by diffinv demo-data (ECMWF's file layout only)",
        "comment": "SYNTHETIC demo fields, not ERA5 data",
        "history": "diffinv demo-data era5: synthetic fields in the CDS netCDF layout",
    }
    return out


def write_demo(out: Path, seed: int, **options: Any) -> list[Path]:
    """Write the demo fields as ``era5_pl_{k}.nc`` CDS netCDF files under ``out``.

    Parameters
    ----------
    out
        Output folder (created).
    seed
        Random seed of the fields.
    **options
        See :data:`OPTIONS`.

    Returns
    -------
    list of Path
        The files written, in time order.
    """
    ds = synthetic_atmosphere(seed, **options)
    files = int(options.get("files", DEFAULTS["files"]))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, idx in enumerate(np.array_split(np.arange(ds.sizes["time"]), files)):
        path = out / f"era5_pl_{k}.nc"
        cds = to_cds_netcdf(ds.isel(time=idx))
        encoding = {
            name: {"zlib": True, "complevel": 1, "chunksizes": (1, *var.shape[1:])}
            for name, var in cds.data_vars.items()
        }
        with atomic_path(path) as tmp:
            cds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=encoding)
        paths.append(path)
    return paths
