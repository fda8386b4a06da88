"""IGRA v2 radiosonde soundings: station data files and derived-parameter files, plain or .gz.

Formats: NCEI, *IGRA v2.2 Format Description: Sounding Data* and *... Derived Parameters*
(19 January 2023); columns below are 1-based and inclusive, as in those documents. A file is
a sequence of soundings, each a header line starting with ``#`` followed by ``NUMLEV`` data
lines. Data files (71-column headers, 51-column levels) carry station coordinates in every
header; derived files (157-column headers, 151-column levels) do not, so their latitude and
longitude come from the station list (``station_list=igra2-station-list.txt``) or are NaN.

Store layout (one zarr store, dims ``sounding`` x ``level``): every per-level variable is a
``(sounding, level)`` array padded beyond ``num_levels[sounding]`` (NaN for floats, -1 for the
integer codes and flags); coordinates ``station``, ``latitude``, ``longitude``, ``time``
(nominal observation time) and ``launch_time`` (release time, NaT where not reported) lie
along ``sounding``. Missing codes (data files: -9999 missing, -8888 removed by QA; derived
files: -99999) become NaN, and values are converted to SI-like units (hPa, K, %, m s-1).
QC flags (blank, A, B) are kept as codes 0, 1, 2.

Files are streamed: a first pass over the headers checks the structure and finds the level
dimension, the second parses blocks of ``block_soundings`` soundings with vectorised
fixed-column parsing and appends them to the store, so memory holds one block.
"""

from __future__ import annotations

import gzip
import itertools
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import xarray as xr

from diffinv.errors import InputError
from diffinv.io import options as opt
from diffinv.io.store import provenance, set_provenance, write_zarr_blocks


@dataclass(frozen=True)
class Column:
    """An integer field at 1-based inclusive columns ``start..stop``; value = raw * scale + offset."""

    name: str
    start: int
    stop: int
    units: str
    long_name: str
    scale: float = 1.0
    offset: float = 0.0
    transform: Callable[[np.ndarray], np.ndarray] | None = None  # replaces scale/offset


@dataclass(frozen=True)
class Flag:
    """A one-character QC flag column: blank, ``A`` or ``B`` stored as 0, 1, 2."""

    name: str
    col: int
    long_name: str


@dataclass(frozen=True)
class Layout:
    """The fixed-column layout of one IGRA v2 file kind."""

    kind: str
    numlev: Column
    header_columns: tuple[Column, ...]
    level_width: int
    level_columns: tuple[Column, ...]
    level_codes: tuple[Column, ...]
    flags: tuple[Flag, ...]
    missing: tuple[int, ...]


