"""ERA5 (and other ECMWF reanalysis) fields: CDS netCDF, GRIB and ARCO-style zarr, one schema.

Accepted inputs (detected from the file's first bytes, or a folder for zarr):

- CDS netCDF, new layout (2024 CDS: ``valid_time`` in seconds since 1970, ``pressure_level``,
  ``number``, string ``expver``) and legacy layout (``data_format: netcdf_legacy`` or the old
  CDS: ``time``, ``level`` in millibars, int16 packing with ``scale_factor``/``add_offset``);
- GRIB 1/2 through cfgrib and ecCodes (install extra ``diffinv[grib]``);
- ARCO-ERA5-style zarr (v2 or v3: ``time, level, latitude, longitude`` with long variable
  names such as ``temperature``).

Output schema (``read_era5`` and the store written by ``ingest``):

- dims ``(time, [member,] [level,] latitude, longitude)``; single-level fields have no
  ``level``; ``member`` only for ensembles (from ``number``);
- ``time`` datetime64[ns] (the valid time); ``level`` in hPa; ``latitude`` ascending;
  ``longitude`` in the declared convention (option ``lon_convention``, default ``-180..180``,
  recorded in ``attrs["longitude_convention"]``), ascending;
- variables with packing decoded (float32 in the store), ECMWF short names (``t``, ``z``, ``u``, ``v``, ``q``,
  ``t2m``...), CF ``units``, ``long_name`` and ``standard_name`` kept;
- ``expver(time)`` as an integer (1 ERA5, 5 ERA5T) where the input has it.

Files with a ``month`` axis (monthly climatologies such as the ERA-Interim sample) get a
nominal ``time`` on the first of each month of ``climatology_year`` and keep ``month``.

Conversion streams ``time_chunk`` time steps at a time, so memory holds one chunk.
"""

from __future__ import annotations

import itertools
import json
import math
import mmap
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Annotated, Any, Literal

import numpy as np
import xarray as xr
import zarr

from diffinv.errors import InputError
from diffinv.io import options as opt
from diffinv.io.store import provenance, set_provenance, write_zarr_blocks

OPTIONS = {
    "variables": opt.Option(list[str] | str, "list of variable names to keep (short names, e.g. [t, z])"),
    "levels": opt.Option(list[float] | float, "list of pressure levels to keep, hPa"),
    "time": opt.Option(opt.DateRange, "[start, stop] ISO dates, both included"),
    "lat": opt.Option(opt.FloatPair, "[south, north] latitude box in degrees"),
    "lon": opt.Option(opt.FloatPair, "[west, east] longitude box in degrees, either convention"),
    "lon_convention": opt.Option(
        Literal[opt.LON_CONVENTIONS], "longitudes of the output: -180..180 (default) or 0..360"
    ),
    "time_chunk": opt.Option(
        opt.PositiveInt, "time steps converted and written per chunk (default: about 64 MB per chunk)"
    ),
    "grib_filter": opt.Option(
        dict[str, Any],
        "cfgrib filter_by_keys for GRIB files that mix level types, e.g. {typeOfLevel: isobaricInhPa}",
    ),
    "climatology_year": opt.Option(
        Annotated[int, opt.NS_YEAR],
        "nominal year for files with a month axis instead of time (default 2000)",
    ),
    "allow_missing_chunks": opt.Option(
        bool,
        "zarr inputs: read chunks absent from the store as the fill value (default false: refuse, "
        "since a lost chunk cannot be told from one left out on purpose)",
    ),
}

#: Dimension order of the schema.
DIMS = ("time", "member", "level", "latitude", "longitude")
_LEVEL_NAMES = ("pressure_level", "level", "isobaricInhPa", "isobaricInPa", "plev")
_HPA_UNITS = ("hPa", "millibars", "millibar", "mbar", "mb")
_KEEP_ATTRS = ("units", "long_name", "standard_name")
#: ARCO-ERA5 / WeatherBench2 long names to the ECMWF short names used by CDS files.
ARCO_NAMES = {
    "temperature": "t",
    "geopotential": "z",
    "u_component_of_wind": "u",
    "v_component_of_wind": "v",
    "specific_humidity": "q",
    "relative_humidity": "r",
    "vertical_velocity": "w",
    "2m_temperature": "t2m",
    "10m_u_component_of_wind": "u10",
    "10m_v_component_of_wind": "v10",
    "mean_sea_level_pressure": "msl",
    "surface_pressure": "sp",
}
_CHUNK_BYTES = 64 * 2**20
_TIME_ENCODING = {"units": "seconds since 1970-01-01", "dtype": "int64"}


