"""CT reader on TIFF image stacks: one file per projection (or per sinogram), flats, darks, angle files.

The stacks are built here from the projections of a small phantom (rows != angles != columns,
so a swap of any two axes changes the shape), written as uint16 counts; the expected store is
computed from the very integers in the files: -ln((I - mean darks) / (mean flats - mean darks)).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import xarray as xr
from scipy import ndimage

from diffinv.cli import main
from diffinv.errors import ConfigError, InputError
from diffinv.io.ct import ingest, read_ct
from diffinv.io.store import get_provenance

ROWS, N_ANGLES, COLS = 5, 17, 24
#: a golden-angle order: not monotonic, so the store must keep the file's order
ANGLES_DEG = (np.arange(N_ANGLES) * 111.25) % 180.0
DIAD = "ct/httomo_k11_diad/k11-18014.nxs"


def _projections(angles_deg: np.ndarray, rows: int = ROWS, cols: int = COLS) -> np.ndarray:
    """Line integrals (angle, row, column) of a phantom volume (row, y, x), by rotating and summing over y."""
    y, x = np.mgrid[-1 : 1 : cols * 1j, -1 : 1 : cols * 1j]
    volume = np.stack(
        [(x**2 + y**2 < 0.7) * 0.5 + ((x - 0.2 * r / rows) ** 2 + (y + 0.2) ** 2 < 0.05) for r in range(rows)]
    )
    return np.stack(
        [ndimage.rotate(volume, a, axes=(1, 2), reshape=False, order=1).sum(axis=1) * 0.1 for a in angles_deg]
    )


@pytest.fixture(scope="module")
def counts() -> dict[str, np.ndarray]:
    """Raw uint16 counts: projections (angle, row, column), two flats and three darks (row, column)."""
    rng = np.random.default_rng(4)
    flat = rng.uniform(2000, 2400, (ROWS, COLS))
    dark = rng.uniform(90, 110, (ROWS, COLS))
    intensity = (flat - dark) * np.exp(-_projections(ANGLES_DEG)) + dark

    def measured(mean: np.ndarray, frames: int) -> np.ndarray:
        return np.round(mean + rng.normal(0, 3, (frames, *mean.shape))).astype(np.uint16)

    return {
        "projections": measured(intensity, 1)[0],
        "flats": measured(flat, 2),
        "darks": measured(dark, 3),
    }


def _expected(projections: np.ndarray, flats: np.ndarray, darks: np.ndarray) -> np.ndarray:
    """-ln((I - D) / (F - D)) from the file values, as (row, angle, column)."""
    dark = darks.astype(float).mean(axis=0)
    line = -np.log((projections.astype(float) - dark) / (flats.astype(float).mean(axis=0) - dark))
    return line.transpose(1, 0, 2)


def _write_images(folder: Path, images: np.ndarray, name: Callable[[int], str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / name(k) for k in range(len(images))]
    for path, image in zip(paths, images):
        tifffile.imwrite(path, image)
    return paths


def _scan(
    tmp: Path, counts: dict[str, np.ndarray], name: Callable[[int], str] = "proj_{}.tif".format
) -> Path:
    """A scan folder: one TIFF per projection, flats and darks in a folder beside it, angles.txt."""
    _write_images(tmp / "scan", counts["projections"], name)
    _write_images(tmp / "fields", counts["flats"], "flat_{}.tif".format)
    _write_images(tmp / "fields", counts["darks"], "dark_{}.tif".format)
    np.savetxt(tmp / "angles.txt", ANGLES_DEG, fmt="%.6f")
    return tmp / "scan"


def _fields(tmp: Path) -> dict[str, object]:
    return {
        "flat": [str(tmp / "fields/flat_0.tif"), str(tmp / "fields/flat_1.tif")],
        "dark": f"{tmp}/fields/dark_*.tif",
    }


# --- projections, one file each -------------------------------------------------------------------

NAMINGS = {
    "unpadded": "proj_{}.tif".format,  # lexical order: proj_1, proj_10, proj_11, ..., proj_2
    "dash-tiff": lambda k: f"scan-{k + 3}.tiff",
    "last-number": lambda k: f"img_0_{k}.tif",
    "padded-offset": lambda k: f"{k + 42:05d}.tif",
}


@pytest.mark.parametrize("naming", NAMINGS)
def test_projection_files_become_rows_angles_columns(
    naming: str, counts: dict[str, np.ndarray], tmp_path: Path
) -> None:
    folder = _scan(tmp_path, counts, NAMINGS[naming])
    out = ingest(
        [folder], tmp_path / "ct.zarr", angles_file=str(tmp_path / "angles.txt"), **_fields(tmp_path)
    )
    ds = xr.open_zarr(out, consolidated=False).load()
    assert ds.attrs["source_layout"] == "projections"
    assert dict(ds.sizes) == {"projection": ROWS, "angle": N_ANGLES, "detector": COLS}
    assert ds["sinogram"].dims == ("projection", "angle", "detector")
    assert ds["angle"].attrs["units"] == "rad"
    np.testing.assert_allclose(ds["angle"].values, np.deg2rad(ANGLES_DEG), rtol=1e-6)  # file order
    np.testing.assert_allclose(
        ds["sinogram"].values,
        _expected(counts["projections"], counts["flats"], counts["darks"]),
        rtol=1e-5,
        atol=1e-6,
    )
    phantom = _projections(ANGLES_DEG).transpose(1, 0, 2)  # the line integrals behind the counts
    assert phantom.max() > 1 and np.abs(ds["sinogram"].values - phantom).mean() < 0.01
    assert ds.attrs["n_clipped"] == 0 and ds.attrs["clipped_fraction"] == 0.0
    files = get_provenance(ds)["source_files"]
    assert files == [str(folder / NAMINGS[naming](k)) for k in range(N_ANGLES)]  # numeric order


def test_files_listed_and_fields_by_pattern(counts: dict[str, np.ndarray], tmp_path: Path) -> None:
    """Images passed as files (any order); flats and darks beside them, picked by name patterns."""
    images = _write_images(tmp_path, counts["projections"], "proj_{}.tif".format)
    _write_images(tmp_path, counts["flats"], "flat_{}.tif".format)
    _write_images(tmp_path, counts["darks"], "dark_{}.tif".format)
    np.savetxt(tmp_path / "angles.txt", ANGLES_DEG)
    inputs = [tmp_path]
    ds = read_ct(
        inputs, flat_pattern="flat_*", dark_pattern="dark_*", angles_file=str(tmp_path / "angles.txt")
    )
    expected = _expected(counts["projections"], counts["flats"], counts["darks"])
    np.testing.assert_allclose(ds["sinogram"].values, expected, rtol=1e-5, atol=1e-6)
    shuffled = [images[k] for k in np.random.default_rng(0).permutation(N_ANGLES)]
    ds = read_ct(
        shuffled,
        layout="projections",
        flat=str(tmp_path / "flat_*.tif"),
        dark=str(tmp_path / "dark_*.tif"),
        angles_file=str(tmp_path / "angles.txt"),
        rows_per_chunk=2,
    )
    np.testing.assert_allclose(ds["sinogram"].values, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(
        InputError, match=r"flat_0\.tif: index 0 is also that of (proj|dark)_0\.tif.*flat_pattern="
    ):
        read_ct(inputs, layout="projections")
    with pytest.raises(ConfigError, match="options flat and flat_pattern both given"):
        read_ct(inputs, flat=str(tmp_path / "flat_0.tif"), flat_pattern="flat_*")


# --- angle files ----------------------------------------------------------------------------------


def _csv_image_key(path: Path) -> dict[str, object]:
    """NeXus-like frame list: 2 darks, 2 flats, the projections, 1 flat; columns found by name."""
    keys = [2, 2, 1, 1] + [0] * N_ANGLES + [1]
    angles = [0.0] * 4 + list(ANGLES_DEG) + [0.0]
    lines = ["frame,image_key,rotation_angle"] + [
        f"{i},{k},{a:.6f}" for i, (k, a) in enumerate(zip(keys, angles))
    ]
    path.write_text("\n".join(lines) + "\n")
    return {}


def _radians_rows(path: Path) -> dict[str, object]:
    """Blank-separated, no header, radians; three marker rows (nan) for darks and flats first."""
    rows = ["0 nan", "1 nan", "2 nan"] + [f"{k + 3} {np.deg2rad(a):.9f}" for k, a in enumerate(ANGLES_DEG)]
    path.write_text("# frame angle(rad)\n" + "\n".join(rows) + "\n")
    return {"angles_column": 1, "angle_units": "rad", "angles_rows": {"start": 3}}


def _semicolon_list(path: Path) -> dict[str, object]:
    """Semicolon CSV with a header; the projection rows listed."""
    rows = [f"{a:.6f};proj" for a in ANGLES_DEG] + ["0;flat", "0;dark"]
    path.write_text("Theta;kind\n" + "\n".join(rows) + "\n")
    return {"angles_rows": list(range(N_ANGLES))}


ANGLE_FILES = {
    "csv-image-key": _csv_image_key,
    "radians-rows": _radians_rows,
    "semicolon-list": _semicolon_list,
}


@pytest.mark.parametrize("kind", ANGLE_FILES)
def test_angle_file_formats(kind: str, counts: dict[str, np.ndarray], tmp_path: Path) -> None:
    folder = _scan(tmp_path, counts)
    options = ANGLE_FILES[kind](tmp_path / "angles.csv")
    ds = read_ct(folder, angles_file=str(tmp_path / "angles.csv"), **_fields(tmp_path), **options)
    assert dict(ds.sizes) == {"projection": ROWS, "angle": N_ANGLES, "detector": COLS}
    np.testing.assert_allclose(ds["angle"].values, np.deg2rad(ANGLES_DEG), rtol=1e-6)


@pytest.mark.parametrize(
    "text,options,match",
    [
        ("1 2\n3 4\n", {}, r"angles\.csv: 2 columns \(no header\).*angles_column="),
        ("0\n10\ndark\n30\n", {}, r"angles\.csv:3: 'dark' is not an angle.*angles_rows="),
        ("image_key,angle\n0,0\n0,10\n", {"angles_rows": [0]}, r"image_key column, and angles_rows.*"),
        ("angle\n0\n10\n", {"angles_column": "theta"}, r"no column named 'theta'.*angles_column="),
    ],
)
def test_bad_angle_files_refused(
    text: str, options: dict, match: str, counts: dict[str, np.ndarray], tmp_path: Path
) -> None:
    folder = _scan(tmp_path, counts)
    (tmp_path / "angles.csv").write_text(text)
    with pytest.raises(InputError, match=match):
        read_ct(folder, angles_file=str(tmp_path / "angles.csv"), **_fields(tmp_path), **options)


# --- refusals -------------------------------------------------------------------------------------


def test_layout_that_cannot_be_told_apart_is_refused(counts: dict[str, np.ndarray], tmp_path: Path) -> None:
    folder = _scan(tmp_path, counts)
    with pytest.raises(
        InputError, match=r"cannot be told apart \(fix: set layout=projections .*layout=sinograms"
    ):
        ingest([folder], tmp_path / "out.zarr", **_fields(tmp_path))
    # as many images as rows as angles: both readings fit the angle file
    square = _write_images(tmp_path / "square", counts["projections"][:ROWS], "p{}.tif".format)
    np.savetxt(tmp_path / "five.txt", ANGLES_DEG[:ROWS])
    with pytest.raises(InputError, match=r"5 angles fit one per image and one per row \(fix: set layout="):
        read_ct(square, angles_file=str(tmp_path / "five.txt"), **_fields(tmp_path))
    ds = read_ct(square, angles_file=str(tmp_path / "five.txt"), layout="projections", **_fields(tmp_path))
    assert dict(ds.sizes) == {"projection": ROWS, "angle": ROWS, "detector": COLS}
    assert not (tmp_path / "out.zarr").exists()


def test_angle_count_mismatch_names_both_counts(counts: dict[str, np.ndarray], tmp_path: Path) -> None:
    folder = _scan(tmp_path, counts)
    np.savetxt(tmp_path / "more.txt", np.append(ANGLES_DEG, 180.0))
    more = {"angles_file": str(tmp_path / "more.txt"), **_fields(tmp_path)}
    with pytest.raises(
        InputError, match=r"more\.txt: 18 angles for 17 images \(one per angle\).*angles_rows="
    ):
        ingest([folder], tmp_path / "out.zarr", layout="projections", **more)
    with pytest.raises(
        InputError,
        match=r"the 18 angles of angles_file fit neither one per image \(17\) nor one per image row \(5\)",
    ):
        ingest([folder], tmp_path / "out.zarr", **more)
    assert not (tmp_path / "out.zarr").exists()


def test_duplicate_and_missing_indices_refused(counts: dict[str, np.ndarray], tmp_path: Path) -> None:
    folder = _scan(tmp_path, counts)
    tifffile.imwrite(folder / "proj_01.tif", counts["projections"][1])
    with pytest.raises(InputError, match=r"proj_1\.tif: index 1 is also that of proj_01\.tif.*flat_pattern="):
        read_ct(folder, layout="projections", **_fields(tmp_path))
    (folder / "proj_01.tif").unlink()
    tifffile.imwrite(folder / "flat.tif", counts["flats"][0])
    with pytest.raises(InputError, match=r"flat\.tif: no number in the name.*flat=/dark=.*flat_pattern="):
        read_ct(folder, layout="projections")


def test_clipped_values_counted_and_bounded(counts: dict[str, np.ndarray], tmp_path: Path) -> None:
    projections = counts["projections"].copy()
    projections[3, 1, 4:11] = 0  # seven dead pixels: below the dark
    folder = tmp_path / "scan"
    _write_images(folder, projections, "proj_{}.tif".format)
    _scan(tmp_path / "f", counts)  # flats, darks, angles
    options = {"angles_file": str(tmp_path / "f/angles.txt"), **_fields(tmp_path / "f")}
    ds = xr.open_zarr(ingest([folder], tmp_path / "ct.zarr", **options), consolidated=False)
    assert ds.attrs["n_clipped"] == 7
    assert ds.attrs["clipped_fraction"] == pytest.approx(7 / projections.size)
    assert float(ds["sinogram"][1, 3, 5]) == pytest.approx(-np.log(1e-4))
    with pytest.raises(InputError, match=r"scan: 7 of 2040 values \(0\.3%\) clipped.*max_clipped_fraction"):
        ingest([folder], tmp_path / "strict.zarr", max_clipped_fraction=0.001, **options)
    swapped = {**options, "flat": options["dark"], "dark": options["flat"]}
    with pytest.raises(InputError, match=r"2040 of 2040 values \(100\.0%\) clipped.*swapped"):
        ingest([folder], tmp_path / "swapped.zarr", **swapped)
    assert not (tmp_path / "strict.zarr").exists() and not (tmp_path / "swapped.zarr").exists()


# --- the issue: projection files were read as sinograms --------------------------------------------


def test_beamline_folder_is_not_read_as_sinograms(
    counts: dict[str, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """As reported: proj_0000.tif ..., dark.tif, flat.tif, angles.txt in one folder, through the CLI.

    The old reader wrote a store of 19 'sinograms' (the 17 projections, the dark and the flat)
    with the detector rows as angles over 0-180 degrees; now each step refuses in one line
    until the layout is known, and the store has the scan's geometry.
    """
    folder = tmp_path / "scan"
    _write_images(folder, counts["projections"], "proj_{:04d}.tif".format)
    tifffile.imwrite(folder / "flat.tif", counts["flats"][0])
    tifffile.imwrite(folder / "dark.tif", counts["darks"][0])
    np.savetxt(folder / "angles.txt", ANGLES_DEG)
    out = str(tmp_path / "ct.zarr")

    def run(*sets: str) -> tuple[int, str]:
        code = main(["ingest", "ct", str(folder), "-o", out, *[f"--set={s}" for s in sets]])
        return code, capsys.readouterr().err

    code, err = run()
    assert code == 2 and "no number in the name" in err and "flat_pattern=" in err, err
    fields = ("flat_pattern=flat.tif", "dark_pattern=dark.tif")
    code, err = run(*fields)
    assert code == 2 and "layout=projections" in err and "angles_file=" in err, err
    assert len(err.strip().splitlines()) == 1 and not Path(out).exists()
    code, err = run(*fields, f"angles_file={folder / 'angles.txt'}")
    assert code == 0, err
    ds = xr.open_zarr(out, consolidated=False).load()
    assert dict(ds.sizes) == {"projection": ROWS, "angle": N_ANGLES, "detector": COLS}
    np.testing.assert_allclose(ds["angle"].values, np.deg2rad(ANGLES_DEG), rtol=1e-6)
    np.testing.assert_allclose(
        ds["sinogram"].values,
        _expected(counts["projections"], counts["flats"][:1], counts["darks"][:1]),
        rtol=1e-5,
        atol=1e-6,
    )


# --- other stack layouts --------------------------------------------------------------------------


def test_sinogram_files_and_multipage_stacks(counts: dict[str, np.ndarray], tmp_path: Path) -> None:
    """The same scan as one sinogram file per detector row, and as a multi-page TIFF of projections."""
    _scan(tmp_path, counts)
    expected = _expected(counts["projections"], counts["flats"], counts["darks"])
    angles = {"angles_file": str(tmp_path / "angles.txt"), **_fields(tmp_path)}
    sinograms = _write_images(tmp_path / "sino", counts["projections"].transpose(1, 0, 2), "row{}.tif".format)
    ds = read_ct(tmp_path / "sino", **angles)  # 17 angles = the images' height: sinograms
    assert ds.attrs["source_layout"] == "sinograms"
    np.testing.assert_allclose(ds["sinogram"].values, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="cannot be told apart"):
        read_ct(sinograms, **_fields(tmp_path))
    tifffile.imwrite(tmp_path / "stack.tif", counts["projections"], metadata=None)
    ds = read_ct(tmp_path / "stack.tif", **angles)  # pages = angles
    assert ds.attrs["source_layout"] == "projections"
    np.testing.assert_allclose(ds["sinogram"].values, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match=r"stack\.tif: 17 images of 5 x 24 pixels.*layout=projections"):
        read_ct(tmp_path / "stack.tif", **_fields(tmp_path))
    compressed = tmp_path / "zlib.tif"
    tifffile.imwrite(compressed, counts["projections"], compression="zlib", rowsperstrip=2, metadata=None)
    ds = read_ct(
        compressed, layout="projections", rows_per_chunk=3, angle_range=[0, 180], **_fields(tmp_path)
    )
    np.testing.assert_allclose(ds["sinogram"].values, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ds["angle"].values, np.linspace(0, np.pi, N_ANGLES, endpoint=False))


# --- real measured frames -------------------------------------------------------------------------


def test_real_diad_frames_as_tiff_stack(real_data: Path, tmp_path: Path) -> None:
    """The DIAD scan's measured frames written one TIFF per projection (every 10th), darks as
    files beside them, flats as one multi-page TIFF, angles in a CSV of all frames with image_key:
    the store equals that of the NeXus file on the same projections."""
    nexus = read_ct(real_data / DIAD)
    with h5py.File(real_data / DIAD) as f:
        key = f[nexus.attrs["nexus_image_key"]][()]
        angle = f[nexus.attrs["nexus_angles"]]
        theta, units = angle[()], angle.attrs.get("units", "deg")
        data = f[nexus.attrs["nexus_data"]]
        proj = np.flatnonzero(key == 0)[::10]
        frames = {i: data[i] for i in proj}
        flats, darks = data[np.flatnonzero(key == 1)], data[np.flatnonzero(key == 2)]
    folder = tmp_path / "k11-18014"
    folder.mkdir()
    for i, frame in frames.items():
        tifffile.imwrite(folder / f"k11-18014_{i}.tif", frame)
    for j, frame in enumerate(darks):
        tifffile.imwrite(folder / f"dark_{j:03d}.tif", frame)
    tifffile.imwrite(tmp_path / "flats.tif", flats, metadata=None)
    rows = [i for i in range(len(key)) if key[i] != 0 or i in frames]
    lines = ["image_key,frame,gts_theta"] + [f"{key[i]},{i},{float(theta[i])!r}" for i in rows]
    (tmp_path / "frames.csv").write_text("\n".join(lines) + "\n")
    ds = read_ct(
        folder,
        flat=str(tmp_path / "flats.tif"),
        dark_pattern="dark_*",
        angles_file=str(tmp_path / "frames.csv"),
        angle_units=units.decode() if isinstance(units, bytes) else str(units),
    )
    assert ds.attrs["source_layout"] == "projections"
    assert dict(ds.sizes) == {"projection": 22, "angle": len(proj), "detector": 26}
    np.testing.assert_allclose(ds["angle"].values, nexus["angle"].values[::10], rtol=1e-12)
    np.testing.assert_allclose(ds["sinogram"].values, nexus["sinogram"].values[:, ::10], rtol=1e-5, atol=1e-6)
    assert ds.attrs["n_clipped"] == 0
