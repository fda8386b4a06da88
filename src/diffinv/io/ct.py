"""CT projections: LoDoPaB-CT observations, raw intensity sinograms and NeXus tomography scans.

Accepted inputs (``layout=auto`` tells them apart by content):

- ``lodopab``: LoDoPaB-CT ``observation_{split}_{NNN}.hdf5`` (Leuschner et al. 2021, Zenodo
  3384092; layout as read by dival): dataset ``data`` (samples, angles, detectors), post-log
  and divided by mu_max = 81.35858 m-1, parallel beam, angles (i + 1/2) pi / n_angles,
  detector spanning [-0.13 sqrt 2, 0.13 sqrt 2] m. A ``ground_truth_{split}_{NNN}.hdf5``
  beside every observation file is read into ``truth``.
- ``intensity``: raw counts, either a TIFF (one page: a sinogram (angle, detector); several
  pages: projections (angle, row, column)) or an HDF5 file with ``data`` of the same shapes
  and optional ``flat``, ``dark`` (averaged over their first axis when stacked) and
  ``angles`` (``units`` attribute, degrees if absent).
- ``nexus``: NeXus/HDF5 scans (NXtomo, Diamond): a 3D frame stack with ``image_key``
  (0 projection, 1 flat, 2 dark, 3 invalid) and per-frame rotation angles; the datasets are
  found by name (``image_key``, ``rotation_angle`` or ``*theta*``) or given as options.

Intensities become attenuation ``-ln(clip((I - D) / (F - D), min_transmission))``: flats F and
darks D averaged over their frames (``flat=edges`` estimates F per projection row as the
median of the ``open_beam_width`` pixels at both detector edges, for inputs without flats);
the clip keeps dead pixels and zero counts finite (-ln 1e-4 = 9.2); transmissions above 1
(noise in the open beam) are kept and give small negative values.

Output layout: ``sinogram (projection, angle, detector)`` float32, where ``projection``
indexes sinograms (LoDoPaB samples, or detector rows of a 3D scan); coordinates ``angle``
(rad) and ``detector`` (pixel centres, m where the geometry is known, else pixels); the
geometry (``geometry``, ``detector_spacing``, ``detector_units``...) in ``attrs``.
NeXus and 3D inputs are converted ``rows_per_chunk`` detector rows at a time.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import h5py
import numpy as np
import tifffile
import xarray as xr

from diffinv.errors import InputError
from diffinv.io import options as opt
from diffinv.io.store import provenance, set_provenance, write_zarr_blocks

LAYOUTS = ("lodopab", "intensity", "nexus")
OPTIONS = {
    "layout": opt.Option(Literal[("auto", *LAYOUTS)], "auto (default), lodopab, intensity or nexus"),
    "flat": opt.Option(
        float | Literal["edges"] | opt.FilePath,
        "flat field for intensity inputs: TIFF/HDF5 file, number or 'edges' "
        "(default: the file's own, else edges)",
    ),
    "dark": opt.Option(
        float | opt.FilePath,
        "dark field for intensity inputs: TIFF/HDF5 file or number (default: the file's own, else 0)",
    ),
    "open_beam_width": opt.Option(
        opt.PositiveInt, "detector pixels at each edge used by flat=edges (default 10)"
    ),
    "min_transmission": opt.Option(
        Annotated[float, opt.POSITIVE], "transmission clipped below at this value before -log (default 1e-4)"
    ),
    "angle_range": opt.Option(
        opt.FloatPair, "[start, stop] in degrees for inputs without angles (default [0, 180])"
    ),
    "angle_endpoint": opt.Option(bool, "whether stop of angle_range is itself an angle (default false)"),
    "angle_units": opt.Option(str, "units of angle datasets without a units attribute: deg (default) or rad"),
    "rows_per_chunk": opt.Option(
        opt.PositiveInt, "detector rows converted per chunk (default: about 64 MB of input)"
    ),
    "data_path": opt.Option(str, "NeXus: path of the frame stack (default: found)"),
    "image_key_path": opt.Option(str, "NeXus: path of image_key (default: found)"),
    "angles_path": opt.Option(str, "NeXus: path of the rotation angles (default: found)"),
}
_FIX_NONFINITE = "exclude or repair the file: projection data must be finite"

#: LoDoPaB-CT constants (dival ``LoDoPaBDataset``).
LODOPAB_MU_MAX = 81.35858
LODOPAB_PHOTONS = 4096
LODOPAB_HALF_WIDTH = 0.13
_CHUNK_BYTES = 64 * 2**20
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


@dataclass
class Scan:
    """One input file: geometry, and a reader of post-log sinograms ``[start, stop)``."""

    path: Path
    layout: str
    angles: np.ndarray
    n_projection: int
    detector: np.ndarray
    read: Callable[[int, int], np.ndarray]
    attrs: dict[str, Any] = field(default_factory=dict)
    truth: Path | None = None

    def chunk(self, bytes_per_projection: int, rows_per_chunk: int | None) -> int:
        """Projections per chunk: ``rows_per_chunk`` or about 64 MB of input."""
        return int(rows_per_chunk or max(1, _CHUNK_BYTES // max(bytes_per_projection, 1)))


def attenuation(
    intensity: np.ndarray, flat: np.ndarray | float, dark: np.ndarray | float, min_transmission: float = 1e-4
) -> np.ndarray:
    """``-ln((I - D) / (F - D))`` with the transmission clipped below at ``min_transmission``.

    Pixels whose flat does not exceed the dark get the clipped value too.
    """
    num = np.asarray(intensity, np.float64) - dark
    den = np.broadcast_to(np.asarray(flat, np.float64) - dark, num.shape)
    trans = np.full(num.shape, min_transmission)
    np.divide(num, den, out=trans, where=den > 0)
    return (-np.log(np.maximum(trans, min_transmission))).astype(np.float32)


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


def _field(
    value: Any, name: str, own: np.ndarray | None, detector: tuple[int, ...]
) -> np.ndarray | float | str:
    """A flat or dark field from an option (file or number) or the input's own, frames averaged."""
    if value is None:
        return own if own is not None else ("edges" if name == "flat" else 0.0)
    if isinstance(value, (int, float)) or value == "edges":
        return value
    return _mean_frames(_load_array(Path(value), name), detector)


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


