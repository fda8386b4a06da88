"""Reader inputs and options shared by the ingest readers: folders, validation, selections.

Every reader takes its options as keyword arguments (``diffinv ingest SOURCE ... --set
key=value``). The selection options mean the same in every reader:

- ``time: [start, stop]``: ISO 8601 strings, both ends included;
- ``lat: [south, north]``: degrees north, both ends included;
- ``lon: [west, east]``: degrees east in either convention (−180..180 or 0..360); the box
  runs eastwards from ``west`` to ``east``, so ``[350, 10]`` is a 20° box across Greenwich.

Option values are checked before any work starts: each reader declares its options as
:class:`Option` (a type annotation and a help text), or as annotated keyword parameters
(:func:`check_arguments`), and :func:`check_options` refuses a value of the wrong type or
range with one line naming the option.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import numpy as np
import yaml

from diffinv.errors import ConfigError, InputError

#: Longitude conventions an ingested store can declare (``attrs["longitude_convention"]``).
LON_CONVENTIONS = ("-180..180", "0..360")


@dataclass(frozen=True)
class Check:
    """``Annotated`` metadata: a test the value must pass, and what it means in words."""

    test: Callable[[Any], bool]
    description: str


def _is_file(path: str | os.PathLike) -> bool:
    try:
        return Path(path).is_file()
    except (OSError, ValueError):  # e.g. a name too long
        return False


POSITIVE = Check(lambda v: v > 0, "greater than 0")
EXISTING_FILE = Check(_is_file, "naming an existing file")
#: ``Annotated`` metadata: a year that ``datetime64[ns]`` can hold.
NS_YEAR = Check(lambda y: 1678 <= y <= 2261, "in 1678-2261")
PositiveInt = Annotated[int, POSITIVE]


def _parse_date(end: Any) -> np.datetime64 | str:
    """``end`` as ``datetime64[ns]``, or the reason it is not a date."""
    if isinstance(end, bool) or not isinstance(end, (str, int, _dt.date, np.datetime64)):
        return f"{type(end).__name__} is not a date"
    try:
        day = np.datetime64(str(end))
    except ValueError as exc:
        return str(exc)
    if np.isnat(day):
        return "no time"
    year = int(day.astype("datetime64[Y]").astype(np.int64)) + 1970
    if not NS_YEAR.test(year):
        return f"year {year} not {NS_YEAR.description}"
    return day.astype("datetime64[ns]")


#: A date of a ``time`` selection: ISO 8601 text (or a year), or a date/datetime object.
Date = Annotated[
    str | int | _dt.date | np.datetime64,
    Check(lambda v: not isinstance(_parse_date(v), str), "naming a date"),
]
DateRange = tuple[Date, Date]
FloatPair = tuple[float, float]
FilePath = Annotated[str | os.PathLike, EXISTING_FILE]


@dataclass(frozen=True)
class Option:
    """A reader option: the type its value must have (an annotation) and its help text."""

    type: Any
    help: str


def check_options(context: str, options: Mapping[str, Any], valid: Mapping[str, str | Option]) -> None:
    """Raise :class:`ConfigError` naming the first unknown option or the first value of the wrong type.

    ``valid`` maps option names to help texts, or to :class:`Option` whose type is checked.
    """
    unknown = sorted(set(options) - set(valid))
    if unknown:
        listing = "; ".join(f"{k}: {_help(v)}" for k, v in sorted(valid.items()))
        raise ConfigError(f"{context}: unknown option {unknown[0]!r} (fix: use one of: {listing})")
    for name, value in options.items():
        spec = valid[name]
        if isinstance(spec, Option):
            _check_value(context, name, value, spec.type, f"{name}: {spec.help}")


def check_arguments(context: str, func: Callable[..., Any], arguments: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` for an argument whose value does not match ``func``'s annotation."""
    hints = typing.get_type_hints(func, include_extras=True)
    for name, value in arguments.items():
        _check_value(context, name, value, hints[name], f"give {name} as {_expected(hints[name])}")


def _help(spec: str | Option) -> str:
    return spec.help if isinstance(spec, Option) else spec


def _show(value: Any) -> str:
    """``repr(value)`` on one line, shortened."""
    text = " ".join(repr(value).split())
    return text if len(text) <= 80 else text[:77] + "..."


def _check_value(context: str, name: str, value: Any, annotation: Any, fix: str) -> None:
    if not _matches(value, annotation):
        raise ConfigError(
            f"{context}: option {name}={_show(value)} is not {_expected(annotation)} (fix: {fix})"
        )


def _is_list(value: Any) -> bool:
    return isinstance(value, (list, tuple, np.ndarray))


def _finite(number: float) -> bool:
    try:
        return math.isfinite(float(number))
    except OverflowError:  # an integer beyond the float range
        return False


