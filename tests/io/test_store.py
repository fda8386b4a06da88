import json

import numpy as np
import pytest
import xarray as xr

from diffinv.errors import InputError
from diffinv.io.store import (
    atomic_path,
    create_zarr,
    get_provenance,
    open_zarr,
    provenance,
    set_provenance,
    write_zarr,
)


def _ds():
    ds = xr.Dataset(
        {
            "samples": (
                ("case", "sample", "y", "x"),
                (np.arange(24).reshape(1, 2, 3, 4) * (1 + 1j)).astype(np.complex64),
            )
        },
        coords={"case": ["file.h5:0"], "y": ("y", np.arange(3), {"units": "pixel"})},
    )
    return set_provenance(ds, provenance(config={"a": {"b": 1}}, seed=3, nfe=20))


def test_round_trip_keeps_complex_values_strings_and_provenance(tmp_path):
    ds = _ds()
    write_zarr(ds, tmp_path / "p.zarr")
    back = open_zarr(tmp_path / "p.zarr").load()
    xr.testing.assert_equal(back["samples"], ds["samples"])
    assert back["case"].values.tolist() == ["file.h5:0"]
    prov = get_provenance(back)
    assert prov["config"] == {"a": {"b": 1}} and prov["seed"] == 3 and prov["nfe"] == 20
    assert {"versions", "git_commit", "created"} <= set(prov)
    assert prov["versions"]["torch"]
    json.loads(back.attrs["provenance"])  # stored as a JSON string (netCDF-safe)


def test_failed_write_leaves_nothing_and_keeps_the_old_store(tmp_path):
    target = tmp_path / "p.zarr"
    write_zarr(_ds(), target)
    before = open_zarr(target).load()
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            create_zarr(_ds(), tmp)
            raise RuntimeError("interrupted mid-job")
    xr.testing.assert_identical(open_zarr(target).load(), before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.zarr"], "no temporary store may remain"


def test_interrupted_first_write_creates_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "new.zarr") as tmp:
            create_zarr(_ds(), tmp)
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_opening_a_missing_or_broken_store_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="no such zarr store"):
        open_zarr(tmp_path / "absent.zarr")
    broken = tmp_path / "broken.zarr"
    broken.mkdir()
    (broken / "zarr.json").write_text("{garbage")
    with pytest.raises(InputError, match="broken.zarr: not a readable zarr store"):
        open_zarr(broken)
