"""CT projections: LoDoPaB-CT observations, raw intensity images and NeXus tomography scans.

Accepted inputs (``layout=auto`` tells them apart by content, and refuses what it cannot):

- ``lodopab``: LoDoPaB-CT ``observation_{split}_{NNN}.hdf5`` (Leuschner et al. 2021, Zenodo
  3384092; layout as read by dival): dataset ``data`` (samples, angles, detectors), post-log
  and divided by mu_max = 81.35858 m-1, parallel beam, angles (i + 1/2) pi / n_angles,
  detector spanning [-0.13 sqrt 2, 0.13 sqrt 2] m. A ``ground_truth_{split}_{NNN}.hdf5``
  beside every observation file is read into ``truth``.
- ``intensity``: raw counts in one file: a single-image TIFF (a sinogram (angle, detector)) or
  an HDF5 file with ``data`` (angle, detector) or (angle, row, column) and optional ``flat``,
  ``dark`` (averaged over their first axis when stacked) and ``angles`` (``units`` attribute,
  degrees if absent).
- ``projections`` / ``sinograms``: raw counts in a stack of 2D TIFF images, either the pages of
  one file or single-image files (any names; ordered by the last number in the name, so
  ``proj_2`` comes before ``proj_10``): one image per angle (rows x columns), or one image per
  detector row (angles x columns). ``auto`` (and ``intensity``) decide only from ``angles_file``:
  the number of angles equals the number of images and not their height (projections), or
  the height and not the number (sinograms); otherwise the stack is refused, naming ``layout``.
- ``nexus``: NeXus/HDF5 scans (NXtomo, Diamond): a 3D frame stack with ``image_key``
  (0 projection, 1 flat, 2 dark, 3 invalid) and per-frame rotation angles; the datasets are
  found by name (``image_key``, ``rotation_angle`` or ``*theta*``) or given as options.

Angles of intensity inputs come from the input itself (HDF5 ``angles``), from ``angles_file``
(text or CSV, see :func:`read_angles`) or from ``angle_range``.

Intensities become attenuation ``-ln(clip((I - D) / (F - D), min_transmission))``: flats F and
darks D averaged over their frames (given as files, glob patterns or lists of them, or picked
from the inputs by ``flat_pattern``/``dark_pattern``; ``flat=edges`` estimates F per projection
row as the median of the ``open_beam_width`` pixels at both detector edges, for inputs without
flats); the clip keeps dead pixels and zero counts finite (-ln 1e-4 = 9.2) and is counted
(``n_clipped``, ``clipped_fraction`` in the store's attributes; a scan with more than
``max_clipped_fraction`` clipped is refused); transmissions above 1 (noise in the open beam)
are kept and give small negative values.

Output layout: ``sinogram (projection, angle, detector)`` float32, where ``projection``
indexes sinograms (LoDoPaB samples, or detector rows of a 3D scan, top to bottom); coordinates
``projection`` (index in the store), ``angle`` (rad, in acquisition order) and ``detector``
(pixel centres, m where the geometry is known, else pixels), and on a ground truth
``truth (projection, y, x)`` ``y``/``x`` (pixel centres in m for LoDoPaB's 0.26 m extent, else
pixel indices); the geometry (``geometry``, ``detector_spacing``, ``detector_units``...)
in ``attrs``. NeXus, 3D and stacked inputs are converted ``rows_per_chunk`` detector rows at a
time.
"""

from __future__ import annotations

import csv
import fnmatch
import glob
import itertools
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import h5py
import numpy as np
import tifffile
import xarray as xr
import zarr

from diffinv.errors import ConfigError, InputError
from diffinv.io import options as opt
from diffinv.io.store import provenance, set_provenance, update_attrs, write_zarr_blocks

LAYOUTS = ("lodopab", "intensity", "nexus", "projections", "sinograms")
_STACK_LAYOUTS = ("projections", "sinograms")
_SLICE_KEYS = frozenset(("start", "stop", "step"))


def _names_files(value: str | os.PathLike) -> bool:
    """Whether ``value`` is a file, or a glob pattern matching at least one."""
    try:
        return Path(value).is_file() or any(Path(p).is_file() for p in glob.glob(str(value)))
    except (OSError, ValueError, TypeError):  # e.g. a name too long
        return False


#: A file, or a glob pattern naming files (relative to the working directory).
FileSpec = Annotated[
    str | os.PathLike, opt.Check(_names_files, "naming existing files (path or glob pattern)")
]
Files = FileSpec | list[FileSpec]
#: Rows of the angle file: a list of 0-based indices, or a slice ``{start, stop, step}`` (stop excluded).
RowSelection = (
    list[int]
    | Annotated[
        dict[str, int],
        opt.Check(lambda v: set(v) <= _SLICE_KEYS and v.get("step") != 0, "with keys start, stop, step"),
    ]
)