def _is_zarr(path: Path) -> bool:
    return any((path / name).exists() for name in ("zarr.json", ".zgroup", ".zattrs"))


def _consolidated(path: Path) -> bool:
    """Whether a zarr store has consolidated metadata (v2 ``.zmetadata`` or in v3 ``zarr.json``)."""
    if (path / ".zmetadata").exists():
        return True
    meta = path / "zarr.json"
    return meta.exists() and json.loads(meta.read_text()).get("consolidated_metadata") is not None


def open_era5(
    path: str | Path, grib_filter: dict[str, Any] | None = None, allow_missing_chunks: bool = False
) -> xr.Dataset:
    """Open one netCDF, GRIB or zarr input lazily, as it comes (no normalisation).

    The input is checked against its own metadata first: netCDF classic files must be as long
    as their header says, GRIB messages complete, zarr chunks present (unless
    ``allow_missing_chunks``).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file or folder", "fix the path")
    with opt.reading(path), warnings.catch_warnings():
        # int16 fields with a NaN _FillValue (legacy ERA-Interim files): no int16 value can match it
        warnings.filterwarnings("ignore", "variable .* non-conforming '_FillValue'", xr.SerializationWarning)
        if path.is_dir():
            _check_zarr(path, allow_missing_chunks)
            return xr.open_dataset(path, engine="zarr", chunks=None, consolidated=_consolidated(path))
        with open(path, "rb") as fh:
            magic = fh.read(8)
        if magic[:4] == b"GRIB":
            _check_grib(path)
            return _open_grib(path, grib_filter)
        if magic[:3] == b"CDF":
            _check_netcdf3(path)
            return xr.open_dataset(path, engine="netcdf4", chunks=None)
        if magic[:8] == b"\x89HDF\r\n\x1a\n":  # netCDF-4: h5py's small chunk cache keeps memory to a chunk
            return xr.open_dataset(path, engine="h5netcdf", chunks=None)
    raise InputError(
        path,
        f"unknown format (first bytes {magic[:4]!r}): expected netCDF, GRIB or a zarr folder",
        "pass ERA5 netCDF, GRIB or zarr",
    )


# --- completeness checks against the file's own metadata ------------------------------------

#: Bytes per value of the netCDF classic types (1 byte .. 6 double; 7..11: CDF-5 only).
_NC_TYPE_BYTES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 4, 6: 8, 7: 1, 8: 2, 9: 4, 10: 8, 11: 8}
_NC_DIMENSION, _NC_VARIABLE, _NC_ATTRIBUTE = 10, 11, 12


def _netcdf3_size(fh: IO[bytes], size: int) -> int:
    """Bytes a netCDF classic file (CDF-1, CDF-2 or CDF-5) must hold according to its header.

    The header (netCDF classic format specification) lists the dimension lengths, the number of
    records and each variable's type, dimensions and data offset; the file must reach the end
    of the last variable's last record. Raises EOFError, ValueError, KeyError or IndexError for a
    header that is cut short or corrupt.
    """

    def take(n: int) -> bytes:
        if fh.tell() + n > size:
            raise EOFError("the header ends early")
        return fh.read(n)

    version = take(4)[3]
    if version not in (1, 2, 5):
        raise ValueError(f"unknown netCDF classic format version {version}")
    width = 8 if version == 5 else 4  # CDF-5 counts and lengths are 64-bit

    def number(n: int = width) -> int:
        return int.from_bytes(take(n), "big")

    def skip_name() -> None:
        n = number()
        take(n + -n % 4)

    def listing(tag: int) -> int:
        found, n = number(4), number()
        if found != tag and (found, n) != (0, 0):
            raise ValueError(f"list tag {found} where {tag} or absent was expected")
        return n

    def skip_attributes() -> None:
        for _ in range(listing(_NC_ATTRIBUTE)):
            skip_name()
            kind = number(4)
            n = number() * _NC_TYPE_BYTES[kind]
            take(n + -n % 4)

    records = number()
    dims = []
    for _ in range(listing(_NC_DIMENSION)):
        skip_name()
        dims.append(number())
    skip_attributes()
    variables = []  # (begin, is a record variable, bytes per record or in all)
    for _ in range(listing(_NC_VARIABLE)):
        skip_name()
        shape = [dims[number()] for _ in range(number())]
        skip_attributes()
        kind = number(4)
        number()  # vsize: recomputed below (it saturates for variables over 4 GiB)
        begin = number(4 if version == 1 else 8)
        is_record = bool(shape) and shape[0] == 0
        variables.append((begin, is_record, math.prod(shape[is_record:]) * _NC_TYPE_BYTES[kind]))
    header = fh.tell()
    if any(begin < header for begin, _, _ in variables):
        raise ValueError("a variable's data begins inside the header")
    sizes = [n for _, is_record, n in variables if is_record]
    record_bytes = sum(n + -n % 4 for n in sizes) if len(sizes) > 1 else sum(sizes)
    streaming = records == 2 ** (8 * width) - 1  # the number of records is not recorded
    ends = [begin + n for begin, is_record, n in variables if not is_record]
    if records and not streaming:
        ends += [begin + (records - 1) * record_bytes + n for begin, is_record, n in variables if is_record]
    return max(ends, default=header)


def _check_netcdf3(path: Path) -> None:
    """Refuse a netCDF classic file shorter than its header declares (a cut download)."""
    size = path.stat().st_size
    with open(path, "rb") as fh, opt.reading(path, "netCDF header truncated or corrupt"):
        expected = _netcdf3_size(fh, size)
    if size < expected:
        raise InputError(
            path,
            f"truncated or corrupt: its netCDF header declares {expected} bytes, the file has {size}",
            "the download was cut short; download the file again",
        )


def _check_grib(path: Path) -> None:
    """Refuse a GRIB file that ends inside a message.

    Section 0 of each message declares its total length (edition 1: 3 bytes at offset 4,
    edition 2: 8 bytes at offset 8) and the message ends with ``7777``. Bytes between messages
    (edition 1 pads messages to multiples of 120 bytes) are skipped; after the last complete
    message only zero padding may follow.
    """
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        size, pos, count = len(mm), 0, 0
        while (start := mm.find(b"GRIB", pos)) >= 0:
            edition = mm[start + 7] if start + 16 <= size else 0
            length = int.from_bytes(
                mm[start + 4 : start + 7] if edition == 1 else mm[start + 8 : start + 16], "big"
            )
            end = start + length
            if edition == 1 and length & 0x800000:  # a "large" GRIB 1 message: section 0 has no length
                following = mm.find(b"GRIB", start + 4)
                end = mm.rfind(b"7777", start, following if following >= 0 else size) + 4
            if edition not in (1, 2) or end > size or end < start + 8 or mm[end - 4 : end] != b"7777":
                raise InputError(
                    path,
                    f"GRIB message {count + 1} (at byte {start}) is cut short or corrupt: it declares "
                    f"{length} bytes, {size - start} remain, and a message ends with '7777'",
                    "the download was cut short; download the file again",
                )
            pos, count = end, count + 1
        if mm[pos:].strip(b"\0"):
            raise InputError(
                path,
                f"the file ends with {size - pos} bytes after its {count} complete GRIB message(s) "
                "that are not a message (a message cut short)",
                "the download was cut short; download the file again",
            )


def _check_zarr(path: Path, allow_missing: bool) -> None:
    """Refuse a zarr store whose arrays lack chunks that their shape and chunk grid call for.

    The arrays' own metadata is authoritative: a consolidated copy that disagrees with it (stale
    after an append) is refused too. zarr reads an absent chunk as the array's fill value, so a
    lost chunk file would become silent NaN or fill values; ``allow_missing`` accepts stores
    that leave chunks out on purpose.
    """
    arrays = dict(zarr.open_group(path, mode="r", use_consolidated=False).arrays())
    if _consolidated(path):
        copy = {name: a.shape for name, a in zarr.open_group(path, mode="r", use_consolidated=True).arrays()}
        own = {name: a.shape for name, a in arrays.items()}
        if copy != own:
            raise InputError(
                path,
                f"the consolidated metadata (shapes {copy}) disagrees with the arrays' own ({own})",
                "consolidate the store's metadata again (zarr.consolidate_metadata)",
            )
    for name, array in arrays.items():
        absent = array.nchunks - array.nchunks_initialized
        if absent > 0 and not allow_missing:
            raise InputError(
                path,
                f"array {name!r} lacks {absent} of its {array.nchunks} chunks",
                "restore the missing chunk files (copy or download the store again), or set "
                "allow_missing_chunks=true if absent chunks stand for the fill value",
            )


def _open_grib(path: Path, grib_filter: dict[str, Any] | None) -> xr.Dataset:
    try:
        import cfgrib  # noqa: F401
    except (ImportError, RuntimeError) as exc:  # RuntimeError: cfgrib without the ecCodes library
        raise InputError(
            path, f"reading GRIB needs cfgrib and ecCodes ({exc})", "pip install 'diffinv[grib]'"
        ) from exc
    kwargs = {"indexpath": "", "filter_by_keys": dict(grib_filter or {})}
    try:
        return xr.open_dataset(
            path, engine="cfgrib", backend_kwargs=kwargs, decode_timedelta=True, chunks=None
        )
    except Exception as exc:
        if type(exc).__name__ == "DatasetBuildError":
            raise InputError(
                path,
                f"GRIB messages do not form one hypercube ({str(exc).splitlines()[0]})",
                "select one kind with --set grib_filter={typeOfLevel: isobaricInhPa} (or surface)",
            ) from exc
        raise


def _time_axis(ds: xr.Dataset, path: Path, climatology_year: int) -> xr.Dataset:
    """Rename the valid-time axis to ``time`` (datetime64[ns]); drop reference time and step."""
    if "valid_time" in ds.dims:
        return ds.rename(valid_time="time")
    if "valid_time" in ds.coords:
        vt = ds["valid_time"]
        if vt.ndim > 1:
            raise InputError(
                path,
                f"forecast fields over several reference times and steps {vt.dims}",
                "select one step with --set grib_filter={step: 0} or pass analysis fields",
            )
        ds = ds.drop_vars([c for c in ("time", "step", "valid_time") if c in ds.coords])
        if vt.ndim == 0:
            return ds.expand_dims(time=[vt.values])
        ds = ds.rename_dims({vt.dims[0]: "time"}) if vt.dims[0] != "time" else ds
        return ds.assign_coords(time=("time", vt.values))
    if "time" in ds.dims:
        return ds.drop_vars([c for c in ("step",) if c in ds.coords])
    if "month" in ds.dims:
        months = ds["month"].values
        if not np.isin(months, np.arange(1, 13)).all():
            raise InputError(
                path,
                f"the month axis holds {months.tolist()}, not months 1-12",
                "the file is truncated or corrupt; download it again",
            )
        months = months.astype(int)
        stamps = np.array([np.datetime64(f"{climatology_year:04d}-{m:02d}-01", "ns") for m in months])
        ds = ds.rename(month="time").assign_coords(
            time=("time", stamps),
            month=("time", months, {"long_name": "month of the climatology", "units": "1"}),
        )
        ds["time"].attrs["comment"] = (
            f"monthly climatology: the year {climatology_year} is nominal (option climatology_year)"
        )
        return ds
    raise InputError(
        path,
        f"unknown layout: no valid_time, time or month axis (dims {dict(ds.sizes)})",
        "pass ERA5 fields on a time axis",
    )


def _level_axis(ds: xr.Dataset, path: Path) -> xr.Dataset:
    """Rename the pressure axis to ``level`` in hPa; a scalar pressure becomes a length-1 axis."""
    name = next((n for n in _LEVEL_NAMES if n in ds.coords), None)
    if name is None:
        return ds
    units = ds[name].attrs.get("units", "")
    values = ds[name].values.astype(np.float64)
    if units == "Pa":
        values = values / 100.0
    elif units not in _HPA_UNITS and not (units == "" and values.max() <= 1100):
        raise InputError(
            path, f"pressure coordinate {name!r} has units {units!r}", "pass levels in Pa or hPa"
        )
    attrs = {
        "units": "hPa",
        "long_name": "pressure level",
        "standard_name": "air_pressure",
        "positive": "down",
    }
    if ds[name].ndim == 0:
        ds = ds.drop_vars(name)
        return ds.assign(
            {k: v.expand_dims(level=values.reshape(1)) for k, v in ds.data_vars.items()}
        ).assign_coords(level=("level", values.reshape(1), attrs))
    ds = ds.rename({name: "level"}) if name != "level" else ds
    return ds.assign_coords(level=("level", values, attrs))


def _normalise(ds: xr.Dataset, path: Path, climatology_year: int) -> xr.Dataset:
    """The schema's names, dims and coordinates, still lazy (see the module docstring)."""
    ds = ds.rename({k: v for k, v in ARCO_NAMES.items() if k in ds.data_vars and v not in ds.data_vars})
    ds = ds.rename(
        {
            k: v
            for k, v in (("lat", "latitude"), ("lon", "longitude"))
            if k in ds.variables and v not in ds.variables
        }
    )
    for name in ("latitude", "longitude"):
        if name not in ds.dims:
            raise InputError(
                path,
                f"unknown layout: no {name} axis (dims {dict(ds.sizes)})",
                "pass fields on a regular latitude/longitude grid",
            )
    ds = _time_axis(ds, path, climatology_year)
    ds = _level_axis(ds, path)
    member = next((n for n in ("number", "realization") if n in ds.dims), None)
    if member:
        ds = ds.rename({member: "member"})
    if "expver" in ds.coords and ds["expver"].dims == ("time",):
        expver = np.array([int(str(v).strip() or 0) for v in ds["expver"].values], dtype=np.int16)
        ds = ds.assign_coords(
            expver=(
                "time",
                expver,
                {"long_name": "ECMWF experiment version (1: ERA5, 5: ERA5T)", "units": "1"},
            )
        )
    keep = set(DIMS) | {"expver", "month"}
    ds = ds.drop_vars([c for c in ds.coords if c not in keep])
    for name, var in ds.data_vars.items():
        extra = set(var.dims) - set(DIMS)
        if extra:
            raise InputError(
                path,
                f"unknown layout: variable {name!r} has dimension(s) {sorted(extra)}",
                "pass fields on (time, [number,] [level,] latitude, longitude)",
            )
    ds = ds.transpose(*[d for d in DIMS if d in ds.dims])
    ds["time"] = ds["time"].astype("datetime64[ns]")
    ds["time"].attrs.update(standard_name="time", long_name="valid time")
    for name in ds.data_vars:
        attrs = {k: v for k, v in ds[name].attrs.items() if k in _KEEP_ATTRS and v != "unknown"}
        ds[name].attrs = attrs
    return ds


