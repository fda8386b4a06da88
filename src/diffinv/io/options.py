"""Reader inputs and options shared by the ingest readers: folders, validation, selections.

Every reader takes its options as keyword arguments (``diffinv ingest SOURCE ... --set
key=value``). The selection options mean the same in every reader:

- ``time: [start, stop]``: ISO 8601 strings, both ends included;
- ``lat: [south, north]``: degrees north, both ends included;
- ``lon: [west, east]``: degrees east in either convention (−180..180 or 0..360); the box
  runs eastwards from ``west`` to ``east``, so ``[350, 10]`` is a 20° box across Greenwich.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diffinv.errors import ConfigError, InputError

#: Longitude conventions an ingested store can declare (``attrs["longitude_convention"]``).
LON_CONVENTIONS = ("-180..180", "0..360")


def check_options(context: str, options: Mapping[str, Any], valid: Mapping[str, str]) -> None:
    """Raise :class:`ConfigError` naming the first unknown option and listing the valid ones."""
    unknown = sorted(set(options) - set(valid))
    if unknown:
        listing = "; ".join(f"{k}: {v}" for k, v in sorted(valid.items()))
        raise ConfigError(f"{context}: unknown option {unknown[0]!r} (fix: use one of: {listing})")


def _pair(name: str, value: Any) -> tuple[Any, Any]:
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise ConfigError(
            f"option {name}={value!r}: expected a list of two values (fix: e.g. --set {name}=[a,b])"
        )
    return value[0], value[1]


def time_range(value: Any) -> tuple[np.datetime64, np.datetime64] | None:
    """``[start, stop]`` as two ``datetime64[ns]`` (both ends included), or ``None``."""
    if value is None:
        return None
    start, stop = _pair("time", value)
    try:
        lo, hi = np.datetime64(str(start), "ns"), np.datetime64(str(stop), "ns")
    except ValueError as exc:
        raise ConfigError(
            f"option time={value!r}: not ISO 8601 dates (fix: e.g. --set time=[2015-01-01,2015-02-01T12])"
        ) from exc
    if hi < lo:
        raise ConfigError(f"option time={value!r}: stop before start (fix: give [start, stop])")
    return lo, hi


def float_range(name: str, value: Any) -> tuple[float, float] | None:
    """``[low, high]`` as two floats with low <= high, or ``None``."""
    if value is None:
        return None
    lo, hi = (float(v) for v in _pair(name, value))
    if hi < lo:
        raise ConfigError(f"option {name}={value!r}: first value above the second (fix: give [low, high])")
    return lo, hi


def lon_box(value: Any) -> tuple[float, float] | None:
    """``[west, east]`` as two floats (any convention; west > east crosses the seam), or ``None``."""
    if value is None:
        return None
    west, east = (float(v) for v in _pair("lon", value))
    return west, east


def in_time(t: np.ndarray, rng: tuple[np.datetime64, np.datetime64] | None) -> np.ndarray:
    """Boolean mask of times inside ``rng`` (all true when ``rng`` is ``None``)."""
    t = np.asarray(t, dtype="datetime64[ns]")
    if rng is None:
        return np.ones(t.shape, bool)
    return (t >= rng[0]) & (t <= rng[1])


def in_lat(lat: np.ndarray, rng: tuple[float, float] | None) -> np.ndarray:
    """Boolean mask of latitudes inside ``rng`` (all true when ``rng`` is ``None``)."""
    lat = np.asarray(lat, dtype=float)
    if rng is None:
        return np.ones(lat.shape, bool)
    return (lat >= rng[0]) & (lat <= rng[1])


def in_lon(lon: np.ndarray, box: tuple[float, float] | None) -> np.ndarray:
    """Boolean mask of longitudes inside the eastward box ``[west, east]``, any convention."""
    lon = np.asarray(lon, dtype=float)
    if box is None:
        return np.ones(lon.shape, bool)
    west, east = box
    width = (east - west) % 360.0 or (360.0 if east != west else 0.0)
    return (lon - west) % 360.0 <= width


def wrap_lon(lon: np.ndarray, convention: str) -> np.ndarray:
    """Longitudes mapped into ``convention`` (``"-180..180"``: [−180, 180); ``"0..360"``: [0, 360))."""
    if convention not in LON_CONVENTIONS:
        raise ConfigError(
            f"option lon_convention={convention!r}: unknown (fix: use one of {', '.join(LON_CONVENTIONS)})"
        )
    lon = np.asarray(lon, dtype=float)
    return (lon + 180.0) % 360.0 - 180.0 if convention == "-180..180" else lon % 360.0


def input_files(
    paths: Iterable[str | Path],
    suffixes: tuple[str, ...],
    what: str,
    is_input: Callable[[Path], bool] = lambda p: False,
) -> list[Path]:
    """Files, and the files of folders whose names end with ``suffixes`` (sorted, not recursive).

    A folder for which ``is_input`` is true (e.g. a zarr store) is an input itself.
    """
    out: list[Path] = []
    paths = [Path(p) for p in paths]
    for p in paths:
        if p.is_dir() and not is_input(p):
            out.extend(sorted(q for q in p.iterdir() if q.is_file() and q.name.lower().endswith(suffixes)))
        elif p.exists():
            out.append(p)
        else:
            raise InputError(p, "no such file or folder", "fix the path")
    if not out:
        raise InputError(
            ", ".join(map(str, paths)),
            f"no {what} files ({', '.join('*' + s for s in suffixes)}) found",
            f"pass {what} files or folders holding them",
        )
    return out
