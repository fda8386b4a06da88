"""Fuzz test of the four readers on corrupted copies of the real sample files (../shared/data/real).

Every variant is built in the test from a real file (fastMRI: a fastMRI-layout file around the
real sigpy k-space; PROVENANCE.md there names the sources). Through the CLI each must exit with
code 2 and exactly one line on stderr naming the file, leave no store and no temporary folder,
and leave an existing store at the output path untouched. Stderr is counted as the command line
would print it: captured output plus Python warnings and log records of level WARNING and above.

Variants marked ``readable=True`` are undetectable by design: a changed value in a format
without checksums (netCDF-3, HDF5 contiguous data, TIFF, IGRA text), or a cut at a record
boundary, leaves a valid file. For those the reader may refuse cleanly or write a store, which
must then pass the store's own checks.
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile

from diffinv.cli import main
from diffinv.io.store import get_provenance, open_zarr

NC = "era5/earthkit/era5_2t_1.nc"
ERAINT = "era5/eraint_uvz.nc"
GRIB = "era5/era5-2mt-2019-03-uk.grib"
ZARR = "era5/earthkit/test4_t_z_2007.zarr"
IGRA = "igra/AUM00011035-data.txt.gz"
SINOGRAM = "ct/sarepy_sinogram_360_neutron_image.tif"
KSPACE = "mri/sigpy_tutorial_cartesian_ksp.npy"
GRIB_MESSAGE = 3360  # bytes per message of the UK GRIB file, padding included

Build = Callable[[Path, Path], Path]  # (real data folder, folder for the variant) -> input path


@dataclass(frozen=True)
class Variant:
    """A corrupted input: how to build it, and whether it is undetectable by design."""

    name: str
    build: Build
    readable: bool = False


# --- builders -------------------------------------------------------------------------------------


def _write(out: Path, data: bytes) -> Path:
    out.write_bytes(data)
    return out


def _cut(rel: str, keep: float, name: str | None = None) -> Build:
    """The first ``keep`` (fraction, or bytes if > 1) of a real file."""

    def build(real: Path, d: Path) -> Path:
        data = (real / rel).read_bytes()
        return _write(d / (name or Path(rel).name), data[: int(keep if keep > 1 else len(data) * keep)])

    return build


def _edit(rel: str, change: Callable[[bytearray], None], name: str | None = None) -> Build:
    """A real file with its bytes changed in place by ``change``."""

    def build(real: Path, d: Path) -> Path:
        data = bytearray((real / rel).read_bytes())
        change(data)
        return _write(d / (name or Path(rel).name), bytes(data))

    return build


def _flip(offset: int, mask: int = 0xFF) -> Callable[[bytearray], None]:
    def change(data: bytearray) -> None:
        data[offset] ^= mask

    return change


def _zero(start: int, stop: int | None) -> Callable[[bytearray], None]:
    def change(data: bytearray) -> None:
        data[start:stop] = bytes(len(data[start:stop]))

    return change


def _truncate(fraction: float) -> Callable[[bytearray], None]:
    def change(data: bytearray) -> None:
        del data[int(len(data) * fraction) :]

    return change


def _netcdf_first_dim_length(data: bytearray) -> None:
    """Flip the high byte of the first dimension length in a netCDF-3 header."""
    n = int.from_bytes(data[16:20], "big")
    data[20 + n + -n % 4] ^= 0x01


def _copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, copy_function=shutil.copyfile)
    for folder, _, _ in os.walk(dst):
        os.chmod(folder, 0o755)  # the shared copies are read-only
    return dst


def _zarr(change: Callable[[Path], None]) -> Build:
    def build(real: Path, d: Path) -> Path:
        store = _copy_tree(real / ZARR, d / "t_z.zarr")
        change(store)
        return store

    return build


def _random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(path.stat().st_size))


_MRI_HEADER = (
    '<?xml version="1.0" encoding="utf-8"?><ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"><encoding>'
    "<encodedSpace><matrixSize><x>64</x><y>48</y><z>1</z></matrixSize></encodedSpace>"
    "<reconSpace><matrixSize><x>64</x><y>48</y><z>1</z></matrixSize></reconSpace>"
    "<encodingLimits><kspace_encoding_step_1><minimum>0</minimum><maximum>47</maximum><center>24</center>"
    "</kspace_encoding_step_1></encodingLimits></encoding></ismrmrdHeader>"
)


def _fastmri_datasets(real: Path) -> dict[str, np.ndarray | str]:
    """A fastMRI-layout file from the real brain k-space: 4 coils, central 64 x 48 block, RSS target."""
    kspace = np.load(real / KSPACE)[:4, 83:147, 66:114][None]
    image = np.fft.fftshift(
        np.fft.ifft2(np.fft.ifftshift(kspace, axes=(-2, -1)), norm="ortho"), axes=(-2, -1)
    )
    rss = np.sqrt((np.abs(image) ** 2).sum(axis=1)).astype(np.float32)
    return {"kspace": kspace, "reconstruction_rss": rss, "ismrmrd_header": _MRI_HEADER}


def _fastmri(change: Callable[[dict], None] | None = None, name: str = "brain.h5") -> Build:
    def build(real: Path, d: Path) -> Path:
        datasets = _fastmri_datasets(real)
        if change is not None:
            change(datasets)
        with h5py.File(d / name, "w") as f:
            for key, value in datasets.items():
                f.create_dataset(key, data=value)
        return d / name

    return build


def _fastmri_bytes(change: Callable[[bytearray], None]) -> Build:
    def build(real: Path, d: Path) -> Path:
        path = _fastmri()(real, d)
        data = bytearray(path.read_bytes())
        change(data)
        return _write(path, bytes(data))

    return build


def _target_cropped(datasets: dict) -> None:
    datasets["reconstruction_rss"] = datasets["reconstruction_rss"][:, :48]


def _nan_kspace(datasets: dict) -> None:
    datasets["kspace"] = datasets["kspace"].copy()
    datasets["kspace"][0, 1, 5, 5] = np.nan


def _inf_target(datasets: dict) -> None:
    datasets["reconstruction_rss"] = datasets["reconstruction_rss"].copy()
    datasets["reconstruction_rss"][0, 3, 3] = np.inf


def _igra_text(real: Path, soundings: int = 12) -> bytes:
    """The first ``soundings`` soundings of the Vienna file."""
    lines = gzip.decompress((real / IGRA).read_bytes()).splitlines(keepends=True)
    heads = [i for i, line in enumerate(lines) if line.startswith(b"#")]
    return b"".join(lines[: heads[soundings]])


def _igra(change: Callable[[bytes], bytes], name: str = "vienna.txt", gz: bool = False) -> Build:
    def build(real: Path, d: Path) -> Path:
        text = _igra_text(real)
        return _write(d / name, change(gzip.compress(text, mtime=0) if gz else text))

    return build


def _igra_cut_soundings(
    soundings: int, extra_lines: int = 0, extra_bytes: int = 0
) -> Callable[[bytes], bytes]:
    def change(text: bytes) -> bytes:
        lines = text.splitlines(keepends=True)
        heads = [i for i, line in enumerate(lines) if line.startswith(b"#")]
        cut = sum(len(line) for line in lines[: heads[soundings] + extra_lines]) + extra_bytes
        return text[:cut]

    return change


def _igra_put(line: int, column: int, char: bytes) -> Callable[[bytes], bytes]:
    """Put ``char`` (or the next digit) at 1-based ``column`` of 0-based line ``line``."""

    def change(text: bytes) -> bytes:
        at = sum(len(row) for row in text.splitlines(keepends=True)[:line]) + column - 1
        new = char or bytes([ord("0") + (text[at] - ord("0") + 1) % 10])
        return text[:at] + new + text[at + 1 :]

    return change


def _flip_middle(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]


def _zero_middle(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes(100) + data[middle + 100 :]


def _sinogram_image(real: Path) -> np.ndarray:
    return tifffile.imread(real / SINOGRAM)


def _tiff(change: Callable[[np.ndarray], np.ndarray], name: str = "sinogram.tif") -> Build:
    def build(real: Path, d: Path) -> Path:
        tifffile.imwrite(d / name, change(_sinogram_image(real).astype(np.float32)))
        return d / name

    return build


def _with(value: float, *at: tuple[int, int]) -> Callable[[np.ndarray], np.ndarray]:
    def change(image: np.ndarray) -> np.ndarray:
        for index in at:
            image[index] = value
        return image

    return change


def _lodopab(change: Callable[[np.ndarray], np.ndarray] | None = None, cut: float = 1.0) -> Build:
    """A LoDoPaB-layout observation file from the real sinogram (post-log, over mu_max)."""

    def build(real: Path, d: Path) -> Path:
        image = _sinogram_image(real).astype(np.float64)
        observation = (-np.log(np.clip(image / image.max(), 1e-4, None)) / 81.35858).astype(np.float32)[None]
        path = d / "observation_test_000.hdf5"
        with h5py.File(path, "w") as f:
            f.create_dataset("data", data=change(observation) if change else observation)
        data = path.read_bytes()
        return _write(path, data[: int(len(data) * cut)])

    return build


def _nexus_without_links(real: Path, d: Path) -> Path:
    """The DIAD NeXus file without the folder its frames are linked from."""
    return _write(d / "k11-18014.nxs", (real / "ct/httomo_k11_diad/k11-18014.nxs").read_bytes())


def _empty(name: str) -> Build:
    return lambda real, d: _write(d / name, b"")


def _other(rel: str, name: str) -> Build:
    """A real file of another format under the reader's file name."""
    return lambda real, d: _write(d / name, (real / rel).read_bytes())