def _as_list(value: Any) -> list[Any] | None:
    """A scalar option value (``--set variables=t``) as a one-item list."""
    return None if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


def _select(ds: xr.Dataset, path: Path, options: dict[str, Any]) -> xr.Dataset:
    """Apply the variable, level, time and box selections and the longitude convention, lazily."""
    variables = _as_list(options.get("variables"))
    if variables is not None:
        missing = [v for v in variables if v not in ds.data_vars]
        if missing:
            raise InputError(
                path,
                f"variable {missing[0]!r} not in the file (has {', '.join(ds.data_vars)})",
                "fix the variables option",
            )
        ds = ds[list(variables)]
    levels = _as_list(options.get("levels"))
    if levels is not None:
        if "level" not in ds.dims:
            raise InputError(
                path,
                "levels selected but the file has no pressure levels",
                "drop the levels option for single-level files",
            )
        have = ds["level"].values
        missing = [lev for lev in levels if not np.isclose(have, float(lev)).any()]
        if missing:
            raise InputError(
                path,
                f"level {missing[0]} hPa not in the file (has {', '.join(f'{v:g}' for v in have)})",
                "fix the levels option",
            )
        ds = ds.isel(level=[int(np.flatnonzero(np.isclose(have, float(lev)))[0]) for lev in levels])
    ds = ds.isel(time=np.flatnonzero(opt.in_time(ds["time"].values, opt.time_range(options.get("time")))))
    lat = ds["latitude"].values
    keep = np.flatnonzero(opt.in_lat(lat, opt.float_range("lat", options.get("lat"))))
    ds = ds.isel(latitude=keep[np.argsort(lat[keep], kind="stable")])
    convention = options.get("lon_convention", "-180..180")
    box = opt.lon_box(options.get("lon"))
    lon = opt.wrap_lon(ds["longitude"].values, convention)
    keep = np.flatnonzero(opt.in_lon(lon, box))
    order = keep[np.argsort(lon[keep], kind="stable")]
    west, east = opt.wrap_lon(np.array(box), convention) if box is not None else (0.0, 0.0)
    if west > east and (box[1] - box[0]) % 360 != 0:
        raise InputError(
            path,
            f"the lon box {list(box)} crosses the seam of the {convention} convention",
            "use the other lon_convention",
        )
    ds = ds.isel(longitude=order).assign_coords(
        longitude=(
            "longitude",
            lon[order],
            {"units": "degrees_east", "long_name": "longitude", "standard_name": "longitude"},
        )
    )
    ds["latitude"].attrs = {"units": "degrees_north", "long_name": "latitude", "standard_name": "latitude"}
    ds.attrs["longitude_convention"] = convention
    return ds


