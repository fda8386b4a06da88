"""Which slices the MRI stage evaluates and calibrates on (``mri.data.cases``,
``mri.calibration.cases``): selections, and refusals naming the key."""

from pathlib import Path

import pytest

from diffinv.config import validate_config
from diffinv.demo.mri import write_demo
from diffinv.errors import ConfigError
from diffinv.io.fastmri import ingest
from diffinv.io.store import open_zarr
from diffinv.stages.mri.cases import slice_indices
from diffinv.stages.mri.run import calibration_cases, evaluation_cases

STORE = Path("val.zarr")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, list(range(7))),
        (3, [0, 1, 2]),
        (20, list(range(7))),
        ([2, 5], [2, 3, 4]),
        ([0, 7, 2], [0, 2, 4, 6]),
        ([1, 7, 2], [1, 3, 5]),
        ([6, 7, 3], [6]),
    ],
)
def test_slice_indices_follow_python_ranges(spec, expected):
    assert list(slice_indices(spec, 7, "mri.data.cases", STORE)) == expected


@pytest.mark.parametrize("spec", [[3, 3], [5, 2], [0, 8], [0, 7, 0], [0, 4, 1, 1], [7]])
def test_slice_indices_refuse_empty_or_outside_ranges(spec):
    with pytest.raises(ConfigError, match=r"mri\.calibration\.cases: .*7 slices of val\.zarr \(fix: e\.g\."):
        slice_indices(spec, 7, "mri.calibration.cases", STORE)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cases")
    write_demo(
        root / "demo", size=16, coils=1, slices_per_volume=3, train_volumes=1, val_volumes=2, test_volumes=0
    )
    return ingest([root / "demo" / "val"], root / "val.zarr")


def _mri(cases, calibration):
    return validate_config({"mri": {"data": {"cases": cases}, "calibration": {"cases": calibration}}})["mri"]


def test_alternating_slices_split_the_store_in_store_order(store):
    mri = _mri([0, 6, 2], [1, 6, 2])
    evaluated = [c.label for c in evaluation_cases(store, mri)]
    calibrated = [c.label for c in calibration_cases(store, mri, mri["calibration"]["cases"])]
    ds = open_zarr(store)
    every = [f"{f}:{int(i)}" for f, i in zip(ds["file"].values, ds["slice_in_file"].values)]
    assert evaluated == every[0::2] and calibrated == every[1::2]
    # both sets draw from both volumes (files)
    volumes = {e.split(":")[0] for e in evaluated}
    assert len(set(every)) == 6 and len(volumes) == 2 and volumes == {c.split(":")[0] for c in calibrated}


@pytest.mark.parametrize(("cases", "calibration"), [(4, [3, 6]), ([0, 6, 2], [2, 6, 2]), (None, [5, 6])])
def test_calibration_slices_sharing_an_evaluated_slice_are_refused(store, cases, calibration):
    mri = _mri(cases, calibration)
    refusal = r"mri\.calibration\.cases: .* with the evaluation slices mri\.data\.cases"
    with pytest.raises(ConfigError, match=refusal):
        calibration_cases(store, mri, calibration)
