"""Issue 16, readers: damaged inputs and bad ``--set`` values are refused in one line, never ingested.

Each test reproduces one defect of the issue with a real sample file (../shared/data/real; the
test is skipped without it) or a demo file, through the CLI as a user runs it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile

from diffinv.cli import main
from diffinv.demo.mri import write_demo
from diffinv.io.store import open_zarr

NC = "era5/earthkit/era5_2t_1.nc"
ERAINT = "era5/eraint_uvz.nc"
GRIB = "era5/era5-2mt-2019-03-uk.grib"
ZARR = "era5/earthkit/test4_t_z_2007.zarr"
IGRA = "igra/AUM00011035-data.txt.gz"
SINOGRAM = "ct/sarepy_sinogram_360_neutron_image.tif"


def _ingest(
    capsys: pytest.CaptureFixture, reader: str, path: Path, out: Path, *options: str
) -> tuple[int, str]:
    code = main(["ingest", reader, str(path), "-o", str(out), *(f"--set={o}" for o in options)])
    return code, capsys.readouterr().err


def _refused(code: int, err: str, out: Path, *words: str) -> None:
    """Exit 2, one line holding ``words``, no store."""
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert all(word in err for word in words), err
    assert not out.exists()


def _cut(real: Path, rel: str, keep: float, d: Path) -> Path:
    data = (real / rel).read_bytes()
    path = d / Path(rel).name
    path.write_bytes(data[: int(keep if keep > 1 else len(data) * keep)])
    return path


def _zarr_copy(real: Path, d: Path) -> Path:
    store = shutil.copytree(real / ZARR, d / "t_z.zarr", copy_function=shutil.copyfile)
    for folder in [store, *store.iterdir()]:
        if folder.is_dir():
            folder.chmod(0o755)  # the shared copies are read-only
    return store


@pytest.fixture(scope="module")
def mri_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mri")
    write_demo(
        root, seed=0, size=16, coils=2, slices_per_volume=2, train_volumes=0, val_volumes=1, test_volumes=0
    )
    return root / "val" / "file_demo_val_0000.h5"


# --- silent wrong data ---------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [1131, 0.99], ids=["head-c-1131", "99pct"])
def test_truncated_netcdf3_is_refused(real_data: Path, tmp_path: Path, capsys, keep: float) -> None:
    path = _cut(real_data, NC, keep, tmp_path)
    code, err = _ingest(capsys, "era5", path, tmp_path / "o.zarr")
    _refused(code, err, tmp_path / "o.zarr", "era5_2t_1.nc: truncated", "header declares 1508 bytes")


def test_grib_cut_mid_message_is_refused(real_data: Path, tmp_path: Path, capsys) -> None:
    path = _cut(real_data, GRIB, 10 * 3360 + 4, tmp_path)  # 10 whole messages and 4 bytes of the 11th
    code, err = _ingest(capsys, "era5", path, tmp_path / "o.zarr")
    _refused(code, err, tmp_path / "o.zarr", "era5-2mt-2019-03-uk.grib: GRIB message 11", "cut short")


def test_zarr_missing_chunk_is_refused_unless_allowed(real_data: Path, tmp_path: Path, capsys) -> None:
    store = _zarr_copy(real_data, tmp_path)
    (store / "t" / "0.1.0.0").unlink()
    code, err = _ingest(capsys, "era5", store, tmp_path / "o.zarr")
    _refused(
        code, err, tmp_path / "o.zarr", "t_z.zarr: array 't' lacks 1 of its 2 chunks", "allow_missing_chunks"
    )
    code, err = _ingest(capsys, "era5", store, tmp_path / "o.zarr", "allow_missing_chunks=true")
    assert code == 0, err
    assert float(np.isnan(open_zarr(tmp_path / "o.zarr")["t"]).mean()) == 0.5


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_ct_non_finite_input_is_refused_naming_array_and_count(
    real_data: Path, tmp_path: Path, capsys, value: float
) -> None:
    image = tifffile.imread(real_data / SINOGRAM).astype(np.float32)
    image[3, 4] = image[10, 20] = value
    tifffile.imwrite(tmp_path / "sino.tif", image)
    code, err = _ingest(capsys, "ct", tmp_path / "sino.tif", tmp_path / "o.zarr")
    _refused(code, err, tmp_path / "o.zarr", "sino.tif: the intensity image holds 2 NaN or infinite value(s)")


def test_ct_lodopab_nan_is_refused(real_data: Path, tmp_path: Path, capsys) -> None:
    data = np.zeros((2, 30, 40), np.float32)
    data[1, 2, 3] = np.nan
    with h5py.File(tmp_path / "observation_test_000.hdf5", "w") as f:
        f.create_dataset("data", data=data)
    code, err = _ingest(capsys, "ct", tmp_path / "observation_test_000.hdf5", tmp_path / "o.zarr")
    _refused(code, err, tmp_path / "o.zarr", "dataset 'data' (samples 0-1) holds 1 NaN or infinite value(s)")


def test_ct_ground_truth_of_other_length_is_refused(tmp_path: Path, capsys) -> None:
    for name, samples in (("observation_test_000.hdf5", 3), ("ground_truth_test_000.hdf5", 2)):
        with h5py.File(tmp_path / name, "w") as f:
            f.create_dataset("data", data=np.zeros((samples, 10, 12), np.float32))
    code, err = _ingest(capsys, "ct", tmp_path, tmp_path / "o.zarr")
    _refused(
        code,
        err,
        tmp_path / "o.zarr",
        "ground_truth_test_000.hdf5: ground truth 'data' has shape (2, 10, 12)",
    )


def test_fastmri_target_of_wrong_shape_is_refused(mri_demo: Path, tmp_path: Path, capsys) -> None:
    path = shutil.copyfile(mri_demo, tmp_path / "file.h5")
    with h5py.File(path, "a") as f:
        target = f["reconstruction_rss"][()]
        del f["reconstruction_rss"]
        f.create_dataset("reconstruction_rss", data=target[:, 2:-2])
    code, err = _ingest(capsys, "fastmri", path, tmp_path / "o.zarr")
    _refused(
        code,
        err,
        tmp_path / "o.zarr",
        "file.h5: 'reconstruction_rss' has shape (2, 12, 16), expected (2, 16, 16)",
    )


# --- tracebacks ----------------------------------------------------------------------------------


def test_truncated_era_interim_is_one_line(real_data: Path, tmp_path: Path, capsys) -> None:
    """It used to fail with a traceback: ``Month out of range in datetime string "2000-00-01"``."""
    path = _cut(real_data, ERAINT, 0.5, tmp_path)
    code, err = _ingest(capsys, "era5", path, tmp_path / "o.zarr")
    _refused(code, err, tmp_path / "o.zarr", "eraint_uvz.nc: truncated")


def test_corrupt_month_axis_is_one_line(real_data: Path, tmp_path: Path, capsys) -> None:
    data = bytearray((real_data / ERAINT).read_bytes())
    data[-8:] = bytes(8)  # the month variable is the last 8 bytes
    (tmp_path / "eraint.nc").write_bytes(bytes(data))
    code, err = _ingest(capsys, "era5", tmp_path / "eraint.nc", tmp_path / "o.zarr")
    _refused(code, err, tmp_path / "o.zarr", "eraint.nc: the month axis holds [0, 0], not months 1-12")


def test_zarr_chunk_of_random_bytes_is_one_line(real_data: Path, tmp_path: Path, capsys) -> None:
    store = _zarr_copy(real_data, tmp_path)
    chunk = store / "t" / "0.0.0.0"
    chunk.write_bytes(np.random.default_rng(1).bytes(chunk.stat().st_size))
    code, err = _ingest(capsys, "era5", store, tmp_path / "o.zarr")
    _refused(code, err, tmp_path / "o.zarr", "t_z.zarr: data of time steps from 0 unreadable")


BAD_SET = [
    ("era5", NC, "lat=[north,south]", "option lat=['north', 'south'] is not a list of 2 values"),
    ("era5", NC, "time=[2015-02-30,2015-03-01]", "option time=['2015-02-30', '2015-03-01'] is not"),
    ("era5", NC, "time_chunk=0", "option time_chunk=0 is not an integer greater than 0"),
    ("fastmri", None, "kspace_crop=[abc,1]", "option kspace_crop=['abc', 1] is not a list of 2 values"),
    ("fastmri", None, "kspace_crop=[0,8]", "option kspace_crop=[0, 8] is not a list of 2 values"),
    ("ct", SINOGRAM, "angle_range=[0,abc]", "option angle_range=[0, 'abc'] is not a list of 2 values"),
    ("ct", SINOGRAM, "angle_endpoint=maybe", "option angle_endpoint='maybe' is not true or false"),
    ("igra", IGRA, "time=[2015-02-30,2015-03-01]", "option time=['2015-02-30', '2015-03-01'] is not"),
    ("igra", IGRA, "station_list=missing-list.txt", "option station_list='missing-list.txt' is not"),
    ("igra", IGRA, "block_soundings=abc", "option block_soundings='abc' is not an integer greater than 0"),
]


@pytest.mark.parametrize("reader,rel,option,message", BAD_SET, ids=[f"{r}-{o}" for r, _, o, _ in BAD_SET])
def test_bad_set_value_is_one_line_naming_the_option(
    real_data: Path,
    mri_demo: Path,
    tmp_path: Path,
    capsys,
    reader: str,
    rel: str | None,
    option: str,
    message: str,
) -> None:
    path = mri_demo if rel is None else real_data / rel
    code, err = _ingest(capsys, reader, path, tmp_path / "o.zarr", option)
    _refused(code, err, tmp_path / "o.zarr", message, "(fix: ")
