"""CT reader: the measured neutron sinogram and Diamond NeXus scan, the demo files, bad input."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import xarray as xr

from diffinv.demo import ct as demo_ct
from diffinv.errors import DiffinvError, InputError
from diffinv.io.ct import attenuation, ingest, read_ct
from diffinv.io.store import get_provenance

SAREPY = "ct/sarepy_sinogram_360_neutron_image.tif"
DIAD = "ct/httomo_k11_diad/k11-18014.nxs"


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return demo_ct.write_demo(
        tmp_path_factory.mktemp("ct"), seed=2, volumes=2, slices=4, size=32, angles=30, samples_per_file=4
    )


def _layout(ds: xr.Dataset) -> None:
    assert ds["sinogram"].dims == ("projection", "angle", "detector")
    assert ds["sinogram"].dtype == np.float32
    assert ds["angle"].attrs["units"] == "rad"
    assert np.isfinite(ds["sinogram"]).all()


# --- real files ----------------------------------------------------------------------------------


def test_neutron_tiff_sinogram(real_data: Path) -> None:
    ds = read_ct(real_data / SAREPY, angle_range=[0, 360], angle_endpoint=True)
    _layout(ds)
    assert dict(ds.sizes) == {"projection": 1, "angle": 459, "detector": 503}
    np.testing.assert_allclose(ds["angle"].values[[0, -1]], [0.0, 2 * np.pi])
    sino = ds["sinogram"].values[0]
    assert abs(np.median(sino[:, :10])) < 0.02  # open beam at the detector edges
    assert np.median(sino[:, 240:260]) > 0.5  # the sample in the middle
    assert sino.max() == pytest.approx(-np.log(1e-4), rel=1e-6)  # zero counts clipped
    assert ds.attrs["n_clipped"] == np.count_nonzero(tifffile.imread(real_data / SAREPY) == 0)
    # 0 and 360 degrees see the same projection
    assert np.abs(sino[0] - sino[-1]).mean() < np.abs(sino[0] - sino[115]).mean() / 3


def test_diamond_nexus_scan(real_data: Path, tmp_path: Path) -> None:
    path = real_data / DIAD
    out = ingest([path], tmp_path / "diad.zarr", rows_per_chunk=8)
    ds = xr.open_zarr(out, consolidated=False).load()
    _layout(ds)
    assert dict(ds.sizes) == {"projection": 22, "angle": 3001, "detector": 26}
    assert (ds.attrs["n_flat"], ds.attrs["n_dark"]) == (100, 100)
    assert (ds.attrs["n_clipped"], ds.attrs["clipped_fraction"]) == (0, 0.0)  # recorded after writing
    deg = np.rad2deg(ds["angle"].values)
    assert 89.9 < deg.min() and deg.max() < 270.1 and np.all(np.diff(deg) > 0)
    assert 0 < float(ds["sinogram"].mean()) < 1
    assert get_provenance(ds)["source_files"] == [str(path)]
    with h5py.File(path) as f:  # one frame by hand: -ln((I - D) / (F - D))
        key = f["entry/instrument/imaging/image_key"][()]
        data = f["entry/imaging/data"]
        frame = data[np.flatnonzero(key == 0)[10]].astype(float)
        flat = data[np.flatnonzero(key == 1)].astype(float).mean(0)
        dark = data[np.flatnonzero(key == 2)].astype(float).mean(0)
    np.testing.assert_allclose(
        ds["sinogram"].values[:, 10, :], -np.log((frame - dark) / (flat - dark)), rtol=1e-5, atol=1e-6
    )


# --- demo files ----------------------------------------------------------------------------------


def test_demo_lodopab_round_trip(demo_files: list[Path], tmp_path: Path) -> None:
    assert [p.name for p in demo_files] == ["observation_test_000.hdf5", "observation_test_001.hdf5"]
    ds = xr.open_zarr(
        ingest([demo_files[0].parent], tmp_path / "ct.zarr"), consolidated=False
    ).load()  # folder: observations, truth beside
    _layout(ds)
    assert dict(ds.sizes) == {"projection": 8, "angle": 30, "detector": 2 * 23 + 1, "y": 32, "x": 32}
    np.testing.assert_allclose(ds["angle"].values, (np.arange(30) + 0.5) * np.pi / 30)
    np.testing.assert_allclose(ds["detector"].values, demo_ct.lodopab_detector(32))
    assert ds.attrs["source_layout"] == "lodopab" and ds["sinogram"].attrs["units"] == "m"
    clean = demo_ct.project(ds["truth"].values[5], 30)
    noisy = ds["sinogram"].values[5]
    assert np.abs(noisy - clean).mean() < 0.1 * clean.mean()  # Poisson noise at 4096 photons


def test_intensity_hdf5_with_flat_and_dark(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = rng.uniform(0, 2, (3, 12, 16))  # (angle, row, column)
    flat, dark = rng.uniform(900, 1100, (12, 16)), rng.uniform(90, 110, (12, 16))
    with h5py.File(tmp_path / "scan.h5", "w") as f:
        f["data"] = (flat - dark) * np.exp(-y) + dark  # flats and darks both include the dark current
        f["flat"] = np.stack([flat, flat])
        f["dark"] = dark
        f["angles"] = np.array([0.0, 60.0, 120.0])
        f["angles"].attrs["units"] = "degree"
    ds = read_ct(tmp_path / "scan.h5", rows_per_chunk=5)
    assert dict(ds.sizes) == {"projection": 12, "angle": 3, "detector": 16}
    np.testing.assert_allclose(ds["sinogram"].values, y.transpose(1, 0, 2), rtol=1e-5)
    np.testing.assert_allclose(ds["angle"].values, np.deg2rad([0, 60, 120]))


def test_intensity_tiff_with_flat_file(tmp_path: Path) -> None:
    sino = np.full((4, 20), 1000.0)
    sino[:, 8:12] = 100.0
    tifffile.imwrite(tmp_path / "sino.tif", sino.astype(np.uint16))
    tifffile.imwrite(tmp_path / "flat.tif", np.full((2, 20), 1000, np.uint16))
    ds = read_ct(tmp_path / "sino.tif", flat=str(tmp_path / "flat.tif"))
    np.testing.assert_allclose(ds["sinogram"].values[0, :, 9], np.log(10.0), rtol=1e-6)
    np.testing.assert_allclose(ds["angle"].values, np.deg2rad([0, 45, 90, 135]))


def test_attenuation_clips_low_transmission() -> None:
    out = attenuation(np.array([0.0, 50.0, 120.0]), 100.0, 0.0, min_transmission=1e-3)
    np.testing.assert_allclose(out, [-np.log(1e-3), np.log(2.0), -np.log(1.2)], rtol=1e-6)


# --- bad input -----------------------------------------------------------------------------------


def test_truncated_hdf5(demo_files: list[Path], tmp_path: Path) -> None:
    bad = tmp_path / "observation_cut.hdf5"
    bad.write_bytes(demo_files[0].read_bytes()[:3000])
    with pytest.raises(InputError, match=r"observation_cut\.hdf5: unreadable HDF5"):
        ingest([bad], tmp_path / "out.zarr")
    assert not (tmp_path / "out.zarr").exists()


def test_unknown_layouts(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["volume"] = np.zeros((2, 2, 2))
    with pytest.raises(InputError, match=r"other\.h5: unknown layout: root holds \['volume'\]"):
        ingest([tmp_path / "other.h5"], tmp_path / "out.zarr")
    with h5py.File(tmp_path / "scan.nxs", "w") as f:
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        entry["data"] = np.zeros((5, 2, 2))
    with pytest.raises(
        InputError, match=r"scan\.nxs: unknown layout: no 3D frame stack with a matching image_key"
    ):
        read_ct(tmp_path / "scan.nxs")
    (tmp_path / "notes.txt").write_text("no projections here")
    with pytest.raises(InputError, match=r"notes\.txt: unknown format"):
        read_ct(tmp_path / "notes.txt")
    assert not (tmp_path / "out.zarr").exists()


def test_mismatched_geometry_and_options(demo_files: list[Path], tmp_path: Path) -> None:
    other = demo_ct.write_demo(tmp_path / "other", seed=0, volumes=1, slices=2, size=32, angles=20)
    with pytest.raises(InputError, match="angles, detector or ground truth differ"):
        ingest([demo_files[0], other[0]], tmp_path / "out.zarr")
    with pytest.raises(DiffinvError, match=r"unknown option 'flatfield'.*min_transmission"):
        read_ct(demo_files[0], flatfield="x.tif")
    with pytest.raises(InputError, match=r"option angles_file does not apply to lodopab files"):
        read_ct(demo_files[0], angles_file=str(demo_files[0]))
    assert not (tmp_path / "out.zarr").exists()
