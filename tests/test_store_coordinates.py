"""Every dimension of the stores users open (MRI posterior, ADS, ingested CT) has a coordinate
with a ``long_name``, and ``units`` where it is a physical axis (issue 17)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from diffinv.config import validate_config
from diffinv.demo import ct as demo_ct
from diffinv.demo.mri import write_demo
from diffinv.diffusion.denoisers import NetworkDenoiser
from diffinv.diffusion.networks import build_unet
from diffinv.diffusion.schedule import VPSchedule
from diffinv.io import ct as io_ct
from diffinv.io.fastmri import ingest
from diffinv.io.store import open_zarr
from diffinv.stages.ads.acquisition import run_ads
from diffinv.stages.core import Method, Sampling
from diffinv.stages.mri.cases import load_cases
from diffinv.stages.mri.cs import LambdaChoice

#: Dimensions that are physical axes, so need units besides a long_name.
PHYSICAL = {"y", "x", "angle", "detector"}


def _check(ds: xr.Dataset) -> None:
    for name, var in ds.data_vars.items():
        for dim in var.dims:
            assert dim in ds.coords, f"{name}: dimension {dim!r} has no coordinate"
            attrs = ds[dim].attrs
            assert attrs.get("long_name"), f"coordinate {dim!r} (of {name}) has no long_name"
            if dim in PHYSICAL:
                assert attrs.get("units"), f"coordinate {dim!r} (of {name}) has no units"


@pytest.fixture(scope="module")
def mri(tmp_path_factory):
    root = tmp_path_factory.mktemp("mri")
    write_demo(
        root / "demo",
        seed=5,
        size=16,
        coils=2,
        slices_per_volume=2,
        train_volumes=1,
        val_volumes=1,
        test_volumes=0,
    )
    train = ingest([root / "demo" / "train"], root / "train.zarr")
    val = ingest([root / "demo" / "val"], root / "val.zarr")
    torch.manual_seed(0)
    net = build_unet([16, 16], widths=[8, 16], norm_groups=4).eval().requires_grad_(False)
    prior = NetworkDenoiser(net, VPSchedule(), "epsilon", clip=2.5)
    return root, train, val, prior


def test_mri_posterior_store(mri, monkeypatch):
    from diffinv.stages.mri import run

    root, train, val, prior = mri
    cfg = validate_config(
        {
            "mri": {
                "data": {"cases": 1},
                "sampling": {
                    "samples": 2,
                    "batch_size": 2,
                    "steps": 2,
                    "no_prior_iterations": 2,
                    "methods": [{"solver": "ddim", "guidance": "dds"}],
                    "cs": {"lambdas": [0.01], "iterations": 5, "tuning_slices": 1},
                },
            }
        }
    )
    monkeypatch.setattr(run, "load_prior", lambda *a, **k: prior)
    out = root / "posterior.zarr"
    args = argparse.Namespace(data=val, train_data=train, prior="unused", acceleration=4, output=out)
    run.sample(args, cfg, "cpu")
    ds = open_zarr(out)
    assert "cs" in ds
    _check(ds)


def test_ads_store(mri):
    _, train, val, prior = mri
    cases, train_cases = load_cases(val, 0.08)[:1], load_cases(train, 0.08)
    cfg = validate_config(
        {
            "ads": {"enabled": True, "particles": 2},
            "mri": {"sampling": {"steps": 2, "samples": 2, "no_prior_iterations": 2}},
        }
    )
    sampling = Sampling.from_config(cfg["mri"]["sampling"], samples=2, batch_size=2)
    cs = LambdaChoice(0.01, [0.01], [0.0], [0.0], {"iterations": 5, "cg_steps": 2, "rho_factor": 5.0})
    ds = run_ads(
        cases, train_cases, prior, 4, Method("ddim", "dds"), sampling, cfg["ads"], 0.08, 0, "cpu", {}, cs
    )
    _check(ds)


def test_ingested_ct_store(tmp_path: Path):
    files = demo_ct.write_demo(
        tmp_path / "raw", seed=1, volumes=1, slices=4, size=16, angles=8, samples_per_file=2
    )
    assert len(files) == 2, "two files: the projection index runs on across them"
    ds = open_zarr(io_ct.ingest([files[0].parent], tmp_path / "ct.zarr")).load()
    _check(ds)
    np.testing.assert_array_equal(ds["projection"].values, np.arange(ds.sizes["projection"]))
    # LoDoPaB: the 0.26 m image extent gives pixel centres in m, symmetric about the rotation axis
    for dim in ("y", "x"):
        centres = ds[dim].values
        assert ds[dim].attrs["units"] == "m"
        np.testing.assert_allclose(np.diff(centres), 0.26 / 16)
        np.testing.assert_allclose(centres[0], -centres[-1])
    in_memory = io_ct.read_ct([files[0].parent])  # read without writing: the same coordinates
    for dim in ("projection", "y", "x"):
        xr.testing.assert_identical(in_memory[dim], ds[dim])
