"""IGRA v2 station data and derived-parameter files sampled from the demo ERA5 fields.

Stations are placed at random inside the ERA5 domain; every 00 and 12 UTC field becomes a
sounding: a surface level, the standard pressure levels above it and a few significant levels
between them (interpolated in ln p), with instrument-like noise (0.3 K, 3 % RH, 5 m, 1 m/s),
missing humidity above 300 hPa, occasional missing winds and values removed by QA (-8888),
and QC flags. Data files are written gzip-compressed (``{id}-data.txt.gz``) with a last
header that has no levels, as archive files sometimes end; derived files
(``derived/{id}-drvd.txt``, a subfolder so that the folder ingests as data files) hold the
surface and standard levels. Columns follow the NCEI IGRA v2.2
format descriptions.
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from diffinv.demo.era5 import GRAVITY, R_DRY, saturation_vapour_pressure, synthetic_atmosphere
from diffinv.io import options as opt
from diffinv.io.era5 import read_era5
from diffinv.io.store import atomic_path

OPTIONS = {
    "era5": "ERA5 demo file or folder to sample (default: the era5 demo fields of the same seed)",
    "stations": "number of stations (default 4)",
    "derived": "also write derived-parameter files (default true)",
}
MISSING, REMOVED, DERIVED_MISSING = -9999, -8888, -99999


def _fields(seed: int, era5: str | None) -> xr.Dataset:
    if era5 is None:
        return synthetic_atmosphere(seed)
    path = Path(era5)
    files = sorted(path.glob("*.nc")) if path.is_dir() else [path]
    return xr.concat(
        [read_era5(f).load() for f in files], dim="time", data_vars="all", coords="minimal", join="exact"
    )


def _profile(col: xr.Dataset, elevation: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Levels of one sounding (surface, standard, significant), bottom up, in physical units."""
    p = col["level"].values
    t, z, u, v, q = (col[k].values.astype(np.float64) for k in ("t", "z", "u", "v", "q"))
    lnp = np.log(p)
    p_sfc = p[0] * np.exp((z[0] - GRAVITY * elevation) / (R_DRY * t[0]))
    std = p < p_sfc - 5.0
    between = np.sort(rng.uniform(p[std].min(), p_sfc - 10.0, size=3))[::-1] if std.any() else np.zeros(0)
    press = np.concatenate([[p_sfc], p[std], between])
    kind = np.concatenate([[21], np.full(std.sum(), 10), np.full(len(between), 20)])
    order = np.argsort(-press, kind="stable")
    press, kind = press[order], kind[order]

    def at(values: np.ndarray) -> np.ndarray:  # linear in ln p, extrapolated at the surface
        x = np.log(press)
        inside = np.interp(-x, -lnp, values)
        slope = (values[1] - values[0]) / (lnp[1] - lnp[0])
        return np.where(x > lnp[0], values[0] + slope * (x - lnp[0]), inside)

    gph = at(z) / GRAVITY
    gph[kind == 21] = elevation
    return {
        "press": press,
        "kind": kind,
        "t": at(t),
        "gph": gph,
        "u": at(u),
        "v": at(v),
        "q": np.maximum(at(q), 1e-7),
    }