def _mmmss_to_seconds(raw: np.ndarray) -> np.ndarray:
    """ETIME ``MMMSS`` (minutes and seconds since launch) to seconds."""
    return (raw // 100) * 60.0 + raw % 100


_NUMLEV_DATA = Column("num_levels", 33, 36, "1", "number of levels")
_NUMLEV_DERIVED = Column("num_levels", 32, 36, "1", "number of levels")
_FLAG_MEANING = "blank: not checked or passed; A: tier-1 climatological check; B: tier-2 check"

DATA = Layout(
    kind="data",
    numlev=_NUMLEV_DATA,
    header_columns=(
        Column("latitude", 56, 62, "degrees_north", "station latitude", 1e-4),
        Column("longitude", 64, 71, "degrees_east", "station longitude", 1e-4),
    ),
    level_width=51,
    level_columns=(
        Column("elapsed_time", 4, 8, "s", "time since launch", transform=_mmmss_to_seconds),
        Column("pressure", 10, 15, "hPa", "air pressure", 0.01),
        Column("geopotential_height", 17, 21, "m", "geopotential height"),
        Column("temperature", 23, 27, "K", "air temperature", 0.1, 273.15),
        Column("relative_humidity", 29, 33, "%", "relative humidity", 0.1),
        Column("dewpoint_depression", 35, 39, "K", "dewpoint depression", 0.1),
        Column("wind_direction", 41, 45, "degree", "wind from direction"),
        Column("wind_speed", 47, 51, "m s-1", "wind speed", 0.1),
    ),
    level_codes=(
        Column(
            "level_type_major", 1, 1, "1", "LVLTYP1: 1 standard pressure, 2 other pressure, 3 non-pressure"
        ),
        Column("level_type_minor", 2, 2, "1", "LVLTYP2: 1 surface, 2 tropopause, 0 other"),
    ),
    flags=(
        Flag("pressure_flag", 16, "PFLAG"),
        Flag("height_flag", 22, "ZFLAG"),
        Flag("temperature_flag", 28, "TFLAG"),
    ),
    missing=(-9999, -8888),
)

_K10 = dict(units="K", scale=0.1)
DERIVED = Layout(
    kind="derived",
    numlev=_NUMLEV_DERIVED,
    header_columns=(
        Column("precipitable_water", 38, 43, "mm", "precipitable water, surface to 500 hPa", 0.01),
        Column("inversion_pressure", 44, 49, "hPa", "pressure of the warmest level", 0.01),
        Column("inversion_height", 50, 55, "m", "height above surface of the warmest level"),
        Column(
            "inversion_temperature_difference", 56, 61, long_name="warmest minus surface temperature", **_K10
        ),
        Column("mixed_layer_pressure", 62, 67, "hPa", "pressure at the top of the mixed layer", 0.01),
        Column("mixed_layer_height", 68, 73, "m", "height of the top of the mixed layer"),
        Column("freezing_pressure", 74, 79, "hPa", "pressure of the freezing level", 0.01),
        Column("freezing_height", 80, 85, "m", "height of the freezing level"),
        Column("lcl_pressure", 86, 91, "hPa", "pressure of the lifting condensation level", 0.01),
        Column("lcl_height", 92, 97, "m", "height of the lifting condensation level"),
        Column("lfc_pressure", 98, 103, "hPa", "pressure of the level of free convection", 0.01),
        Column("lfc_height", 104, 109, "m", "height of the level of free convection"),
        Column("lnb_pressure", 110, 115, "hPa", "pressure of the level of neutral buoyancy", 0.01),
        Column("lnb_height", 116, 121, "m", "height of the level of neutral buoyancy"),
        Column("lifted_index", 122, 127, "degC", "lifted index"),
        Column("showalter_index", 128, 133, "degC", "Showalter index"),
        Column("k_index", 134, 139, "degC", "K index"),
        Column("total_totals_index", 140, 145, "degC", "total totals index"),
        Column("cape", 146, 151, "J kg-1", "convective available potential energy"),
        Column("cin", 152, 157, "J kg-1", "convective inhibition"),
    ),
    level_width=151,
    level_columns=(
        Column("pressure", 1, 7, "hPa", "air pressure", 0.01),
        Column("reported_height", 9, 15, "m", "reported geopotential height"),
        Column("calculated_height", 17, 23, "m", "calculated geopotential height"),
        Column("temperature", 25, 31, long_name="air temperature", **_K10),
        Column("temperature_gradient", 33, 39, "K km-1", "temperature gradient to the next level", 0.1),
        Column("potential_temperature", 41, 47, long_name="potential temperature", **_K10),
        Column("potential_temperature_gradient", 49, 55, "K km-1", "potential temperature gradient", 0.1),
        Column("virtual_temperature", 57, 63, long_name="virtual temperature", **_K10),
        Column("virtual_potential_temperature", 65, 71, long_name="virtual potential temperature", **_K10),
        Column("vapor_pressure", 73, 79, "hPa", "water vapour pressure", 0.001),
        Column("saturation_vapor_pressure", 81, 87, "hPa", "saturation vapour pressure", 0.001),
        Column("reported_relative_humidity", 89, 95, "%", "reported relative humidity", 0.1),
        Column("calculated_relative_humidity", 97, 103, "%", "calculated relative humidity", 0.1),
        Column("relative_humidity_gradient", 105, 111, "% km-1", "relative humidity gradient", 0.1),
        Column("eastward_wind", 113, 119, "m s-1", "zonal wind", 0.1),
        Column("eastward_wind_gradient", 121, 127, "m s-1 km-1", "vertical gradient of the zonal wind", 0.1),
        Column("northward_wind", 129, 135, "m s-1", "meridional wind", 0.1),
        Column(
            "northward_wind_gradient", 137, 143, "m s-1 km-1", "vertical gradient of the meridional wind", 0.1
        ),
        Column("refractive_index", 145, 151, "1", "refractive index (N units)"),
    ),
    level_codes=(),
    flags=(),
    missing=(-99999,),
)

OPTIONS = {
    "time": opt.Option(
        opt.DateRange, "[start, stop] ISO dates of the nominal observation time, both included"
    ),
    "lat": opt.Option(opt.FloatPair, "[south, north] station latitude box in degrees"),
    "lon": opt.Option(opt.FloatPair, "[west, east] station longitude box in degrees, either convention"),
    "stations": opt.Option(list[str], "list of IGRA station ids to keep"),
    "station_list": opt.Option(opt.FilePath, "igra2-station-list.txt giving coordinates to derived files"),
    "block_soundings": opt.Option(opt.PositiveInt, "soundings parsed and written per block (default 500)"),
}

_TIME_ENCODING = {"units": "seconds since 1970-01-01", "dtype": "int64"}


@dataclass(frozen=True)
class Header:
    """One parsed header line."""

    line: int
    station: str
    time: np.datetime64
    launch_time: np.datetime64
    num_levels: int
    values: tuple[float, ...]  # Layout.header_columns, converted


@dataclass(frozen=True)
class Selection:
    """Which soundings to keep: time range, lat/lon box, station ids."""

    time: tuple[np.datetime64, np.datetime64] | None = None
    lat: tuple[float, float] | None = None
    lon: tuple[float, float] | None = None
    stations: frozenset[str] | None = None

    def keeps(self, h: Header, lat: float, lon: float) -> bool:
        """Whether the sounding of header ``h`` at (lat, lon) is selected."""
        if self.stations is not None and h.station not in self.stations:
            return False
        if self.time is not None and not opt.in_time(h.time, self.time):
            return False
        if self.lat is not None and not opt.in_lat(lat, self.lat):
            return False
        return self.lon is None or bool(opt.in_lon(lon, self.lon))


# --- reading ------------------------------------------------------------------------------


def _open(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _records(path: Path) -> Iterator[tuple[int, bytes, list[bytes]]]:
    """Yield ``(header_line_number, header, level_lines)`` per sounding, checking the structure.

    A header followed by no level lines at the end of the file is dropped with a warning
    (the archive's files sometimes end so); any other count mismatch is an error.
    """
    try:
        with _open(path) as fh:
            header: bytes | None = None
            header_no = 0
            levels: list[bytes] = []
            for number, raw in enumerate(fh, start=1):
                line = raw.rstrip(b"\r\n")
                if not line.strip():
                    continue
                if line[:1] == b"#":
                    if header is not None:
                        _check_count(path, header_no, header, len(levels), at_end=False)
                        yield header_no, header, levels
                    header, header_no, levels = line, number, []
                elif header is None:
                    raise InputError(
                        f"{path}, line {number}",
                        "level line before any header line: not an IGRA v2 file",
                        "pass IGRA v2 station data or derived files",
                    )
                else:
                    levels.append(line)
            if header is None:
                raise InputError(
                    path,
                    "no header line starting with '#': not an IGRA v2 file (or empty)",
                    "pass IGRA v2 station data or derived files",
                )
            if levels or _numlev(path, header_no, header) == 0:
                _check_count(path, header_no, header, len(levels), at_end=True)
                yield header_no, header, levels
            else:
                warnings.warn(
                    f"{path}, line {header_no}: header without levels at the end of the file ignored",
                    stacklevel=2,
                )
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise InputError(path, f"truncated or corrupt gzip file ({exc})", "download the file again") from exc


def _layout(path: Path, header_no: int, header: bytes) -> Layout:
    width = len(header)
    if width >= DERIVED.header_columns[-1].stop:
        return DERIVED
    if width >= DATA.header_columns[-1].stop:
        return DATA
    raise InputError(
        f"{path}, line {header_no}",
        f"header line has {width} columns; IGRA v2 headers have 71 (data) or 157 (derived)",
        "pass unmodified IGRA v2 files",
    )


def _numlev(path: Path, header_no: int, header: bytes) -> int:
    col = _layout(path, header_no, header).numlev
    return _int_field(path, header_no, header, col)


def _check_count(path: Path, header_no: int, header: bytes, found: int, at_end: bool) -> None:
    declared = _numlev(path, header_no, header)
    if found != declared:
        where = "the file ends" if at_end else "the next header comes"
        raise InputError(
            f"{path}, line {header_no}",
            f"header declares {declared} levels but {where} after {found}",
            "the file is truncated or edited; download it again",
        )


def _int_field(path: Path, number: int, line: bytes, col: Column) -> int:
    text = line[col.start - 1 : col.stop]
    try:
        return int(text)
    except ValueError:
        raise InputError(
            f"{path}, line {number}",
            f"columns {col.start}-{col.stop} ({col.name}) hold {text.decode(errors='replace')!r}, "
            "not an integer",
            "pass unmodified IGRA v2 files",
        ) from None


def _datetime(
    path: Path, number: int, year: int, month: int, day: int, hour: int, minute: int = 0
) -> np.datetime64:
    try:
        return np.datetime64(f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}", "ns")
    except ValueError:
        raise InputError(
            f"{path}, line {number}",
            f"invalid date {year}-{month}-{day} {hour}:{minute}",
            "pass unmodified IGRA v2 files",
        ) from None


_YEAR, _MONTH, _DAY, _HOUR, _RELTIME = (
    Column(n, a, b, "1", n)
    for n, a, b in [
        ("year", 14, 17),
        ("month", 19, 20),
        ("day", 22, 23),
        ("hour", 25, 26),
        ("reltime", 28, 31),
    ]
)


def _parse_header(path: Path, number: int, line: bytes, layout: Layout) -> Header:
    """Parse one header line: nominal time (HOUR 99: release time, else 00 UTC) and release time."""
    year, month, day, hour, reltime = (
        _int_field(path, number, line, c) for c in (_YEAR, _MONTH, _DAY, _HOUR, _RELTIME)
    )
    rel_hour, rel_min = divmod(reltime, 100)
    launch = np.datetime64("NaT", "ns")
    if rel_hour < 24:
        launch = _datetime(path, number, year, month, day, rel_hour, 0 if rel_min == 99 else rel_min)
    if hour < 24:
        nominal = _datetime(path, number, year, month, day, hour)
        if launch - nominal > np.timedelta64(12, "h"):  # e.g. nominal 00 UTC released at 23:30 the day before
            launch = launch - np.timedelta64(1, "D")
    else:
        nominal = launch if not np.isnat(launch) else _datetime(path, number, year, month, day, 0)
    raws = (_int_field(path, number, line, c) for c in layout.header_columns)
    values = tuple(
        np.nan if raw in layout.missing else raw * c.scale + c.offset
        for raw, c in zip(raws, layout.header_columns)
    )
    station = line[1:12].decode("ascii", errors="replace").strip()
    return Header(number, station, nominal, launch, _int_field(path, number, line, layout.numlev), values)


def _convert(raw: np.ndarray, col: Column, missing: Sequence[int]) -> np.ndarray:
    bad = np.isin(raw, missing)
    values = col.transform(raw) if col.transform else raw * col.scale + col.offset
    return np.where(bad, np.nan, values).astype(np.float64)


def _parse_ints(rows: np.ndarray, col: Column) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised integer parsing of columns ``col`` of fixed-width ASCII ``rows`` (n, width) uint8.

    Returns the values and a mask of rows whose field is not a (right-aligned) integer.
    """
    field = rows[:, col.start - 1 : col.stop]
    digit = (field >= ord("0")) & (field <= ord("9"))
    minus = field == ord("-")
    value = np.zeros(len(field), np.int64)
    for j in range(field.shape[1]):
        value = np.where(digit[:, j], value * 10 + (field[:, j] - ord("0")), value)
    bad = ~(digit | minus | (field == ord(" "))).all(axis=1) | ~digit.any(axis=1) | (minus.sum(axis=1) > 1)
    return np.where(minus.any(axis=1), -value, value), bad


def _parse_flags(rows: np.ndarray, flag: Flag) -> tuple[np.ndarray, np.ndarray]:
    char = rows[:, flag.col - 1]
    code = np.select([char == ord(" "), char == ord("A"), char == ord("B")], [0, 1, 2], -1).astype(np.int8)
    return code, code < 0


def _level_rows(path: Path, lines: list[bytes], numbers: np.ndarray, width: int) -> np.ndarray:
    short = [i for i, line in enumerate(lines) if len(line) < width]
    if short:
        i = short[0]
        raise InputError(
            f"{path}, line {numbers[i]}",
            f"level line has {len(lines[i])} columns, expected {width}",
            "pass unmodified IGRA v2 files; data and derived files cannot be mixed within one file",
        )
    buf = b"".join(line[:width] for line in lines)
    return np.frombuffer(buf, dtype=np.uint8).reshape(len(lines), width)


def _block(
    path: Path,
    layout: Layout,
    headers: list[Header],
    coords: list[tuple[float, float]],
    lines: list[bytes],
    numbers: np.ndarray,
    max_levels: int,
) -> xr.Dataset:
    """Parse the level lines of a block of soundings into a padded (sounding, level) dataset."""
    counts = np.array([h.num_levels for h in headers], dtype=np.int32)
    rows = _level_rows(path, lines, numbers, layout.level_width)
    which = np.repeat(np.arange(len(headers)), counts)
    level = np.arange(len(lines)) - np.repeat(np.cumsum(counts) - counts, counts)
    shape = (len(headers), max_levels)

    def checked(parsed: tuple[np.ndarray, np.ndarray], name: str, start: int, stop: int) -> np.ndarray:
        values, bad = parsed
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            text = bytes(rows[i, start - 1 : stop]).decode(errors="replace")
            raise InputError(
                f"{path}, line {numbers[i]}",
                f"columns {start}-{stop} ({name}) hold {text!r}",
                "pass unmodified IGRA v2 files with the NCEI fixed columns",
            )
        return values

    def padded(values: np.ndarray, fill: float, dtype: type) -> np.ndarray:
        out = np.full(shape, fill, dtype)
        out[which, level] = values
        return out

    dims = ("sounding", "level")
    data: dict[str, Any] = {
        "num_levels": (("sounding",), counts, {"long_name": "number of levels in the sounding", "units": "1"})
    }
    for col in layout.level_columns:
        raw = checked(_parse_ints(rows, col), col.name, col.start, col.stop)
        data[col.name] = (
            dims,
            padded(_convert(raw, col, layout.missing), np.nan, np.float32),
            {"units": col.units, "long_name": col.long_name},
        )
    for col in layout.level_codes:
        raw = checked(_parse_ints(rows, col), col.name, col.start, col.stop)
        data[col.name] = (
            dims,
            padded(raw, -1, np.int8),
            {"long_name": col.long_name, "comment": "-1 beyond num_levels"},
        )
    for flag in layout.flags:
        code = checked(_parse_flags(rows, flag), flag.name, flag.col, flag.col)
        data[flag.name] = (
            dims,
            padded(code, -1, np.int8),
            {
                "long_name": f"{flag.long_name} QC flag",
                "flag_values": [0, 1, 2],
                "flag_meanings": "blank A B",
                "comment": f"{_FLAG_MEANING}; -1 beyond num_levels",
            },
        )
    for k, col in enumerate(layout.header_columns):
        if col.name in ("latitude", "longitude"):
            continue
        data[col.name] = (
            ("sounding",),
            np.array([h.values[k] for h in headers], np.float32),
            {"units": col.units, "long_name": col.long_name},
        )
    lat, lon = (np.array(v, np.float64) for v in zip(*coords)) if coords else (np.zeros(0), np.zeros(0))
    return xr.Dataset(
        data,
        coords={
            "station": (
                "sounding",
                np.array([h.station for h in headers], dtype=object),
                {"long_name": "IGRA v2 station id"},
            ),
            "latitude": (
                "sounding",
                lat,
                {"units": "degrees_north", "long_name": "station latitude", "standard_name": "latitude"},
            ),
            "longitude": (
                "sounding",
                lon,
                {"units": "degrees_east", "long_name": "station longitude", "standard_name": "longitude"},
            ),
            "time": (
                "sounding",
                np.array([h.time for h in headers], "datetime64[ns]"),
                {"long_name": "nominal observation time", "standard_name": "time"},
            ),
            "launch_time": (
                "sounding",
                np.array([h.launch_time for h in headers], "datetime64[ns]"),
                {"long_name": "balloon release time (NaT where not reported)"},
            ),
        },
        attrs={"source": f"IGRA v2 {layout.kind} files", "featureType": "profile", "Conventions": "CF-1.10"},
    )


def read_station_list(path: str | Path) -> dict[str, tuple[float, float]]:
    """Station coordinates ``{id: (lat, lon)}`` from ``igra2-station-list.txt``.

    Columns: ID 1-11, LAT 13-20, LON 22-30.
    """
    path = Path(path)
    out: dict[str, tuple[float, float]] = {}
    with open(path, encoding="ascii", errors="replace") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                out[line[0:11].strip()] = (float(line[12:20]), float(line[21:30]))
            except ValueError:
                raise InputError(
                    f"{path}, line {number}",
                    "latitude/longitude columns 13-20, 22-30 are not numbers",
                    "pass the NCEI igra2-station-list.txt",
                ) from None
    return out


class _Reader:
    """Streams the selected soundings of IGRA v2 files as blocks of padded datasets."""

    def __init__(
        self,
        paths: Sequence[Path],
        selection: Selection,
        stations: dict[str, tuple[float, float]] | None,
        block_soundings: int,
    ) -> None:
        self.paths, self.selection, self.stations, self.block_soundings = (
            list(paths),
            selection,
            stations,
            block_soundings,
        )
        self.layout: Layout | None = None

    def _coords(self, path: Path, layout: Layout, header: Header) -> tuple[float, float]:
        if layout is DATA:
            return header.values[0], header.values[1]
        if self.stations is None:
            if self.selection.lat or self.selection.lon:
                raise InputError(
                    path,
                    "derived files carry no station coordinates, so a lat/lon box cannot be applied",
                    "pass station_list=igra2-station-list.txt",
                )
            return np.nan, np.nan
        if header.station not in self.stations:
            raise InputError(
                f"{path}, line {header.line}",
                f"station {header.station} is not in the station list",
                "pass the current igra2-station-list.txt",
            )
        return self.stations[header.station]

    def _selected(self, path: Path) -> Iterator[tuple[Layout, Header, tuple[float, float], int, list[bytes]]]:
        for number, line, levels in _records(path):
            layout = _layout(path, number, line)
            if self.layout is None:
                self.layout = layout
            elif layout is not self.layout:
                raise InputError(
                    f"{path}, line {number}",
                    f"an IGRA v2 {layout.kind} file among {self.layout.kind} files",
                    "ingest data and derived files into separate stores",
                )
            header = _parse_header(path, number, line, layout)
            coords = self._coords(path, layout, header)
            if self.selection.keeps(header, *coords):
                yield layout, header, coords, number, levels

    def scan(self) -> int:
        """First pass: check every file and return the largest selected level count."""
        most = 0
        for path in self.paths:
            for _, header, *_ in self._selected(path):
                most = max(most, header.num_levels)
        return most

    def blocks(self, max_levels: int) -> Iterator[xr.Dataset]:
        """Second pass: yield blocks of at most ``block_soundings`` selected soundings."""
        for path in self.paths:
            headers: list[Header] = []
            coords: list[tuple[float, float]] = []
            lines: list[bytes] = []
            numbers: list[np.ndarray] = []
            for layout, header, where, number, levels in self._selected(path):
                headers.append(header)
                coords.append(where)
                lines.extend(levels)
                numbers.append(np.arange(number + 1, number + 1 + len(levels)))
                if len(headers) == self.block_soundings:
                    yield _block(path, layout, headers, coords, lines, np.concatenate(numbers), max_levels)
                    headers, coords, lines, numbers = [], [], [], []
            if headers:
                yield _block(path, self.layout, headers, coords, lines, np.concatenate(numbers), max_levels)


def _reader(paths: Iterable[str | Path], options: dict[str, Any]) -> _Reader:
    opt.check_options("ingest igra", options, OPTIONS)
    files = opt.input_files(paths, (".txt", ".txt.gz"), "IGRA v2")
    stations = options.get("stations")
    selection = Selection(
        time=opt.time_range(options.get("time")),
        lat=opt.float_range("lat", options.get("lat")),
        lon=opt.lon_box(options.get("lon")),
        stations=frozenset(map(str, stations)) if stations is not None else None,
    )
    station_list = options.get("station_list")
    return _Reader(
        files,
        selection,
        read_station_list(station_list) if station_list else None,
        int(options.get("block_soundings", 500)),
    )


def read_igra(paths: str | Path | Iterable[str | Path], **options: Any) -> xr.Dataset:
    """Read IGRA v2 files into one in-memory ``(sounding, level)`` dataset.

    Parameters
    ----------
    paths
        IGRA v2 station data or derived-parameter files (plain or ``.gz``), or folders.
    **options
        Selection options, see :data:`OPTIONS` and :mod:`diffinv.io.options`.

    Returns
    -------
    xarray.Dataset
        The layout described in this module's docstring (for large archives use
        :func:`ingest`, which streams).
    """
    reader = _reader([paths] if isinstance(paths, (str, Path)) else paths, options)
    blocks = list(reader.blocks(reader.scan()))
    if not blocks:
        raise InputError(
            ", ".join(map(str, reader.paths)),
            "no soundings selected",
            "widen the time/lat/lon/stations options",
        )
    return (
        xr.concat(blocks, dim="sounding", data_vars="all", coords="minimal", join="exact")
        if len(blocks) > 1
        else blocks[0]
    )


def iter_igra_soundings(path: str | Path, **options: Any) -> Iterator[xr.Dataset]:
    """Yield the selected soundings of one IGRA v2 file one at a time, each trimmed to its levels.

    Each item is a dataset with dimension ``level`` (length ``num_levels``) and the header
    values as scalar coordinates and variables; see the module docstring for names and units.
    """
    reader = _reader([path], options)
    for block in reader.blocks(reader.scan()):
        for i in range(block.sizes["sounding"]):
            sounding = block.isel(sounding=i)
            yield sounding.isel(level=slice(0, int(sounding["num_levels"])))


def ingest(inputs: list[Path], out: Path, **options: Any) -> Path:
    """Stream IGRA v2 files into a ``(sounding, level)`` zarr store at ``out``.

    Parameters
    ----------
    inputs
        IGRA v2 data or derived files (plain or ``.gz``), or folders holding them.
    out
        The zarr store to write (atomically: nothing appears on error).
    **options
        See :data:`OPTIONS`.
    """
    reader = _reader(inputs, options)
    blocks = reader.blocks(reader.scan())
    first = next(blocks, None)
    if first is None:
        raise InputError(
            ", ".join(map(str, reader.paths)),
            "no soundings selected",
            "widen the time/lat/lon/stations options",
        )
    set_provenance(
        first,
        provenance(source_files=[str(p) for p in reader.paths], options=options, reader="diffinv.io.igra"),
    )
    first.attrs["layout"] = "soundings x levels, padded beyond num_levels (NaN, or -1 for codes and flags)"
    encoding: dict[str, dict[str, Any]] = {"time": _TIME_ENCODING, "launch_time": _TIME_ENCODING}
    for name, var in first.data_vars.items():
        if var.dims == ("sounding", "level"):
            encoding[name] = {"chunks": (reader.block_soundings, var.shape[1])}
    return write_zarr_blocks(itertools.chain([first], blocks), out, "sounding", encoding, "ingest igra")