def read_era5(path: str | Path, **options: Any) -> xr.Dataset:
    """Open one ERA5 input lazily in the diffinv schema, with the selections applied.

    Parameters
    ----------
    path
        A CDS netCDF (new or legacy layout), GRIB file or ARCO-style zarr folder.
    **options
        See :data:`OPTIONS` (``time_chunk`` is used by :func:`ingest` only).

    Returns
    -------
    xarray.Dataset
        Lazy dataset in the schema of the module docstring; ``.load()`` reads it.
    """
    opt.check_options("ingest era5", options, OPTIONS)
    path = Path(path)
    ds = open_era5(path, options.get("grib_filter"), options.get("allow_missing_chunks", False))
    ds = _normalise(ds, path, int(options.get("climatology_year", 2000)))
    ds = _select(ds, path, options)
    if not all(ds.sizes.values()) or not ds.data_vars:
        raise InputError(
            path, f"the selection is empty (sizes {dict(ds.sizes)})", "widen the time/lat/lon/levels options"
        )
    return ds


def _chunks(ds: xr.Dataset, path: Path, time_chunk: int) -> Iterator[xr.Dataset]:
    """Load and yield ``time_chunk`` time steps at a time as float32 with no on-disk encoding."""
    for start in range(0, ds.sizes["time"], time_chunk):
        with opt.reading(path, f"data of time steps from {start} unreadable"):
            block = ds.isel(time=slice(start, start + time_chunk)).load()
        block = block.assign({k: v.astype(np.float32) for k, v in block.data_vars.items()})
        for var in block.variables.values():
            var.encoding = {}
        yield block