OPTIONS = {
    "layout": opt.Option(
        Literal[("auto", *LAYOUTS)],
        "auto (default), lodopab, intensity, nexus, projections (TIFF images: one per angle) "
        "or sinograms (TIFF images: one per detector row)",
    ),
    "flat": opt.Option(
        float | Literal["edges"] | Files,
        "flat field for intensity inputs: a number, 'edges', or TIFF/HDF5 files (path, glob pattern "
        "or list; all frames averaged) (default: the file's own, else edges)",
    ),
    "dark": opt.Option(
        float | Files,
        "dark field for intensity inputs: a number or TIFF/HDF5 files (path, glob pattern or list; "
        "all frames averaged) (default: the file's own, else 0)",
    ),
    "flat_pattern": opt.Option(str, "flats are the input files whose names match this glob, e.g. 'flat*'"),
    "dark_pattern": opt.Option(str, "darks are the input files whose names match this glob, e.g. 'dark*'"),
    "angles_file": opt.Option(
        opt.FilePath, "text or CSV file of the projection angles (one per line, or a column)"
    ),
    "angles_column": opt.Option(
        str | Annotated[int, opt.Check(lambda v: v >= 0, "at least 0")],
        "angles_file: name or 0-based index of the angle column (default: the only column, or the "
        "one named *angle*, *theta* or *rotation*)",
    ),
    "angles_rows": opt.Option(
        RowSelection,
        "angles_file: rows that are projections, 0-based after the header: a list, or "
        "{start, stop, step} (default: rows with image_key 0 if the file has that column, else all)",
    ),
    "open_beam_width": opt.Option(
        opt.PositiveInt, "detector pixels at each edge used by flat=edges (default 10)"
    ),
    "min_transmission": opt.Option(
        Annotated[float, opt.POSITIVE], "transmission clipped below at this value before -log (default 1e-4)"
    ),
    "max_clipped_fraction": opt.Option(
        Annotated[float, opt.Check(lambda v: 0 <= v <= 1, "in [0, 1]")],
        "refuse a scan with more of its values clipped at min_transmission (default 0.05)",
    ),
    "angle_range": opt.Option(
        opt.FloatPair, "[start, stop] in degrees for inputs without angles (default [0, 180])"
    ),
    "angle_endpoint": opt.Option(bool, "whether stop of angle_range is itself an angle (default false)"),
    "angle_units": opt.Option(
        str, "units of angles_file and of angle datasets without a units attribute: deg (default) or rad"
    ),
    "rows_per_chunk": opt.Option(
        opt.PositiveInt, "detector rows converted per chunk (default: about 64 MB of input)"
    ),
    "data_path": opt.Option(str, "NeXus: path of the frame stack (default: found)"),
    "image_key_path": opt.Option(str, "NeXus: path of image_key (default: found)"),
    "angles_path": opt.Option(str, "NeXus: path of the rotation angles (default: found)"),
}
_FIX_NONFINITE = "exclude or repair the file: projection data must be finite"
_FIX_ANGLE_ROWS = "select the projection rows with angles_rows= or an image_key column, or fix angles_file"
_SUFFIXES = (".hdf5", ".h5", ".nxs", ".tif", ".tiff")
#: options of raw intensity inputs (refused for LoDoPaB and NeXus files)
_RAW_OPTIONS = ("flat", "dark", "flat_pattern", "dark_pattern", "angles_file", "angles_column", "angles_rows")

#: LoDoPaB-CT constants (dival ``LoDoPaBDataset``).
LODOPAB_MU_MAX = 81.35858
LODOPAB_PHOTONS = 4096
LODOPAB_HALF_WIDTH = 0.13
_CHUNK_BYTES = 64 * 2**20
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
# zarr's warning on consolidating metadata in format 3 (see diffinv.io.store)


@dataclass
class Clipped:
    """Values :func:`attenuation` clipped (transmission below the minimum, or flat not above dark)."""

    count: int = 0
    total: int = 0

    def check(self, path: Path, limit: float) -> None:
        """InputError naming ``path`` if more than ``limit`` of the values were clipped."""
        if self.count > limit * self.total:
            raise InputError(
                path,
                f"{self.count} of {self.total} values ({self.count / self.total:.1%}) clipped: "
                "transmission (I - D)/(F - D) below min_transmission, or a flat not above the dark",
                "check the flat and dark fields (swapped, or of another exposure?), "
                f"or raise max_clipped_fraction (now {limit:g})",
            )


