"""fastMRI reader on files written by the demo generator in the real layout."""

import h5py
import numpy as np
import pytest

from diffinv.demo.mri import write_demo
from diffinv.errors import InputError
from diffinv.io.fastmri import ingest, parse_header, read_file
from diffinv.io.store import get_provenance, open_zarr


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("fastmri")
    write_demo(
        root, seed=1, size=16, coils=3, slices_per_volume=2, train_volumes=2, val_volumes=1, test_volumes=1
    )
    return root


def test_demo_files_have_the_fastmri_layout(demo):
    with h5py.File(demo / "val" / "file_demo_val_0000.h5") as f:
        assert f["kspace"].shape == (2, 3, 32, 16) and f["kspace"].dtype == np.complex64
        assert f["reconstruction_rss"].shape == (2, 16, 16)
        header = parse_header(f["ismrmrd_header"][()], demo)
        assert header.encoded == (32, 16) and header.recon == (16, 16)
    with h5py.File(demo / "test" / "file_demo_test_0000.h5") as f:
        assert "reconstruction_rss" not in f and f["mask"].dtype == bool
        assert f.attrs["acceleration"] == 4 and f.attrs["num_low_frequency"] >= 2


def test_reader_removes_readout_oversampling_exactly(demo):
    """After cropping the readout FOV, the RSS of the k-space equals the file's target."""
    ds = read_file(demo / "val" / "file_demo_val_0000.h5")
    assert ds["kspace"].shape == (2, 3, 16, 16)
    k = ds["kspace"].values
    img = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    rss = np.sqrt((np.abs(img) ** 2).sum(1))
    np.testing.assert_allclose(rss, ds["target"].values, rtol=1e-4, atol=1e-5)
    assert ds["mask"].values.all()


def test_test_files_keep_their_mask_and_attrs(demo):
    ds = read_file(demo / "test" / "file_demo_test_0000.h5")
    assert "target" not in ds
    assert 2 <= ds["mask"].values[0].sum() < 16
    assert float(ds["acceleration"][0]) == 4.0


def test_ingest_streams_files_into_one_store(demo, tmp_path):
    out = ingest([demo / "train"], tmp_path / "train.zarr", kspace_crop=[8, 8])
    ds = open_zarr(out)
    assert ds.sizes == {"slice": 4, "coil": 3, "readout": 8, "phase": 8, "target_y": 16, "target_x": 16}
    assert sorted(set(ds["file"].values.tolist())) == ["file_demo_train_0000.h5", "file_demo_train_0001.h5"]
    assert get_provenance(ds)["options"] == {"kspace_crop": [8, 8]}


def _bad_file(path, **datasets):
    with h5py.File(path, "w") as f:
        for k, v in datasets.items():
            f.create_dataset(k, data=v)
    return path


def test_bad_inputs_name_the_file_and_write_nothing(demo, tmp_path):
    header = h5py.File(demo / "val" / "file_demo_val_0000.h5")["ismrmrd_header"][()]
    good_k = np.ones((1, 32, 16), np.complex64)
    cases = {
        "missing.h5": (None, "no such file"),
        "corrupt.h5": (b"not an hdf5 file", "not a readable HDF5"),
        "renamed.h5": (
            {"kspac": good_k, "ismrmrd_header": header},
            "no 'kspace' dataset \\(found: ismrmrd_header, kspac\\)",
        ),
        "real.h5": ({"kspace": np.ones((1, 32, 16), np.float32), "ismrmrd_header": header}, "dtype float32"),
        "nan.h5": ({"kspace": good_k * np.nan, "ismrmrd_header": header}, "NaN"),
        "noheader.h5": ({"kspace": good_k}, "ismrmrd_header"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif content is not None:
            _bad_file(path, **content)
        out = tmp_path / f"{name}.zarr"
        with pytest.raises(InputError, match=message) as info:
            ingest([demo / "val" / "file_demo_val_0000.h5", path], out)
        assert name in str(info.value) and "\n" not in str(info.value)
        assert not out.exists(), f"{name}: partial store left behind"
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".zarr" or ".tmp-" in p.name) == []


def test_single_coil_layout_round_trips(tmp_path):
    write_demo(
        tmp_path,
        seed=0,
        size=16,
        coils=1,
        slices_per_volume=2,
        train_volumes=0,
        val_volumes=1,
        test_volumes=1,
    )
    with h5py.File(tmp_path / "val" / "file_demo_val_0000.h5") as f:
        assert f["kspace"].shape == (2, 32, 16) and "reconstruction_esc" in f
    ds = read_file(tmp_path / "val" / "file_demo_val_0000.h5")
    assert ds["kspace"].shape == (2, 1, 16, 16)
    img = np.fft.fftshift(
        np.fft.ifft2(np.fft.ifftshift(ds["kspace"].values[:, 0], axes=(-2, -1)), norm="ortho"), axes=(-2, -1)
    )
    np.testing.assert_allclose(np.abs(img), ds["target"].values, rtol=1e-4, atol=1e-5)
    test = read_file(tmp_path / "test" / "file_demo_test_0000.h5")
    assert 2 <= test["mask"].values[0].sum() < 16