def _check_compatible(first: xr.Dataset, other: xr.Dataset, path: Path) -> None:
    if set(first.data_vars) != set(other.data_vars):
        raise InputError(
            path,
            f"variables {sorted(other.data_vars)} differ from the first input's {sorted(first.data_vars)}",
            "ingest files with different variables into separate stores, or select common variables",
        )
    for dim in ("member", "level", "latitude", "longitude"):
        a, b = first.get(dim), other.get(dim)
        if (a is None) != (b is None) or (a is not None and not np.array_equal(a.values, b.values)):
            raise InputError(
                path,
                f"{dim} axis differs from the first input's",
                "ingest files on one grid and level set together, or select a common subset",
            )


def ingest(inputs: list[Path], out: Path, **options: Any) -> Path:
    """Convert ERA5 inputs, concatenated along time, into one zarr store at ``out``.

    Parameters
    ----------
    inputs
        netCDF or GRIB files, folders of them, or zarr stores, with the same variables, grid
        and levels; they are ordered by their first time and must not overlap in time.
    out
        The zarr store to write (atomically: nothing appears on error).
    **options
        See :data:`OPTIONS`.
    """
    opt.check_options("ingest era5", options, OPTIONS)
    reader_options = {k: v for k, v in options.items() if k != "time_chunk"}
    files = opt.input_files(inputs, (".nc", ".grib", ".grb", ".grib2", ".grb2"), "ERA5", is_input=_is_zarr)
    datasets = sorted(
        ((read_era5(p, **reader_options), p) for p in files), key=lambda dp: dp[0]["time"].values[0]
    )
    first = datasets[0][0]
    for (ds, path), (prev, prev_path) in zip(datasets[1:], datasets[:-1]):
        _check_compatible(first, ds, path)
        if ds["time"].values[0] <= prev["time"].values[-1]:
            raise InputError(path, f"times overlap those of {prev_path}", "pass each time step once")
    step_bytes = sum(
        v.dtype.itemsize * v.size // max(first.sizes["time"], 1) for v in first.data_vars.values()
    )
    time_chunk = int(options.get("time_chunk") or max(1, _CHUNK_BYTES // max(step_bytes, 1)))
    blocks = itertools.chain.from_iterable(_chunks(ds, path, time_chunk) for ds, path in datasets)
    head = next(blocks)
    set_provenance(
        head,
        provenance(source_files=[str(p) for _, p in datasets], options=options, reader="diffinv.io.era5"),
    )
    encoding: dict[str, dict[str, Any]] = {"time": _TIME_ENCODING}
    for name, var in head.data_vars.items():
        encoding[name] = {"chunks": (time_chunk, *var.shape[1:])}
    total = sum(-(-ds.sizes["time"] // time_chunk) for ds, _ in datasets)
    return write_zarr_blocks(itertools.chain([head], blocks), out, "time", encoding, "ingest era5", total)
