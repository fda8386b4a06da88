"""fastMRI k-space HDF5 files -> analysis-ready zarr on the reconstruction grid.

Reads single-coil (``kspace`` (slices, H, W), ``reconstruction_esc``) and multi-coil
(``kspace`` (slices, coils, H, W), ``reconstruction_rss``) files from the train/val sets
and test/challenge files (``mask``, attrs ``acceleration``/``num_low_frequency``, no target).
The ``ismrmrd_header`` gives the encoded and reconstruction matrix sizes: readout
oversampling (encoded x > recon x) is removed by cropping the image along the readout
axis, which keeps the phase-encode sampling exact. The phase-encode padding (columns
outside [padding_left, padding_right) per the header's ``kspace_encoding_step_1``) is
marked as not acquired in ``mask``. Optionally ``kspace_crop=[h, w]`` keeps the central
k-space block (a lower-resolution image on a grid that is still exactly Cartesian).

Output store (dims ``slice, coil, readout, phase``):
``kspace`` complex64, ``mask`` bool (slice, phase), ``target`` float32 (slice, target_y,
target_x) when the files have one (on the file's own reconstruction grid), coordinates
``file``, ``slice_in_file``, ``acquisition``, ``acceleration``, ``num_low_frequency``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import xarray as xr

from diffinv.errors import InputError
from diffinv.io import options as opt
from diffinv.io.store import provenance, set_provenance, write_zarr_blocks

NS = {"m": "http://www.ismrm.org/ISMRMRD"}
TARGET_NAMES = ("reconstruction_rss", "reconstruction_esc")


@dataclass(frozen=True)
class Header:
    """The ``ismrmrd_header`` fields fastMRI relies on."""

    encoded: tuple[int, int]  # (x = readout, y = phase encode)
    recon: tuple[int, int]
    padding_left: int
    padding_right: int


def parse_header(xml: bytes | str, path: Path) -> Header:
    """Matrix sizes and phase-encode padding (fastMRI ``SliceDataset._retrieve_metadata``)."""
    try:
        root = ET.fromstring(xml)

        def q(*names: str) -> int:
            node = root.find("." + "".join(f"//m:{n}" for n in names), NS)
            if node is None or node.text is None:
                raise KeyError("/".join(names))
            return int(node.text)

        enc = (q("encodedSpace", "matrixSize", "x"), q("encodedSpace", "matrixSize", "y"))
        rec = (q("reconSpace", "matrixSize", "x"), q("reconSpace", "matrixSize", "y"))
        center = q("encodingLimits", "kspace_encoding_step_1", "center")
        maximum = q("encodingLimits", "kspace_encoding_step_1", "maximum") + 1
    except (ET.ParseError, KeyError, ValueError) as exc:
        raise InputError(
            path, f"ismrmrd_header unreadable ({exc})", "the file needs the fastMRI ISMRMRD XML header"
        ) from exc
    left = enc[1] // 2 - center
    return Header(enc, rec, left, left + maximum)


def _ifft1c(k: np.ndarray, axis: int) -> np.ndarray:
    return np.fft.fftshift(np.fft.ifft(np.fft.ifftshift(k, axes=axis), axis=axis, norm="ortho"), axes=axis)


def _fft1c(x: np.ndarray, axis: int) -> np.ndarray:
    return np.fft.fftshift(np.fft.fft(np.fft.ifftshift(x, axes=axis), axis=axis, norm="ortho"), axes=axis)


def _centre_slice(n: int, keep: int) -> slice:
    start = (n - keep) // 2
    return slice(start, start + keep)


#: ``kspace_crop``: the central k-space block ``[h, w]`` to keep.
KspaceCrop = tuple[opt.PositiveInt, opt.PositiveInt]


def read_file(path: Path, kspace_crop: KspaceCrop | None = None) -> xr.Dataset:
    """One fastMRI file as an xarray Dataset on the reconstruction grid (see module doc)."""
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        text = " ".join(str(exc).split())
        raise InputError(path, f"not a readable HDF5 file ({text})", "re-download or regenerate it") from exc
    with f, opt.reading(path, "unreadable HDF5 data"):
        if "kspace" not in f:
            raise InputError(
                path,
                f"no 'kspace' dataset (found: {', '.join(f.keys()) or 'none'})",
                "give fastMRI .h5 files",
            )
        if "ismrmrd_header" not in f:
            raise InputError(
                path,
                "no 'ismrmrd_header' dataset",
                "give original fastMRI .h5 files, which carry the header",
            )
        header = parse_header(f["ismrmrd_header"][()], path)
        ds = f["kspace"]
        if ds.ndim not in (3, 4) or not np.issubdtype(ds.dtype, np.complexfloating):
            raise InputError(
                path,
                f"'kspace' has shape {ds.shape} dtype {ds.dtype}",
                "expected complex (slices, [coils,] H, W)",
            )
        kspace = ds[()].astype(np.complex64)
        target_name = next((n for n in TARGET_NAMES if n in f), None)
        target = f[target_name][()].astype(np.float32) if target_name else None
        file_mask = f["mask"][()].astype(bool) if "mask" in f else None
        attrs = dict(f.attrs)
    if kspace.ndim == 3:
        kspace = kspace[:, None]
    opt.check_finite(path, "'kspace'", kspace, "exclude or repair this file")
    slices, coils, height, width = kspace.shape
    if file_mask is not None and file_mask.shape != (width,):
        raise InputError(
            path,
            f"'mask' has shape {file_mask.shape}, k-space has {width} columns",
            "the mask must be 1D over the phase-encode columns",
        )
    if target is not None and target.shape != (slices, *header.recon):
        raise InputError(
            path,
            f"'{target_name}' has shape {target.shape}, expected {(slices, *header.recon)} "
            f"({slices} k-space slices, header reconSpace matrix {header.recon[0]}x{header.recon[1]})",
            "the file is corrupt or was edited; download it again",
        )
    if target is not None:
        opt.check_finite(path, f"'{target_name}'", target, "exclude or repair this file")
    # remove readout oversampling: crop the image along the readout axis
    if header.encoded[0] > header.recon[0] and height == header.encoded[0]:
        image = _ifft1c(kspace, axis=2)[:, :, _centre_slice(height, header.recon[0])]
        kspace = _fft1c(image, axis=2).astype(np.complex64)
    mask = np.zeros(width, bool)
    mask[max(0, header.padding_left) : min(width, header.padding_right)] = True
    if file_mask is not None:
        mask &= file_mask
    if kspace_crop is not None:
        h, w = (int(v) for v in kspace_crop)
        if h > kspace.shape[2] or w > width:
            raise InputError(
                path,
                f"kspace_crop {h}x{w} is larger than the k-space {kspace.shape[2]}x{width}",
                "choose a smaller kspace_crop",
            )
        kspace = kspace[:, :, _centre_slice(kspace.shape[2], h), _centre_slice(width, w)]
        mask = mask[_centre_slice(width, w)]
    data = {
        "kspace": (("slice", "coil", "readout", "phase"), kspace),
        "mask": (("slice", "phase"), np.broadcast_to(mask, (slices, mask.size)).copy()),
    }
    if target is not None:
        data["target"] = (("slice", "target_y", "target_x"), target)
    coords = {
        "file": ("slice", np.array([path.name] * slices)),
        "slice_in_file": ("slice", np.arange(slices)),
        "acquisition": ("slice", np.array([str(attrs.get("acquisition", ""))] * slices)),
        "acceleration": ("slice", np.full(slices, float(attrs.get("acceleration", 1.0)))),
        "num_low_frequency": ("slice", np.full(slices, int(attrs.get("num_low_frequency", 0)))),
    }
    out = xr.Dataset(data, coords=coords)
    out["kspace"].attrs.update(
        long_name="k-space on the reconstruction grid (readout oversampling removed)", units="a.u."
    )
    out["mask"].attrs.update(long_name="acquired phase-encode columns")
    if target is not None:
        out["target"].attrs.update(long_name=f"reference reconstruction ({target_name})", units="a.u.")
    return out


def find_files(inputs: Sequence[Path]) -> list[Path]:
    """Expand folders to their ``*.h5`` files (sorted); missing paths are an error."""
    files: list[Path] = []
    for p in inputs:
        if p.is_dir():
            found = sorted(p.glob("*.h5"))
            if not found:
                raise InputError(p, "folder holds no .h5 files", "point at fastMRI .h5 files or their folder")
            files.extend(found)
        elif p.exists():
            files.append(p)
        else:
            raise InputError(p, "no such file or folder", "fix the path in the config")
    return files


def iter_files(files: Sequence[Path], kspace_crop: KspaceCrop | None) -> Iterator[xr.Dataset]:
    """Read files one at a time (memory bounded by one file), checking they share one grid."""
    first: xr.Dataset | None = None
    for path in files:
        ds = read_file(path, kspace_crop)
        if first is None:
            first = ds
        elif ds["kspace"].shape[1:] != first["kspace"].shape[1:] or ("target" in ds) != ("target" in first):
            raise InputError(
                path,
                f"k-space (coil, readout, phase) {ds['kspace'].shape[1:]} or target presence differs "
                f"from {files[0].name}",
                "ingest files of one shape and kind per store, or set kspace_crop",
            )
        yield ds


def ingest(inputs: Sequence[Path], out: Path, kspace_crop: KspaceCrop | None = None) -> Path:
    """Ingest fastMRI files or folders into one zarr store, streaming file by file.

    All files must share the reconstruction-grid shape (use ``kspace_crop`` to bring
    files of different widths to one grid). Written atomically.
    """
    opt.check_arguments("ingest fastmri", ingest, {"kspace_crop": kspace_crop})
    files = find_files(inputs)
    record = provenance(
        step="ingest fastmri", source_files=[str(f) for f in files], options={"kspace_crop": kspace_crop}
    )
    blocks = (set_provenance(ds, record) for ds in iter_files(files, kspace_crop))
    return write_zarr_blocks(blocks, out, append_dim="slice", desc="ingest fastmri", total=len(files))