@dataclass
class Scan:
    """One input file or image stack: geometry, and a reader of post-log sinograms ``[start, stop)``."""

    path: Path
    layout: str
    angles: np.ndarray
    n_projection: int
    detector: np.ndarray
    read: Callable[[int, int], np.ndarray]
    attrs: dict[str, Any] = field(default_factory=dict)
    truth: Path | None = None
    #: the files read (a stack's images; empty: ``path`` itself)
    files: tuple[Path, ...] = ()
    #: the clip count of raw intensity inputs (None for post-log inputs)
    clipped: Clipped | None = None

    def chunk(self, bytes_per_projection: int, rows_per_chunk: int | None) -> int:
        """Projections per chunk: ``rows_per_chunk`` or about 64 MB of input."""
        return int(rows_per_chunk or max(1, _CHUNK_BYTES // max(bytes_per_projection, 1)))


def attenuation(
    intensity: np.ndarray,
    flat: np.ndarray | float,
    dark: np.ndarray | float,
    min_transmission: float = 1e-4,
    clipped: Clipped | None = None,
) -> np.ndarray:
    """``-ln((I - D) / (F - D))`` with the transmission clipped below at ``min_transmission``.

    Pixels whose flat does not exceed the dark get the clipped value too; ``clipped`` counts both.
    """
    num = np.asarray(intensity, np.float64) - dark
    den = np.broadcast_to(np.asarray(flat, np.float64) - dark, num.shape)
    trans = np.zeros(num.shape)  # stays 0, hence clipped, where den <= 0
    np.divide(num, den, out=trans, where=den > 0)
    low = trans < min_transmission
    if clipped is not None:
        clipped.count += int(np.count_nonzero(low))
        clipped.total += low.size
    return (-np.log(np.where(low, min_transmission, trans))).astype(np.float32)


def edge_flat(intensity: np.ndarray, width: int) -> np.ndarray:
    """Open-beam estimate per detector row: median of ``width`` pixels at both ends of the last axis."""
    edges = np.concatenate([intensity[..., :width], intensity[..., -width:]], axis=-1)
    return np.median(edges, axis=-1, keepdims=True)


def _pixels(n: int, spacing: float = 1.0) -> np.ndarray:
    return (np.arange(n) - (n - 1) / 2.0) * spacing


def _angles_from_range(n: int, options: dict[str, Any]) -> np.ndarray:
    start, stop = opt.float_range("angle_range", options.get("angle_range", [0.0, 180.0]))
    return np.deg2rad(np.linspace(start, stop, n, endpoint=bool(options.get("angle_endpoint", False))))


def _to_radians(values: np.ndarray, units: str, where: str) -> np.ndarray:
    """Angles in radians from ``units`` (deg or rad); ``where`` names the dataset in errors."""
    opt.check_finite(where, "the angles", values, _FIX_NONFINITE)
    if units.lower() in ("deg", "degree", "degrees"):
        return np.deg2rad(values)
    if units.lower() in ("rad", "radian", "radians"):
        return values.astype(np.float64)
    raise InputError(where, f"angle units {units!r} unknown", "set angle_units=deg or rad")


def _attr_str(obj: h5py.HLObject, name: str, default: str = "") -> str:
    value = obj.attrs.get(name, default)
    return value.decode() if isinstance(value, bytes) else str(value)


# --- detection --------------------------------------------------------------------------------


def detect_layout(path: Path) -> str:
    """``lodopab``, ``intensity`` or ``nexus`` from the file's content; InputError otherwise."""
    magic = _magic(path)
    if magic[:4] in _TIFF_MAGIC:
        return "intensity"
    if magic != _HDF5_MAGIC:
        raise InputError(
            path,
            f"unknown format (first bytes {magic[:4]!r}): expected HDF5, NeXus or TIFF",
            "pass LoDoPaB HDF5, NeXus scans or TIFF/HDF5 sinograms",
        )
    with _h5(path) as f:
        if any(_attr_str(g, "NX_class") == "NXentry" for g in _groups(f)):
            return "nexus"
        data = f.get("data")
        if isinstance(data, h5py.Dataset):
            if "flat" in f or "dark" in f or np.issubdtype(data.dtype, np.integer):
                return "intensity"
            if data.ndim == 3:
                return "lodopab"
        raise InputError(
            path,
            f"unknown layout: root holds {sorted(f.keys())}, not a LoDoPaB 'data' stack, "
            "intensity 'data'/'flat'/'dark' or a NeXus entry",
            "pass a supported file or set layout=",
        )


def _magic(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(8)


def _h5(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise InputError(
            path, f"unreadable HDF5 ({exc})", "the file is truncated or corrupt; download it again"
        ) from exc


def _groups(f: h5py.Group) -> Iterator[h5py.Group]:
    for key in f:
        obj = f.get(key)
        if isinstance(obj, h5py.Group):
            yield obj


# --- LoDoPaB ------------------------------------------------------------------------------------


def _lodopab(path: Path, options: dict[str, Any]) -> Scan:
    with _h5(path) as f:
        data = f.get("data")
        if not isinstance(data, h5py.Dataset) or data.ndim != 3:
            raise InputError(
                path,
                "LoDoPaB observation files hold a 3D dataset 'data' (samples, angles, detectors)",
                "pass observation_*.hdf5 files",
            )
        n, n_angles, n_det = data.shape
    half = LODOPAB_HALF_WIDTH * np.sqrt(2.0)
    truth = path.with_name(path.name.replace("observation", "ground_truth", 1))
    has_truth = "observation" in path.name and truth.exists()
    if has_truth:
        with _h5(truth) as f:
            shape = getattr(f.get("data"), "shape", None)
        if shape is None or len(shape) != 3 or shape[0] != n:
            raise InputError(
                truth,
                f"ground truth 'data' has shape {shape} for the {n} samples of {path.name}",
                "pass the ground_truth file of the same split and part as the observations",
            )

    def read(start: int, stop: int) -> np.ndarray:
        with _h5(path) as f:
            block = np.asarray(f["data"][start:stop], dtype=np.float32)
        opt.check_finite(path, f"dataset 'data' (samples {start}-{stop - 1})", block, _FIX_NONFINITE)
        return block

    return Scan(
        path,
        "lodopab",
        (np.arange(n_angles) + 0.5) * np.pi / n_angles,
        n,
        _pixels(n_det, 2 * half / n_det),
        read,
        attrs={
            "geometry": "parallel",
            "detector_spacing": 2 * half / n_det,
            "detector_units": "m",
            "mu_max": LODOPAB_MU_MAX,
            "photons_per_pixel": LODOPAB_PHOTONS,
            "image_extent": 2 * LODOPAB_HALF_WIDTH,
            "quantity": "-ln(I/I0)/mu_max: line integrals of the attenuation normalised by mu_max, in m",
        },
        truth=truth if has_truth else None,
    )


# --- raw intensities ----------------------------------------------------------------------------


def _paths(value: str | os.PathLike | list, option: str) -> list[Path]:
    """The files that a path, a glob pattern or a list of them names; InputError for one naming none."""
    out: list[Path] = []
    for item in value if isinstance(value, (list, tuple)) else [value]:
        path = Path(item)
        found = (
            [path] if path.is_file() else sorted(Path(p) for p in glob.glob(str(item)) if Path(p).is_file())
        )
        if not found:
            raise InputError(
                item, f"no {option} file", f"fix the {option} option: a file, a glob pattern or a list"
            )
        out += found
    return out


def _fields(files: list[Path], options: dict[str, Any]) -> tuple[dict[str, Any], list[Path]]:
    """Flat and dark values (number, 'edges', files or None), and the input files that are neither.

    Files given as ``flat``/``dark`` or matched by ``flat_pattern``/``dark_pattern`` are no inputs.
    """
    fields: dict[str, Any] = {}
    taken: dict[Path, str] = {}
    for name in ("flat", "dark"):
        value, pattern = options.get(name), options.get(f"{name}_pattern")
        if value is not None and pattern is not None:
            raise ConfigError(
                f"ingest ct: options {name} and {name}_pattern both given (fix: give one of them)"
            )
        if pattern is not None:
            value = [p for p in files if fnmatch.fnmatch(p.name, pattern)]
            if not value:
                raise InputError(
                    ", ".join(sorted({str(p.parent) for p in files})),
                    f"{name}_pattern={pattern!r} matches none of the {len(files)} input files",
                    f"set {name}_pattern= to a glob on file names, e.g. '{name}*.tif'",
                )
        elif isinstance(value, (str, os.PathLike, list, tuple)) and value != "edges":
            value = _paths(value, name)
        for path in value if isinstance(value, list) else []:
            if taken.setdefault(path.resolve(), name) != name:
                raise InputError(path, "given as both flat and dark", "fix flat/dark or their patterns")
        fields[name] = value
    return fields, [p for p in files if p.resolve() not in taken]


def _field(
    value: Any, name: str, own: np.ndarray | None, detector: tuple[int, ...]
) -> np.ndarray | float | str:
    """A flat or dark field: a number, 'edges', the mean frame of files, or the input's own (default)."""
    if value is None:
        return own if own is not None else ("edges" if name == "flat" else 0.0)
    if not isinstance(value, list):
        return value
    total, frames = np.zeros(detector), 0
    for path in value:
        image = _load_array(path, name)
        if image.shape[image.ndim - len(detector) :] != detector:
            raise InputError(
                path,
                f"{name} image of shape {image.shape} for a detector of {detector}",
                f"pass {name} images of the projections' shape",
            )
        stack = image.reshape(-1, *detector)
        total += stack.sum(axis=0, dtype=np.float64)
        frames += len(stack)
    return total / frames


def _load_array(path: Path, what: str) -> np.ndarray:
    """The image of a TIFF file, or dataset ``data`` of an HDF5 file."""
    if not path.is_file():
        raise InputError(path, f"{what} file not found", f"fix the {what} option")
    if _magic(path)[:4] in _TIFF_MAGIC:
        with _quiet_tifffile(), opt.reading(path, "unreadable TIFF"):
            image = tifffile.imread(path)
        opt.check_finite(path, f"the {what} image", image, _FIX_NONFINITE)
        return image
    with _h5(path) as f, opt.reading(path, "unreadable HDF5 data"):
        if not isinstance(f.get("data"), h5py.Dataset):
            raise InputError(
                path,
                f"no dataset 'data' (has {sorted(f.keys())})",
                f"pass a TIFF or an HDF5 file with 'data' as {what}",
            )
        data = f["data"][()]
    opt.check_finite(path, f"dataset 'data' ({what})", data, _FIX_NONFINITE)
    return data


@contextmanager
def _quiet_tifffile() -> Iterator[None]:
    """Mute tifffile's log lines about corrupt files: the reader reports them as one InputError."""
    log = logging.getLogger("tifffile")
    level = log.level
    log.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        log.setLevel(level)


def _mean_frames(arr: np.ndarray, detector: tuple[int, ...]) -> np.ndarray:
    """Average a stack of frames over its leading axes down to the detector's dimensions."""
    arr = np.asarray(arr, np.float64)
    while arr.ndim > len(detector):
        arr = arr.mean(axis=0)
    return arr


def _check_count(angles: np.ndarray, n: int, what: str, where: str | Path, fix: str) -> None:
    if len(angles) != n:
        raise InputError(where, f"{len(angles)} angles for {n} {what}", fix)


def _intensity(path: Path, options: dict[str, Any], fields: dict[str, Any]) -> Scan:
    """One file of raw counts: a single-image TIFF sinogram, or HDF5 ``data``."""
    stack = _load_array(path, "intensity")
    if stack.ndim not in (2, 3):
        raise InputError(
            path,
            f"intensity data has shape {stack.shape}; expected (angle, detector) or (angle, row, column)",
            "pass sinograms or projection stacks",
        )
    detector = stack.shape[1:]
    own: dict[str, np.ndarray | None] = {"flat": None, "dark": None}
    angles, source, fix = read_angles(options), options.get("angles_file", path), _FIX_ANGLE_ROWS
    if _magic(path) == _HDF5_MAGIC:
        with _h5(path) as f:
            for name in own:
                if name in f:
                    frames = f[name][()]
                    opt.check_finite(path, f"dataset {name!r}", frames, _FIX_NONFINITE)
                    own[name] = _mean_frames(frames, detector)
            if "angles" in f and angles is not None:
                raise InputError(path, "has its own 'angles', and angles_file is given", "remove angles_file")
            if "angles" in f:
                source, fix = f"{path}:/angles", "fix the angles dataset"
                angles = _to_radians(
                    f["angles"][()],
                    _attr_str(f["angles"], "units", options.get("angle_units", "deg")),
                    source,
                )
    flat = _field(fields["flat"], "flat", own["flat"], detector)
    dark = _field(fields["dark"], "dark", own["dark"], detector)
    angles = _angles_from_range(len(stack), options) if angles is None else angles
    _check_count(angles, len(stack), "projections", source, fix)
    rows = stack[:, None, :] if stack.ndim == 2 else stack  # (angle, row, column)
    for name, value in (("flat", flat), ("dark", dark)):
        if isinstance(value, np.ndarray) and value.shape != detector:
            raise InputError(
                path,
                f"{name} field shape {value.shape} does not match the detector {detector}",
                f"pass a {name} field of the detector's shape",
            )
    shape = rows.shape[1:]
    return _raw_scan(
        path, "intensity", angles, shape, lambda start, stop: rows[:, start:stop], flat, dark, options
    )


def _raw_scan(
    path: Path,
    layout: str,
    angles: np.ndarray,
    shape: tuple[int, int],
    block: Callable[[int, int], np.ndarray],
    flat: np.ndarray | float | str,
    dark: np.ndarray | float,
    options: dict[str, Any],
    attrs: dict[str, Any] | None = None,
    files: tuple[Path, ...] = (),
) -> Scan:
    """A scan of raw counts; ``block(start, stop)`` gives detector rows [start, stop) (angle, row, column)."""
    width = int(options.get("open_beam_width", 10))
    min_t = float(options.get("min_transmission", 1e-4))
    clipped = Clipped()

    def read(start: int, stop: int) -> np.ndarray:
        part = block(start, stop)
        f_ = edge_flat(part, width) if isinstance(flat, str) else _rows(flat, start, stop)
        return attenuation(part, f_, _rows(dark, start, stop), min_t, clipped).transpose(1, 0, 2)

    return Scan(
        path,
        layout,
        angles,
        shape[0],
        _pixels(shape[1]),
        read,
        attrs={
            "geometry": "parallel",
            "detector_spacing": 1.0,
            "detector_units": "pixel",
            "flat_field": "edges: median of the detector edge pixels per row"
            if isinstance(flat, str)
            else "given",
            "min_transmission": min_t,
            "quantity": "-ln(I/I0): attenuation line integrals, dimensionless",
            **(attrs or {}),
        },
        files=files,
        clipped=clipped,
    )


def _rows(value: np.ndarray | float, start: int, stop: int) -> np.ndarray | float:
    """Rows ``start:stop`` of a (row, column) field; a sinogram's (detector,) field as it is."""
    return value[start:stop] if isinstance(value, np.ndarray) and value.ndim == 2 else value


# --- angle files ----------------------------------------------------------------------------------

_ANGLE_WORDS = ("angle", "theta", "rotation")


def read_angles(options: dict[str, Any]) -> np.ndarray | None:
    """Projection angles (rad, in file order) from ``options["angles_file"]``, or None without one.

    The file holds one angle per line, or columns separated by commas, semicolons, tabs or
    blanks (found from the first line), with an optional header (a first line without
    numbers). Blank lines and lines starting with ``#`` are skipped. The angle column is
    ``angles_column`` (name or 0-based index), else the only one, else the one whose name
    holds angle, theta or rotation. The projection rows are ``angles_rows`` (0-based, after
    the header), else those with 0 in an ``image_key`` column (NeXus: 1 flat, 2 dark), else all.
    Values are in ``angle_units`` (deg by default). Anything else is refused, naming the line.
    """
    if options.get("angles_file") is None:
        return None
    path = Path(options["angles_file"])
    with opt.reading(path, "unreadable angle file"):
        lines = [
            (number, text)
            for number, text in enumerate(path.read_text().splitlines(), 1)
            if text.strip() and not text.lstrip().startswith("#")
        ]
    if not lines:
        raise InputError(path, "no angles in the file", "pass a text file with one angle per line, or a CSV")
    delimiter = next((d for d in (",", ";", "\t") if d in lines[0][1]), None)
    parsed = [
        (
            number,
            [
                f.strip()
                for f in (next(csv.reader([text], delimiter=delimiter)) if delimiter else text.split())
            ],
        )
        for number, text in lines
    ]
    header = [f.lower() for f in parsed[0][1]] if not any(map(_is_number, parsed[0][1])) else None
    table = parsed[1:] if header else parsed
    column = _angle_column(path, header, len(parsed[0][1]), options.get("angles_column"))
    selected = _projection_rows(path, header, table, options.get("angles_rows"))
    values = np.array([_value(path, table[i], column, "an angle", _FIX_ANGLE_ROWS) for i in selected])
    if not len(values):
        raise InputError(path, "no projection rows selected", _FIX_ANGLE_ROWS)
    return _to_radians(values, options.get("angle_units", "deg"), str(path))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _angle_column(path: Path, header: list[str] | None, width: int, column: str | int | None) -> int:
    if isinstance(column, int):
        if column >= width:
            raise InputError(
                path, f"no column {column}: the file has {width}", "set angles_column= (0-based)"
            )
        return column
    if isinstance(column, str):
        if header is None or column.lower() not in header:
            raise InputError(
                path,
                f"no column named {column!r} (header: {header})",
                "set angles_column= to a name of the header or a 0-based index",
            )
        return header.index(column.lower())
    if width == 1:
        return 0
    named = [i for i, name in enumerate(header or []) if any(w in name for w in _ANGLE_WORDS)]
    if len(named) == 1:
        return named[0]
    raise InputError(
        path,
        f"{width} columns ({', '.join(header) if header else 'no header'}): which holds angles is unclear",
        "set angles_column= to the column's name or 0-based index",
    )


def _projection_rows(
    path: Path, header: list[str] | None, table: list[tuple[int, list[str]]], rows: list[int] | dict | None
) -> list[int]:
    """Indices into ``table`` of the projection rows."""
    key = header.index("image_key") if header and "image_key" in header else None
    if rows is not None and key is not None:
        raise InputError(
            path,
            "has an image_key column, and angles_rows is given: which rows are projections is unclear",
            "remove angles_rows (image_key 0 marks projections), or the image_key column",
        )
    if isinstance(rows, dict):
        return list(range(len(table))[slice(rows.get("start"), rows.get("stop"), rows.get("step"))])
    if rows is not None:
        bad = [i for i in rows if not -len(table) <= i < len(table)]
        if bad:
            raise InputError(path, f"angles_rows {bad[:3]} outside the {len(table)} rows", "fix angles_rows")
        return [i % len(table) for i in rows]
    if key is None:
        return list(range(len(table)))
    keys = [_value(path, row, key, "an image_key", "image_key is 0, 1, 2 or 3") for row in table]
    if not set(keys) <= {0, 1, 2, 3}:
        raise InputError(path, f"image_key values {sorted(set(keys) - {0, 1, 2, 3})}", "use 0, 1, 2 or 3")
    return [i for i, k in enumerate(keys) if k == 0]


def _value(path: Path, row: tuple[int, list[str]], column: int, what: str, fix: str) -> float:
    """The finite number in ``column`` of a numbered row; InputError naming the line otherwise."""
    number, values = row
    text = values[column] if column < len(values) else ""
    value = float(text) if _is_number(text) else np.nan
    if not np.isfinite(value):
        raise InputError(f"{path}:{number}", f"{text!r} is not {what}", fix)
    return value


# --- TIFF image stacks ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Stack:
    """2D TIFF images in acquisition order: the pages of one file, or single-image files."""

    files: tuple[Path, ...]
    shape: tuple[int, int, int]  # (images, height, width)
    paged: bool

    @property
    def path(self) -> Path:
        """The multi-page file, or the folder holding the images."""
        return self.files[0] if self.paged else Path(os.path.commonpath(self.files))

    def image_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` of every image: (image, row, column)."""
        if self.paged:
            return _tiff_block(self.files[0], np.s_[:, start:stop])
        return np.stack([_tiff_block(f, np.s_[start:stop]) for f in self.files])

    def images(self, start: int, stop: int) -> np.ndarray:
        """Images ``[start, stop)``: (image, row, column)."""
        if self.paged:
            return _tiff_block(self.files[0], np.s_[start:stop])
        return np.stack([_tiff_block(f, np.s_[:]) for f in self.files[start:stop]])


def _tiff_shape(path: Path) -> tuple[int, ...]:
    """Shape of a TIFF's image (rows, columns) or page stack (pages, rows, columns)."""
    with _quiet_tifffile(), opt.reading(path, "unreadable TIFF"), tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        shape, axes = tuple(series.shape), series.axes
    if len(shape) == 2 or (len(shape) == 3 and axes.endswith("YX")):
        return shape
    raise InputError(
        path, f"TIFF image of shape {shape} (axes {axes})", "pass grey-scale 2D images or stacks of them"
    )


def _tiff_block(path: Path, index: tuple[slice, ...]) -> np.ndarray:
    """``index`` of a TIFF's image or page stack, reading only the rows it needs where the file allows."""
    with _quiet_tifffile(), opt.reading(path, "unreadable TIFF"):
        try:  # uncompressed contiguous data: read through a memory map
            block = np.array(tifffile.memmap(path, mode="r")[index])
        except ValueError:  # compressed or scattered: decode the strips or tiles holding the rows
            with tifffile.TiffFile(path) as tif, tif.aszarr() as store:
                block = zarr.open_array(store, mode="r")[index]
    opt.check_finite(path, "the image", block, _FIX_NONFINITE)
    return block


def _by_index(files: list[Path]) -> list[Path]:
    """Files ordered by the last number in their names; InputError for a name without one or a repeat."""
    index: dict[int, Path] = {}
    for path in files:
        numbers = re.findall(r"\d+", path.stem)
        if not numbers:
            raise InputError(
                path,
                f"no number in the name to order the {len(files)} images by",
                "give flat and dark files as flat=/dark= or pick them with flat_pattern=/dark_pattern=, "
                "and pass images numbered in acquisition order (e.g. proj_0001.tif)",
            )
        other = index.setdefault(int(numbers[-1]), path)
        if other != path:
            raise InputError(
                path,
                f"index {int(numbers[-1])} is also that of {other.name}",
                "pass the images of one scan only, or pick flats and darks by flat_pattern=/dark_pattern=",
            )
    return [index[k] for k in sorted(index)]


def _stacks(tiffs: list[Path], layout: str) -> tuple[list[Path], list[Stack]]:
    """Single TIFF sinograms read whole, and the image stacks: each multi-page file, and the images."""
    shapes = {p: _tiff_shape(p) for p in tiffs}
    stacks = [Stack((p,), shapes[p], True) for p in tiffs if len(shapes[p]) == 3]
    images = [p for p in tiffs if len(shapes[p]) == 2]
    if stacks and images:
        raise InputError(
            stacks[0].path,
            f"a multi-page TIFF among {len(images)} single-image TIFFs (e.g. {images[0].name})",
            "ingest them separately, or give flats and darks as flat=/dark= or flat_pattern=/dark_pattern=",
        )
    if len(images) == 1 and layout not in _STACK_LAYOUTS:
        return images, stacks
    if images:
        images = _by_index(images) if len(images) > 1 else images
        odd = next((p for p in images if shapes[p] != shapes[images[0]]), None)
        if odd is not None:
            raise InputError(
                odd,
                f"image of shape {shapes[odd]}, unlike the {shapes[images[0]]} of {images[0].name}",
                "pass the images of one scan only, or give flats and darks as flat=/dark=",
            )
        stacks.append(Stack(tuple(images), (len(images), *shapes[images[0]]), False))
    return [], stacks


def _orientation(stack: Stack, layout: str, angles: np.ndarray | None) -> str:
    """``projections`` or ``sinograms``: the layout option, else what the angle count alone allows."""
    if layout in _STACK_LAYOUTS:
        return layout
    n, height, width = stack.shape
    images = f"{n} images of {height} x {width} pixels"
    choose = "set layout=projections (one image per angle) or layout=sinograms (one image per detector row)"
    if angles is None:
        raise InputError(
            stack.path,
            f"{images}: one image per angle or one per detector row cannot be told apart",
            f"{choose}, or give angles_file= (its count of angles decides)",
        )
    fits = [name for name, count in (("projections", n), ("sinograms", height)) if count == len(angles)]
    if len(fits) == 1:
        return fits[0]
    if fits:
        raise InputError(
            stack.path, f"{images}: {len(angles)} angles fit one per image and one per row", choose
        )
    raise InputError(
        stack.path,
        f"{images}: the {len(angles)} angles of angles_file fit neither one per image ({n}) "
        f"nor one per image row ({height})",
        f"{_FIX_ANGLE_ROWS}; or set layout=",
    )


def _stack_scan(stack: Stack, options: dict[str, Any], fields: dict[str, Any]) -> Scan:
    """A TIFF stack of raw counts: projections (angle, row, column) or sinograms (row, angle, column)."""
    angles = read_angles(options)
    layout = _orientation(stack, options.get("layout", "auto"), angles)
    n, height, width = stack.shape
    n_angles, n_rows = (n, height) if layout == "projections" else (height, n)
    if angles is None:
        angles = _angles_from_range(n_angles, options)
    what = "images (one per angle)" if layout == "projections" else "image rows (one per angle)"
    _check_count(angles, n_angles, what, options.get("angles_file", stack.path), _FIX_ANGLE_ROWS)
    flat = _field(fields["flat"], "flat", None, (n_rows, width))
    dark = _field(fields["dark"], "dark", None, (n_rows, width))

    def block(start: int, stop: int) -> np.ndarray:
        if layout == "projections":
            return stack.image_rows(start, stop)
        return stack.images(start, stop).transpose(1, 0, 2)

    order = "pages" if stack.paged else "file names' last number"
    attrs = {
        "image_order": f"{n} images, by {order}",
        "angles_source": str(options["angles_file"]) if "angles_file" in options else "angle_range",
    }
    return _raw_scan(
        stack.path, layout, angles, (n_rows, width), block, flat, dark, options, attrs, stack.files
    )


# --- NeXus ----------------------------------------------------------------------------------------


def _walk(
    group: h5py.Group, prefix: str = "", broken: list[str] | None = None
) -> Iterator[tuple[str, h5py.Dataset]]:
    """All datasets below ``group`` (following links); broken links are skipped, listed in ``broken``."""
    for key in group:
        name = f"{prefix}/{key}"
        try:
            obj = group[key]
        except (KeyError, OSError):
            link = group.get(key, getlink=True)
            if broken is not None:
                broken.append(link.filename if isinstance(link, h5py.ExternalLink) else name)
            continue
        if isinstance(obj, h5py.Dataset):
            yield name, obj
        elif isinstance(obj, h5py.Group):
            yield from _walk(obj, name, broken)


def _nexus_paths(f: h5py.File, path: Path, options: dict[str, Any]) -> tuple[str, str, str]:
    broken: list[str] = []
    datasets = dict(_walk(f, broken=broken))
    stacks = {n: d for n, d in datasets.items() if d.ndim == 3 and d.shape[0] > 1}
    keys = {n: d for n, d in datasets.items() if n.rsplit("/", 1)[-1] == "image_key" and d.ndim == 1}
    data = options.get("data_path") or next(
        (n for n, d in stacks.items() if any(len(k) == d.shape[0] for k in keys.values())), None
    )
    if data is None and broken:
        raise InputError(
            path,
            f"no 3D frame stack, and links point to missing files: {', '.join(sorted(set(broken))[:4])}",
            "keep the linked files beside the NeXus file, as in the scan's original folder",
        )
    if data is None or data not in datasets:
        raise InputError(
            path,
            "unknown layout: no 3D frame stack with a matching image_key "
            f"(stacks {sorted(stacks)}, image keys {sorted(keys)})",
            "set data_path= and image_key_path=",
        )
    frames = datasets[data].shape[0]
    key = options.get("image_key_path") or next((n for n, d in keys.items() if len(d) == frames), None)
    group = data.rsplit("/", 1)[0]
    angle_like = [
        n
        for n, d in datasets.items()
        if d.ndim == 1 and len(d) == frames and ("rotation_angle" in n or "theta" in n.rsplit("/", 1)[-1])
    ]
    angles = options.get("angles_path") or next(
        iter(sorted(angle_like, key=lambda n: (not n.startswith(group), "rotation_angle" not in n))), None
    )
    for name, what in ((key, "image_key"), (angles, "rotation angles")):
        if name is None or name not in datasets:
            raise InputError(
                path,
                f"no {what} dataset of length {frames} for {data}",
                f"set {'image_key_path' if what == 'image_key' else 'angles_path'}=",
            )
    return data, key, angles


def _nexus(path: Path, options: dict[str, Any]) -> Scan:
    with _h5(path) as f:
        data_path, key_path, angles_path = _nexus_paths(f, path, options)
        key = f[key_path][()]
        ang = f[angles_path]
        angles_all = _to_radians(
            ang[()], _attr_str(ang, "units", options.get("angle_units", "deg")), f"{path}:{angles_path}"
        )
        _, rows, cols = f[data_path].shape
    proj, flats, darks = (np.flatnonzero(key == k) for k in (0, 1, 2))
    if not len(proj):
        raise InputError(f"{path}:{key_path}", "image_key marks no projections (0)", "check image_key_path")
    min_t = float(options.get("min_transmission", 1e-4))
    width = int(options.get("open_beam_width", 10))
    clipped = Clipped()

    def frames(dset: h5py.Dataset, index: np.ndarray, start: int, stop: int) -> np.ndarray:
        block = dset[index.min() : index.max() + 1, start:stop][index - index.min()]
        opt.check_finite(path, f"dataset {data_path!r} (rows {start}-{stop - 1})", block, _FIX_NONFINITE)
        return block

    def read(start: int, stop: int) -> np.ndarray:
        with _h5(path) as f:
            dset = f[data_path]
            intensity = frames(dset, proj, start, stop)
            flat = (
                frames(dset, flats, start, stop).mean(axis=0) if len(flats) else edge_flat(intensity, width)
            )
            dark = frames(dset, darks, start, stop).mean(axis=0) if len(darks) else 0.0
        return attenuation(intensity, flat, dark, min_t, clipped).transpose(1, 0, 2)

    return Scan(
        path,
        "nexus",
        angles_all[proj],
        rows,
        _pixels(cols),
        read,
        attrs={
            "geometry": "parallel",
            "detector_spacing": 1.0,
            "detector_units": "pixel",
            "nexus_data": data_path,
            "nexus_image_key": key_path,
            "nexus_angles": angles_path,
            "n_flat": len(flats),
            "n_dark": len(darks),
            "min_transmission": min_t,
            "quantity": "-ln((I - D)/(F - D)): attenuation line integrals, dimensionless",
        },
        clipped=clipped,
    )


# --- public API -------------------------------------------------------------------------------------


def _open_file(path: Path, layout: str, options: dict[str, Any], fields: dict[str, Any]) -> Scan:
    """The scan of one HDF5 file or single TIFF sinogram."""
    if layout == "auto":
        layout = detect_layout(path)
    if layout in _STACK_LAYOUTS:
        raise InputError(path, f"layout={layout} is for TIFF images, not this file", "set layout=auto")
    given = [name for name in _RAW_OPTIONS if name in options]
    if layout in ("lodopab", "nexus") and given:
        raise InputError(
            path,
            f"option {given[0]} does not apply to {layout} files (they hold their angles and fields)",
            f"remove {given[0]}",
        )
    with opt.reading(path):
        if layout == "intensity":
            return _intensity(path, options, fields)
        return {"lodopab": _lodopab, "nexus": _nexus}[layout](path, options)


def open_scans(inputs: str | Path | Sequence[str | Path], **options: Any) -> list[Scan]:
    """The scans of files and folders, of one geometry (nothing large is read yet).

    Each HDF5 file and each multi-page TIFF is one scan; single-image TIFFs form one stack
    (ordered by the last number in their names), or, alone, one sinogram. Files given as
    flats or darks, and ``ground_truth_*`` files (LoDoPaB truth), are not scans.
    """
    opt.check_options("ingest ct", options, OPTIONS)
    orphans = [name for name in ("angles_column", "angles_rows") if name in options]
    if orphans and "angles_file" not in options:
        raise ConfigError(f"ingest ct: option {orphans[0]} without angles_file (fix: give angles_file=)")
    paths = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    files = opt.input_files(paths, _SUFFIXES, "CT projection")
    fields, files = _fields([p for p in files if not p.name.startswith("ground_truth_")], options)
    if not files:
        raise InputError(
            ", ".join(map(str, paths)),
            "no projection files besides flats, darks and truth",
            "pass the projections",
        )
    layout = options.get("layout", "auto")
    tiffs = [p for p in files if layout not in ("lodopab", "nexus") and _magic(p)[:4] in _TIFF_MAGIC]
    singles, stacks = _stacks(tiffs, layout)
    scans = [_open_file(p, layout, options, fields) for p in files if p not in tiffs or p in singles]
    scans += [_stack_scan(s, options, fields) for s in stacks]
    for scan in scans[1:]:
        if not _same_geometry(scans[0], scan):
            raise InputError(
                scan.path,
                f"layout, angles, detector or ground truth differ from {scans[0].path}",
                "ingest files of one geometry together",
            )
    return scans


def _image_axis(scan: Scan, n: int, name: str) -> tuple[str, np.ndarray, dict[str, str]]:
    """Coordinate of a ground-truth image axis: pixel centres in m when the image extent is
    known (LoDoPaB: 0.26 m, centred on the rotation axis), else pixel indices."""
    extent = scan.attrs.get("image_extent")
    if extent is not None:
        return (
            name,
            _pixels(n, float(extent) / n),
            {"units": "m", "long_name": f"image pixel centre ({name})"},
        )
    return name, np.arange(n), {"units": "pixel", "long_name": f"image pixel index ({name})"}


def _dataset(scan: Scan, sino: np.ndarray, truth: np.ndarray | None, start: int = 0) -> xr.Dataset:
    """One block of the store; ``start``: the index in the store of its first projection."""
    ds = xr.Dataset(
        {
            "sinogram": (
                ("projection", "angle", "detector"),
                sino,
                {"units": "m" if scan.layout == "lodopab" else "1", "long_name": "post-log projection data"},
            )
        },
        coords={
            "projection": (
                "projection",
                np.arange(start, start + len(sino)),
                {"units": "1", "long_name": "sinogram (sample or detector row)"},
            ),
            "angle": ("angle", scan.angles, {"units": "rad", "long_name": "rotation angle"}),
            "detector": (
                "detector",
                scan.detector,
                {"units": scan.attrs["detector_units"], "long_name": "detector pixel centre"},
            ),
        },
        attrs={
            "layout": (
                "(projection, angle, detector): projection indexes sinograms (samples or detector rows)"
            ),
            "source_layout": scan.layout,
            **scan.attrs,
        },
    )
    if truth is not None:
        ds["truth"] = (
            ("projection", "y", "x"),
            truth,
            {"units": "1", "long_name": "ground-truth attenuation normalised by mu_max"},
        )
        ds = ds.assign_coords(
            y=_image_axis(scan, truth.shape[1], "y"), x=_image_axis(scan, truth.shape[2], "x")
        )
    return ds


def _blocks(scan: Scan, options: dict[str, Any], offset: int = 0) -> Iterator[xr.Dataset]:
    """The scan's sinograms a chunk at a time, its first projection at index ``offset`` of the
    store; InputError at the end if too many values were clipped."""
    step = scan.chunk(4 * len(scan.angles) * len(scan.detector), options.get("rows_per_chunk"))
    for start in range(0, scan.n_projection, step):
        stop = min(start + step, scan.n_projection)
        truth = None
        if scan.truth is not None:
            with _h5(scan.truth) as f, opt.reading(scan.truth):
                truth = np.asarray(f["data"][start:stop], np.float32)
            opt.check_finite(
                scan.truth, f"dataset 'data' (samples {start}-{stop - 1})", truth, _FIX_NONFINITE
            )
        with opt.reading(scan.path, f"projections {start}-{stop - 1} unreadable"):
            sinogram = scan.read(start, stop)
        yield _dataset(scan, sinogram, truth, offset + start)
    if scan.clipped is not None:
        scan.clipped.check(scan.path, float(options.get("max_clipped_fraction", 0.05)))


def _offsets(scans: list[Scan]) -> list[int]:
    """The store index of each scan's first projection (scans are concatenated in order)."""
    return [int(o) for o in np.cumsum([0] + [s.n_projection for s in scans[:-1]])]


def _clipping(scans: list[Scan]) -> dict[str, Any]:
    """Store attributes counting the values clipped at ``min_transmission`` (raw intensity inputs)."""
    counts = [s.clipped for s in scans if s.clipped is not None]
    if not counts:
        return {}
    count, total = sum(c.count for c in counts), sum(c.total for c in counts)
    return {"n_clipped": count, "clipped_fraction": count / max(total, 1)}


def read_ct(inputs: str | Path | Sequence[str | Path], **options: Any) -> xr.Dataset:
    """Read projection files into memory as ``sinogram (projection, angle, detector)``.

    Parameters
    ----------
    inputs
        A LoDoPaB observation HDF5, intensity TIFF/HDF5 or NeXus scan, a folder or list of TIFF
        images of one scan, or several files of one geometry (see :func:`open_scans`).
    **options
        See :data:`OPTIONS`.

    Returns
    -------
    xarray.Dataset
        The layout of the module docstring.
    """
    scans = open_scans(inputs, **options)
    blocks = [b for s, offset in zip(scans, _offsets(scans)) for b in _blocks(s, options, offset)]
    ds = (
        xr.concat(
            blocks, dim="projection", data_vars="minimal", coords="minimal", compat="override", join="exact"
        )
        if len(blocks) > 1
        else blocks[0]
    )
    ds.attrs.update(_clipping(scans))
    return ds


def _same_geometry(a: Scan, b: Scan) -> bool:
    return (
        a.layout == b.layout
        and a.angles.shape == b.angles.shape
        and np.allclose(a.angles, b.angles)
        and np.array_equal(a.detector, b.detector)
        and (a.truth is None) == (b.truth is None)
    )


def ingest(inputs: list[Path], out: Path, **options: Any) -> Path:
    """Convert projection files, concatenated along ``projection``, into a zarr store at ``out``.

    Parameters
    ----------
    inputs
        Files of one layout and geometry (same angles and detector), or folders of them,
        e.g. the LoDoPaB observation files of a split (``ground_truth_*`` files in folders
        are read as the truth of their observations, not as inputs), or the TIFF images of
        a scan (see :func:`open_scans`).
    out
        The zarr store to write (atomically: nothing appears on error).
    **options
        See :data:`OPTIONS`.
    """
    scans = open_scans(inputs, **options)
    blocks = itertools.chain.from_iterable(_blocks(s, options, o) for s, o in zip(scans, _offsets(scans)))
    head = next(blocks)
    sources = [str(f) for s in scans for f in s.files or (s.path,)]
    set_provenance(head, provenance(source_files=sources, options=options, reader="diffinv.io.ct"))
    chunks = {"chunks": (head.sizes["projection"], *head["sinogram"].shape[1:])}
    encoding = {"sinogram": chunks}
    if "truth" in head:
        encoding["truth"] = {"chunks": (head.sizes["projection"], *head["truth"].shape[1:])}
    write_zarr_blocks(itertools.chain([head], blocks), out, "projection", encoding, "ingest ct")
    clipping = _clipping(scans)  # known once every block is converted
    if clipping:
        update_attrs(Path(out), clipping)
    return Path(out)