def _matches(value: Any, annotation: Any) -> bool:
    """Whether ``value`` (from YAML or Python) has the type ``annotation`` describes."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return True
    if origin is Annotated:
        return _matches(value, args[0]) and all(c.test(value) for c in args[1:] if isinstance(c, Check))
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is Literal:
        return any(type(value) is type(a) and value == a for a in args)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, (bool, np.bool_))
    if isinstance(value, (bool, np.bool_)):
        return False
    if annotation is int:
        return isinstance(value, (int, np.integer))
    if annotation is float:
        return isinstance(value, (int, float, np.integer, np.floating)) and _finite(value)
    if origin is tuple:
        return _is_list(value) and len(value) == len(args) and all(map(_matches, value, args))
    if origin in (list, Sequence):
        return _is_list(value) and all(_matches(v, args[0]) for v in value)
    if origin in (dict, Mapping):
        return isinstance(value, Mapping) and all(
            _matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items()
        )
    return isinstance(value, annotation)


_WORDS: dict[Any, str] = {
    bool: "true or false",
    int: "an integer",
    float: "a finite number",
    str: "text",
    os.PathLike: "a path",
    Date: f"an ISO 8601 date, year {NS_YEAR.description}",
}

_PLURALS: dict[Any, str] = {int: "integers", float: "finite numbers", str: "texts"}


def _expected(annotation: Any) -> str:
    """What ``annotation`` asks for, in words (for error messages)."""
    if annotation in _WORDS:
        return _WORDS[annotation]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return " ".join([_expected(args[0]), *(c.description for c in args[1:] if isinstance(c, Check))])
    if origin in (Union, types.UnionType):
        return " or ".join(_expected(a) for a in args if a is not type(None))
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin is tuple and len(set(args)) == 1:
        return f"a list of {len(args)} values, each {_expected(args[0])}"
    if origin is tuple:
        return f"a list of {len(args)} values ({', '.join(_expected(a) for a in args)})"
    if origin in (list, Sequence):
        return f"a list of {_PLURALS.get(args[0]) or 'values that are each ' + _expected(args[0])}"
    if origin in (dict, Mapping):
        return f"a mapping {{key: value}} of {_expected(args[0])} to {_expected(args[1])}"
    return getattr(annotation, "__name__", str(annotation))


class _ValueLoader(yaml.SafeLoader):
    """YAML for ``--set`` values: YAML 1.2 floats (``1e-5``, not text), dates left as text."""


_ValueLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ValueLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$"),
    list("-+.0123456789"),
)


def parse_value(name: str, text: str) -> Any:
    """The value of ``--set name=text``: a YAML scalar, list or mapping (dates stay text).

    Raises :class:`ConfigError` for text that is not YAML or holds a recursive value.
    """
    try:
        value = yaml.load(text, Loader=_ValueLoader)  # a SafeLoader: builds no arbitrary objects
        json.dumps(value, default=str)  # refuses the recursive values that YAML aliases can build
    except Exception as exc:  # PyYAML raises several types for bad text (ValueError, AttributeError...)
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        raise ConfigError(
            f"option {name}={text!r}: not a valid value ({reason}) "
            f"(fix: give a number, text or a list, e.g. --set {name}=[a,b])"
        ) from exc
    return value


def _pair(name: str, value: Any) -> tuple[Any, Any]:
    if not _is_list(value) or len(value) != 2:
        raise ConfigError(
            f"option {name}={_show(value)}: expected a list of two values (fix: e.g. --set {name}=[a,b])"
        )
    return value[0], value[1]


def _floats(name: str, value: Any) -> tuple[float, float]:
    pair = _pair(name, value)
    if not all(_matches(v, float) for v in pair):
        raise ConfigError(
            f"option {name}={_show(value)}: expected two numbers (fix: e.g. --set {name}=[0,10])"
        )
    return float(pair[0]), float(pair[1])


def _date(value: Any, end: Any) -> np.datetime64:
    """One end of a ``time`` option as ``datetime64[ns]``; ConfigError for anything but a valid date."""
    day = _parse_date(end)
    if isinstance(day, str):
        raise ConfigError(
            f"option time={_show(value)}: {_show(str(end))} is not an ISO 8601 date ({day}) "
            "(fix: e.g. --set time=[2015-01-01,2015-02-01T12])"
        )
    return day


def time_range(value: Any) -> tuple[np.datetime64, np.datetime64] | None:
    """``[start, stop]`` as two ``datetime64[ns]`` (both ends included), or ``None``."""
    if value is None:
        return None
    lo, hi = (_date(value, end) for end in _pair("time", value))
    if hi < lo:
        raise ConfigError(f"option time={_show(value)}: stop before start (fix: give [start, stop])")
    return lo, hi


def float_range(name: str, value: Any) -> tuple[float, float] | None:
    """``[low, high]`` as two floats with low <= high, or ``None``."""
    if value is None:
        return None
    lo, hi = _floats(name, value)
    if hi < lo:
        raise ConfigError(
            f"option {name}={_show(value)}: first value above the second (fix: give [low, high])"
        )
    return lo, hi


def lon_box(value: Any) -> tuple[float, float] | None:
    """``[west, east]`` as two floats (any convention; west > east crosses the seam), or ``None``."""
    if value is None:
        return None
    return _floats("lon", value)


def check_finite(path: str | Path, name: str, values: np.ndarray, fix: str) -> None:
    """Raise :class:`InputError` naming the array ``name`` and how many values are NaN or infinite."""
    values = np.asarray(values)
    if values.dtype.kind not in "fc":
        return
    bad = values.size - int(np.count_nonzero(np.isfinite(values)))
    if bad:
        raise InputError(path, f"{name} holds {bad} NaN or infinite value(s) of {values.size}", fix)


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


@contextmanager
def reading(path: str | Path, what: str = "unreadable") -> Iterator[None]:
    """Turn a backend's exception on corrupt input into a one-line :class:`InputError` naming ``path``."""
    try:
        yield
    except (InputError, MemoryError):
        raise
    except Exception as exc:  # h5py, netCDF, zarr codecs and tifffile raise many types for corrupt input
        text = " ".join(str(exc).split())[:200]
        raise InputError(
            path,
            f"{what} ({type(exc).__name__}: {text})",
            "the file is truncated or corrupt; download it again",
        ) from exc