def _observe(prof: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Noisy IGRA-coded integer columns of a profile (see the data format description)."""
    n = len(prof["press"])
    t = prof["t"] + rng.normal(0, 0.3, n)
    e = prof["q"] * prof["press"] / (0.622 + 0.378 * prof["q"])
    rh = np.clip(100 * e / saturation_vapour_pressure(prof["t"]) + rng.normal(0, 3, n), 1, 100)
    e_obs = rh / 100 * saturation_vapour_pressure(t)
    ln_e = np.log(e_obs / 6.112)
    dewpoint = 243.5 * ln_e / (17.67 - ln_e) + 273.15
    u, v = prof["u"] + rng.normal(0, 1, n), prof["v"] + rng.normal(0, 1, n)
    speed = np.hypot(u, v)
    direction = np.rint(np.rad2deg(np.arctan2(-u, -v)) % 360).astype(int)
    gph = prof["gph"] + np.where(prof["kind"] == 21, 0, rng.normal(0, 5, n))
    elapsed = np.maximum(gph - gph[0], 0) / 5.0  # 5 m/s ascent
    cols = {
        "etime": (elapsed // 60 * 100 + np.rint(elapsed % 60).clip(0, 59)).astype(int),
        "press": np.rint(prof["press"] * 100).astype(int),
        "gph": np.where(prof["kind"] == 20, MISSING, np.rint(gph)).astype(int),
        "temp": np.rint((t - 273.15) * 10).astype(int),
        "rh": np.rint(rh * 10).astype(int),
        "dpdp": np.rint((t - dewpoint) * 10).astype(int),
        "wdir": direction,
        "wspd": np.rint(speed * 10).astype(int),
    }
    dry = prof["press"] < 300
    cols["rh"][dry] = MISSING
    cols["dpdp"][dry] = MISSING
    calm = rng.random(n) < 0.05
    cols["wdir"][calm] = MISSING
    cols["wspd"][calm] = MISSING
    cols["temp"][rng.random(n) < 0.02] = REMOVED
    cols["flags"] = [
        ("B" if k == 21 else " ", " ", rng.choice([" ", "A", "B"], p=[0.6, 0.1, 0.3])) for k in prof["kind"]
    ]
    return cols


def _data_lines(prof: dict[str, np.ndarray], cols: dict[str, Any]) -> list[str]:
    """Level records at the fixed columns of the data format (1-51) plus the archive's trailing blank."""
    lines = []
    for i, kind in enumerate(prof["kind"]):
        pf, zf, tf = cols["flags"][i]
        lines.append(
            f"{kind:02d} {cols['etime'][i]:5d} {cols['press'][i]:6d}{pf}{cols['gph'][i]:5d}{zf}"
            f"{cols['temp'][i]:5d}{tf}"
            f"{cols['rh'][i]:5d} {cols['dpdp'][i]:5d} {cols['wdir'][i]:5d} {cols['wspd'][i]:5d} "
        )
    return lines


def _derived_lines(prof: dict[str, np.ndarray], cols: dict[str, Any]) -> list[str]:
    """Level records of the derived format (19 fields of 7 columns) for surface and standard levels."""
    lines = []
    for i, kind in enumerate(prof["kind"]):
        if kind == 20:
            continue
        t = prof["t"][i]
        p = prof["press"][i]
        e = prof["q"][i] * p / (0.622 + 0.378 * prof["q"][i])
        fields = [DERIVED_MISSING] * 19
        fields[0] = cols["press"][i]
        fields[1] = fields[2] = int(np.rint(prof["gph"][i]))
        fields[3] = int(np.rint(t * 10))
        fields[5] = int(np.rint(t * (1000 / p) ** 0.2857 * 10))
        fields[7] = int(np.rint(t * (1 + 0.61 * prof["q"][i]) * 10))
        fields[9] = int(np.rint(e * 1000))
        fields[10] = int(np.rint(saturation_vapour_pressure(t) * 1000))
        fields[12] = int(np.rint(100 * e / saturation_vapour_pressure(t) * 10))
        fields[14] = int(np.rint(prof["u"][i] * 10))
        fields[16] = int(np.rint(prof["v"][i] * 10))
        lines.append(" ".join(f"{v:7d}" for v in fields))
    return lines


def _header(station: str, when: np.datetime64, numlev: int, lat: float, lon: float) -> str:
    """Data-file header at the fixed columns 1-71; release 45 minutes before the nominal time."""
    stamp = when.astype("datetime64[m]").item()
    release = (when - np.timedelta64(45, "m")).astype("datetime64[m]").item()
    return (
        f"#{station:<11s} {stamp.year:4d} {stamp.month:02d} {stamp.day:02d} {stamp.hour:02d} "
        f"{release.hour:02d}{release.minute:02d} "
        f"{numlev:4d} {'ncdc-gts':<8s} {'':<8s} {round(lat * 1e4):7d} {round(lon * 1e4):8d}"
    )


def _derived_header(station: str, when: np.datetime64, numlev: int) -> str:
    """Derived-file header: columns 1-31 as the data header, NUMLEV 32-36, 20 parameters of 6 columns."""
    head = _header(station, when, 0, 0.0, 0.0)[:31]
    return f"{head}{numlev:5d} " + "".join(f"{DERIVED_MISSING:6d}" for _ in range(20))


def write_demo(out: Path, seed: int, **options: Any) -> list[Path]:
    """Write IGRA v2 files for stations inside the ERA5 demo domain under ``out``.

    Parameters
    ----------
    out
        Output folder (created).
    seed
        Seeds the ERA5 fields (when ``era5`` is not given), station positions and noise.
    **options
        See :data:`OPTIONS`.

    Returns
    -------
    list of Path
        Data files (``.txt.gz``) then derived files (``derived/*.txt``).
    """
    opt.check_options("demo-data igra", options, OPTIONS)
    fields = _fields(seed, options.get("era5"))
    rng = np.random.default_rng(seed + 1)
    n = int(options.get("stations", 4))
    lat = rng.uniform(fields.latitude.values[1], fields.latitude.values[-2], n)
    lon = rng.uniform(fields.longitude.values[1], fields.longitude.values[-2], n)
    elevation = rng.uniform(0, 400, n)
    hours = fields["time"].dt.hour.values
    times = fields["time"].values[(hours == 0) | (hours == 12)]
    out = Path(out)
    (out / "derived").mkdir(parents=True, exist_ok=True)
    data_paths: list[Path] = []
    derived_paths: list[Path] = []
    for k in range(n):
        station = f"ZZM000{90001 + k:05d}"
        column = fields.sel(time=times).interp(latitude=lat[k], longitude=lon[k])
        data: list[str] = []
        derived: list[str] = []
        for when in times:
            prof = _profile(column.sel(time=when), elevation[k], rng)
            cols = _observe(prof, rng)
            body = _data_lines(prof, cols)
            data += [_header(station, when, len(body), lat[k], lon[k]), *body]
            dbody = _derived_lines(prof, cols)
            derived += [_derived_header(station, when, len(dbody)), *dbody]
        if k == 0:  # an archive file that ends with a header and no levels
            data.append(_header(station, times[-1] + np.timedelta64(12, "h"), 9, lat[k], lon[k]))
        data_paths.append(_write(out / f"{station}-data.txt.gz", data))
        if options.get("derived", True):
            derived_paths.append(_write(out / "derived" / f"{station}-drvd.txt", derived))
    return data_paths + derived_paths


def _write(path: Path, lines: Sequence[str]) -> Path:
    text = ("\n".join(lines) + "\n").encode("ascii")
    with atomic_path(path) as tmp:
        tmp.write_bytes(gzip.compress(text, mtime=0) if path.suffix == ".gz" else text)
    return path
