"""Quick-look figures of ingested stores, for the report (``diffinv quicklook SOURCE STORE``).

- ``era5``: a map of one variable at one level and time, with a colourbar in its units;
- ``igra``: temperature against pressure (log axis, surface at the bottom) of the first
  sounding of a few stations;
- ``ct``: one sinogram (angle against detector position, in the store's units), beside its
  ground truth when the store has one.

Each function reads only what it plots and refuses a store without the variables it needs
with one line naming the store and the fix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr
from matplotlib.ticker import NullFormatter, ScalarFormatter

from diffinv.errors import InputError
from diffinv.io.store import atomic_path, open_zarr
from diffinv.plotstyle import FIELD_CMAP, plt  # backend, dpi, fonts, layout

#: ERA5 variables preferred for the map, in order (else the store's first variable).
ERA5_PREFERRED = ("t2m", "t", "z", "msl", "u", "v", "q")


def _label(da: xr.DataArray, name: str | None = None) -> str:
    long_name = da.attrs.get("long_name", name or da.name)
    units = da.attrs.get("units")
    return f"{long_name} ({units})" if units else str(long_name)


def _save(fig: plt.Figure, out: Path) -> Path:
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out


def _open(store: Path) -> xr.Dataset:
    if not Path(store).is_dir():
        raise InputError(store, "no such zarr store", "give the store written by 'diffinv ingest'")
    return open_zarr(store)


def era5(
    store: Path, out: Path, variable: str | None = None, level: float | None = None, time: str | None = None
) -> Path:
    """Map of ``variable`` (default: the first of :data:`ERA5_PREFERRED` present) at the
    pressure ``level`` nearest the one asked (hPa; default 500) and ``time`` (ISO 8601,
    nearest; default the first)."""
    ds = _open(store)
    names = [str(v) for v in ds.data_vars if {"latitude", "longitude"} <= set(ds[v].dims)]
    if not names:
        raise InputError(store, "no variable on a latitude/longitude grid", "quick-look an ERA5 store")
    if variable is None:
        variable = next((v for v in ERA5_PREFERRED if v in names), names[0])
    elif variable not in names:
        raise InputError(store, f"no gridded variable {variable!r}", f"use one of {', '.join(names)}")
    da = ds[variable]
    where = []
    if "time" in da.dims:
        da = da.isel(time=0) if time is None else da.sel(time=np.datetime64(time), method="nearest")
        where.append(str(np.datetime_as_string(da["time"].values, unit="m")).replace("T", " "))
    if "level" in da.dims:
        da = da.sel(level=500.0 if level is None else level, method="nearest")
        where.append(f"{float(da['level']):g} hPa")
    if "member" in da.dims:
        da = da.isel(member=0)
        where.append("member 0")
    da = da.load()
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    mesh = ax.pcolormesh(da["longitude"], da["latitude"], da.values, shading="nearest", cmap=FIELD_CMAP)
    fig.colorbar(mesh, ax=ax, label=_label(da, variable), shrink=0.9)
    ax.set_xlabel(_label(ds["longitude"], "longitude"))
    ax.set_ylabel(_label(ds["latitude"], "latitude"))
    ax.set_aspect(1 / max(np.cos(np.deg2rad(float(da["latitude"].mean()))), 0.2))
    ax.set_title(f"ERA5 {variable}: {', '.join(where)}")
    return _save(fig, out)


def igra(store: Path, out: Path, stations: int = 4) -> Path:
    """Temperature against pressure of the first sounding of the first ``stations`` stations."""
    ds = _open(store)
    missing = [v for v in ("pressure", "temperature") if v not in ds]
    if missing:
        raise InputError(
            store,
            f"no {' or '.join(missing)} variable (a derived-parameter store?)",
            "quick-look a store of IGRA v2 station data files",
        )
    n = ds.sizes["sounding"]
    station = [str(s) for s in ds["station"].values] if "station" in ds.coords else [""] * n
    first: dict[str, int] = {}
    for i, s in enumerate(station):
        if s not in first and len(first) < stations:
            first[s] = i
    fig, ax = plt.subplots(figsize=(5.2, 5.0))
    for s, i in first.items():
        snd = ds.isel(sounding=i)
        p, t = snd["pressure"].values, snd["temperature"].values
        ok = np.isfinite(p) & np.isfinite(t)
        when = (
            str(np.datetime_as_string(snd["time"].values, unit="h")).replace("T", " ") + "h"
            if "time" in snd.coords
            else ""
        )
        ax.plot(t[ok], p[ok], marker="o", ms=3, lw=1.2, label=f"{s} {when}".strip())
    ax.set_yscale("log")
    ax.invert_yaxis()
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    top = min((float(np.nanmin(ds["pressure"].isel(sounding=i).values)) for i in first.values()), default=100)
    ax.set_yticks([p for p in (1000, 850, 700, 500, 300, 200, 100, 50, 20, 10) if p >= top * 0.9])
    ax.set_xlabel(_label(ds["temperature"], "temperature"))
    ax.set_ylabel(_label(ds["pressure"], "pressure"))
    ax.grid(True)
    ax.legend(title="station, nominal time")
    ax.set_title(f"IGRA v2 soundings: first of {len(first)} stations")
    return _save(fig, out)


def ct(store: Path, out: Path, projection: int | None = None) -> Path:
    """Sinogram ``projection`` (default: the middle one; angle in degrees against detector
    position), beside the matching ground-truth slice when the store has ``truth``."""
    ds = _open(store)
    if "sinogram" not in ds:
        raise InputError(store, "no 'sinogram' variable", "quick-look a store written by 'diffinv ingest ct'")
    n = ds.sizes["projection"]
    projection = n // 2 if projection is None else projection
    if not 0 <= projection < n:
        raise InputError(store, f"projection {projection} out of range 0..{n - 1}", "give a smaller index")
    sino = ds["sinogram"].isel(projection=projection).load()
    angle = sino["angle"].values
    if sino["angle"].attrs.get("units", "rad") == "rad":
        angle = np.rad2deg(angle)
    order = np.argsort(angle, kind="stable")  # acquisition order need not be sorted
    det = sino["detector"]
    truth = "truth" in ds and ds["truth"].sizes.get("projection") == n
    fig, axes = plt.subplots(1, 2 if truth else 1, figsize=(9.6 if truth else 5.6, 4.2))
    ax = axes[0] if truth else axes
    mesh = ax.pcolormesh(det.values, angle[order], sino.values[order], shading="nearest", cmap="gray")
    fig.colorbar(mesh, ax=ax, label=_label(sino, "sinogram"))
    ax.set_xlabel(f"detector position ({det.attrs.get('units', ds.attrs.get('detector_units', 'pixel'))})")
    ax.set_ylabel("projection angle (deg)")
    ax.invert_yaxis()
    ax.set_title(f"sinogram {projection} ({ds.attrs.get('geometry', 'parallel')} beam)")
    if truth:
        img = axes[1].imshow(ds["truth"].isel(projection=projection).values, cmap="gray")
        fig.colorbar(img, ax=axes[1], label=_label(ds["truth"], "truth"))
        axes[1].set_title("ground truth")
        axes[1].set_xlabel("x (pixel)")
        axes[1].set_ylabel("y (pixel)")
    return _save(fig, out)


#: ``diffinv quicklook SOURCE``: the function and what it draws.
QUICKLOOKS = {
    "era5": (era5, "map of one variable at one level and time"),
    "igra": (igra, "temperature-pressure profiles of a few stations"),
    "ct": (ct, "one sinogram (angle x detector) and its ground truth"),
}