def _intensity(path: Path, options: dict[str, Any]) -> Scan:
    stack = _load_array(path, "intensity")
    if stack.ndim not in (2, 3):
        raise InputError(
            path,
            f"intensity data has shape {stack.shape}; expected (angle, detector) or (angle, row, column)",
            "pass sinograms or projection stacks",
        )
    detector = stack.shape[1:]
    own: dict[str, np.ndarray | None] = {"flat": None, "dark": None}
    angles = None
    if _magic(path) == _HDF5_MAGIC:
        with _h5(path) as f:
            for name in own:
                if name in f:
                    frames = f[name][()]
                    opt.check_finite(path, f"dataset {name!r}", frames, _FIX_NONFINITE)
                    own[name] = _mean_frames(frames, detector)
            if "angles" in f:
                angles = _to_radians(
                    f["angles"][()],
                    _attr_str(f["angles"], "units", options.get("angle_units", "deg")),
                    f"{path}:/angles",
                )
    flat = _field(options.get("flat"), "flat", own["flat"], detector)
    dark = _field(options.get("dark"), "dark", own["dark"], detector)
    width = int(options.get("open_beam_width", 10))
    min_t = float(options.get("min_transmission", 1e-4))
    n_angles = stack.shape[0]
    angles = _angles_from_range(n_angles, options) if angles is None else angles
    if len(angles) != n_angles:
        raise InputError(path, f"{len(angles)} angles for {n_angles} projections", "fix the angles dataset")
    rows = stack[:, None, :] if stack.ndim == 2 else stack  # (angle, row, column)
    for name, value in (("flat", flat), ("dark", dark)):
        if isinstance(value, np.ndarray) and value.shape != detector:
            raise InputError(
                path,
                f"{name} field shape {value.shape} does not match the detector {detector}",
                f"pass a {name} field of the detector's shape",
            )

    def read(start: int, stop: int) -> np.ndarray:
        part = rows[:, start:stop]
        f_ = edge_flat(part, width) if isinstance(flat, str) else _rows(flat, start, stop)
        d_ = _rows(dark, start, stop)
        return attenuation(part, f_, d_, min_t).transpose(1, 0, 2)

    flat_note = "edges: median of the detector edge pixels per row" if isinstance(flat, str) else "given"
    return Scan(
        path,
        "intensity",
        angles,
        rows.shape[1],
        _pixels(rows.shape[2]),
        read,
        attrs={
            "geometry": "parallel",
            "detector_spacing": 1.0,
            "detector_units": "pixel",
            "flat_field": flat_note,
            "min_transmission": min_t,
            "quantity": "-ln(I/I0): attenuation line integrals, dimensionless",
        },
    )