# --- the variants --------------------------------------------------------------------------------

VARIANTS: dict[str, list[Variant]] = {
    "era5": [
        Variant("nc3-cut-75pct-issue", _cut(NC, 1131)),
        Variant("nc3-cut-99pct", _cut(NC, 0.99)),
        Variant("nc3-cut-in-header", _cut(NC, 0.3)),
        Variant("nc3-header-dim-length-flipped", _edit(NC, _netcdf_first_dim_length)),
        Variant("nc3-header-version-flipped", _edit(NC, _flip(3))),
        Variant("nc3-data-byte-flipped", _edit(NC, _flip(-2, 0x01)), readable=True),
        Variant("eraint-cut-50pct", _cut(ERAINT, 0.5)),
        Variant("eraint-month-zeroed", _edit(ERAINT, _zero(-8, None))),
        Variant("grib-cut-mid-message", _cut(GRIB, 0.3)),
        Variant("grib-cut-in-section-0", _cut(GRIB, 10 * GRIB_MESSAGE + 6)),
        Variant("grib-length-flipped", _edit(GRIB, _flip(5 * GRIB_MESSAGE + 4, 0x10))),
        Variant("zarr-chunk-missing", _zarr(lambda s: (s / "t" / "0.1.0.0").unlink())),
        Variant("zarr-chunk-random-bytes", _zarr(lambda s: _random_bytes(s / "z" / "0.0.0.0"))),
        Variant("zarr-metadata-garbage", _zarr(lambda s: (s / "t" / ".zarray").write_text("{shape: ["))),
        Variant("empty", _empty("empty.nc")),
        Variant("wrong-format", _other(IGRA, "igra.nc")),
    ],
    "fastmri": [
        Variant("cut-10pct", _fastmri_bytes(_truncate(0.1))),
        Variant("cut-50pct", _fastmri_bytes(_truncate(0.5))),
        Variant("cut-99pct", _fastmri_bytes(_truncate(0.99))),
        Variant("superblock-flipped", _fastmri_bytes(_flip(0))),
        Variant("metadata-zeroed", _fastmri_bytes(_zero(400, 912))),
        Variant("object-header-zeroed", _fastmri_bytes(_zero(1200, 1712))),
        Variant("kspace-data-zeroed", _fastmri_bytes(_zero(4096, 8192)), readable=True),
        Variant("kspace-nan", _fastmri(_nan_kspace)),
        Variant("target-inf", _fastmri(_inf_target)),
        Variant("target-wrong-shape", _fastmri(_target_cropped)),
        Variant("header-xml-cut", _fastmri(lambda d: d.update(ismrmrd_header=_MRI_HEADER[:200]))),
        Variant("kspace-real", _fastmri(lambda d: d.update(kspace=np.abs(d["kspace"])))),
        Variant("empty", _empty("brain.h5")),
        Variant("wrong-format", _other("mri/twixtools/gre.dat", "gre.h5")),
    ],
    "igra": [
        Variant("gz-cut-50pct", _igra(lambda b: b[: len(b) // 2], "vienna.txt.gz", gz=True)),
        Variant("gz-cut-99pct", _igra(lambda b: b[: len(b) * 99 // 100], "vienna.txt.gz", gz=True)),
        Variant("gz-byte-flipped", _igra(_flip_middle, "vienna.txt.gz", gz=True)),
        Variant("cut-mid-sounding", _igra(_igra_cut_soundings(5, extra_lines=3))),
        Variant("cut-mid-line", _igra(_igra_cut_soundings(5, extra_lines=3, extra_bytes=20))),
        Variant("cut-at-sounding-boundary", _igra(_igra_cut_soundings(5)), readable=True),
        Variant("header-numlev-changed", _igra(_igra_put(334, 35, b""))),
        Variant("header-hash-flipped", _igra(_igra_put(0, 1, b"X"))),
        Variant("letter-in-data", _igra(_igra_put(336, 25, b"x"))),
        Variant("digit-in-data-changed", _igra(_igra_put(336, 26, b"")), readable=True),
        Variant("zeroed-block", _igra(_zero_middle)),
        Variant("empty", _empty("vienna.txt")),
        Variant("wrong-format", _other(NC, "vienna.txt")),
    ],
    "ct": [
        Variant("tiff-cut-2pct", _cut(SINOGRAM, 0.02)),
        Variant("tiff-cut-50pct", _cut(SINOGRAM, 0.5)),
        Variant("tiff-cut-99pct", _cut(SINOGRAM, 0.99)),
        Variant("tiff-magic-flipped", _edit(SINOGRAM, _flip(0))),
        Variant("tiff-ifd-offset-flipped", _edit(SINOGRAM, _flip(5))),
        Variant("tiff-pixels-zeroed", _edit(SINOGRAM, _zero(200_000, 210_000)), readable=True),
        Variant("tiff-nan", _tiff(_with(np.nan, (5, 7), (100, 100)))),
        Variant("tiff-inf", _tiff(_with(np.inf, (5, 7)))),
        Variant("lodopab-cut-50pct", _lodopab(cut=0.5)),
        Variant("lodopab-nan", _lodopab(_with(np.nan, (0, 3, 3)))),
        Variant("nexus-external-data-missing", _nexus_without_links),
        Variant("empty", _empty("sinogram.tif")),
        Variant("wrong-format", _other("ct/tomopy_xradia/txrm_test_chip_tomo.txrm", "chip.tif")),
    ],
}


def _good_input(reader: str, real: Path, d: Path) -> Path:
    """An intact input of each reader, for the store that must survive."""
    return {
        "era5": lambda: real / NC,
        "fastmri": lambda: _fastmri()(real, d),
        "igra": lambda: _write(d / "vienna.txt", _igra_text(real)),
        "ct": lambda: real / SINOGRAM,
    }[reader]()


@pytest.fixture(scope="module")
def good_stores(real_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A store written by each reader from an intact input."""
    root = tmp_path_factory.mktemp("good")
    stores = {}
    for reader in VARIANTS:
        stores[reader] = root / f"{reader}.zarr"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert (
                main(["ingest", reader, str(_good_input(reader, real_data, root)), "-o", str(stores[reader])])
                == 0
            )
    return stores


# --- the test -----------------------------------------------------------------------------------


def _ingest(
    reader: str, path: Path, out: Path, capfd: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> tuple[int, list[str]]:
    """Exit code and the stderr lines the command line would print."""
    caplog.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(["ingest", reader, str(path), "-o", str(out)])
    err = capfd.readouterr().err.splitlines()
    err += sorted({str(w.message) for w in caught})
    err += [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    return code, err


def _snapshot(store: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(store)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(store.rglob("*"))
        if p.is_file()
    }


def _check_store(store: Path) -> None:
    """The reader's own checks of a written store: provenance, data, finite floats."""
    ds = open_zarr(store)
    assert get_provenance(ds)
    assert ds.data_vars and all(ds.sizes.values())
    for name, var in ds.data_vars.items():
        if var.dtype.kind == "f":
            assert not np.isinf(var.values).any(), name


def _refused(code: int, err: list[str], path: Path) -> None:
    assert code == 2, f"exit {code}, stderr {err}"
    assert len(err) == 1, err
    assert err[0].startswith("diffinv: error: ") and path.name in err[0], err


CASES = [(reader, variant) for reader, variants in VARIANTS.items() for variant in variants]


@pytest.mark.parametrize("reader,variant", CASES, ids=[f"{r}-{v.name}" for r, v in CASES])
def test_corrupted_input_is_refused_in_one_line(
    reader: str,
    variant: Variant,
    real_data: Path,
    good_stores: dict[str, Path],
    tmp_path: Path,
    capfd: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = tmp_path / "in"
    source.mkdir()
    path = variant.build(real_data, source)
    out = tmp_path / "out"
    out.mkdir()
    existing = shutil.copytree(good_stores[reader], out / "existing.zarr")
    before = _snapshot(existing)
    for store in (out / "new.zarr", existing):
        code, err = _ingest(reader, path, store, capfd, caplog)
        if variant.readable and code == 0:
            _check_store(store)
            continue
        _refused(code, err, path)
        if store == existing:
            assert _snapshot(existing) == before, "the existing store was changed"
        else:
            assert not store.exists(), "a store was written for refused input"
    assert sorted(p.name for p in out.iterdir() if p.name not in ("new.zarr", "existing.zarr")) == [], (
        "leftovers"
    )