def _rows(value: np.ndarray | float, start: int, stop: int) -> np.ndarray | float:
    """Rows ``start:stop`` of a (row, column) field; a sinogram's (detector,) field as it is."""
    return value[start:stop] if isinstance(value, np.ndarray) and value.ndim == 2 else value


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
        return attenuation(intensity, flat, dark, min_t).transpose(1, 0, 2)

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
    )


# --- public API -------------------------------------------------------------------------------------


def open_scan(path: str | Path, **options: Any) -> Scan:
    """Detect the layout of ``path`` and return its :class:`Scan` (nothing large is read yet)."""
    opt.check_options("ingest ct", options, OPTIONS)
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file", "fix the path")
    layout = options.get("layout", "auto")
    if layout == "auto":
        layout = detect_layout(path)
    if layout not in LAYOUTS:
        raise InputError(path, f"unknown layout {layout!r}", f"set layout= one of auto, {', '.join(LAYOUTS)}")
    with opt.reading(path):
        return {"lodopab": _lodopab, "intensity": _intensity, "nexus": _nexus}[layout](path, options)


def _dataset(scan: Scan, sino: np.ndarray, truth: np.ndarray | None) -> xr.Dataset:
    ds = xr.Dataset(
        {
            "sinogram": (
                ("projection", "angle", "detector"),
                sino,
                {"units": "m" if scan.layout == "lodopab" else "1", "long_name": "post-log projection data"},
            )
        },
        coords={
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
    return ds


def _blocks(scan: Scan, rows_per_chunk: int | None) -> Iterator[xr.Dataset]:
    step = scan.chunk(4 * len(scan.angles) * len(scan.detector), rows_per_chunk)
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
        yield _dataset(scan, sinogram, truth)


def read_ct(path: str | Path, **options: Any) -> xr.Dataset:
    """Read one projection file into memory as ``sinogram (projection, angle, detector)``.

    Parameters
    ----------
    path
        LoDoPaB observation HDF5, intensity TIFF/HDF5 or NeXus scan.
    **options
        See :data:`OPTIONS`.

    Returns
    -------
    xarray.Dataset
        The layout of the module docstring.
    """
    scan = open_scan(path, **options)
    blocks = list(_blocks(scan, options.get("rows_per_chunk")))
    return (
        xr.concat(
            blocks, dim="projection", data_vars="minimal", coords="minimal", compat="override", join="exact"
        )
        if len(blocks) > 1
        else blocks[0]
    )


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
        are read as the truth of their observations, not as inputs).
    out
        The zarr store to write (atomically: nothing appears on error).
    **options
        See :data:`OPTIONS`.
    """
    opt.check_options("ingest ct", options, OPTIONS)
    files = opt.input_files(inputs, (".hdf5", ".h5", ".nxs", ".tif", ".tiff"), "CT projection")
    scans = [open_scan(p, **options) for p in files if not p.name.startswith("ground_truth_")]
    first = scans[0]
    for scan in scans[1:]:
        if not _same_geometry(first, scan):
            raise InputError(
                scan.path,
                f"layout, angles, detector or ground truth differ from {first.path}",
                "ingest files of one geometry together",
            )
    blocks = itertools.chain.from_iterable(_blocks(s, options.get("rows_per_chunk")) for s in scans)
    head = next(blocks)
    set_provenance(
        head, provenance(source_files=[str(s.path) for s in scans], options=options, reader="diffinv.io.ct")
    )
    chunks = {"chunks": (head.sizes["projection"], *head["sinogram"].shape[1:])}
    encoding = {"sinogram": chunks}
    if "truth" in head:
        encoding["truth"] = {"chunks": (head.sizes["projection"], *head["truth"].shape[1:])}
    return write_zarr_blocks(itertools.chain([head], blocks), out, "projection", encoding)
