"""The 3D MRI stage: operator, masks, volumes of a fastMRI-layout store, z-coupling, refusals."""

from __future__ import annotations

import argparse
import copy

import numpy as np
import pytest
import torch

from diffinv.config import validate_config
from diffinv.errors import ConfigError, DiffinvError, InputError
from diffinv.operators.base import adjointness_error
from diffinv.operators.mri import fft2c
from diffinv.operators.mri3d import MRI3DOperator, calibration_block, fftc, variable_density_mask_2d
from diffinv.stages import verb_config

CONFIG = {
    "mri3d": {
        "enabled": True,
        "sampling": {
            "samples": 2,
            "batch_size": 2,
            "steps": 3,
            "methods": [
                {
                    "name": "zcoupled",
                    "solver": "ddim",
                    "guidance": "admm_tv",
                    "guidance_options": {"lam": 0.05},
                },
                {"name": "slices", "solver": "ddim", "guidance": "dds"},
            ],
        },
        "baselines": {"tv": {"lambdas": [0.01], "iterations": 10}},
    }
}


def _cfg(method: str, **sampling):
    raw = copy.deepcopy(CONFIG)
    raw["mri3d"]["sampling"].update(sampling)
    return verb_config(validate_config(raw), "mri3d", "sample", method)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Single-coil demo volumes (2 of 4 slices of 16 x 16, fully sampled) and one undersampled file."""
    from diffinv.demo.mri import write_demo
    from diffinv.io.fastmri import ingest

    root = tmp_path_factory.mktemp("mri3d")
    write_demo(root / "demo", seed=3, size=16, coils=1, slices_per_volume=4, train_volumes=1, val_volumes=2)
    return ingest([root / "demo" / "val"], root / "eval.zarr"), ingest(
        [root / "demo" / "test"], root / "test.zarr"
    )


@pytest.fixture(scope="module")
def prior():
    """An untrained (fixed) 2-channel slice network."""
    from diffinv.diffusion.denoisers import NetworkDenoiser
    from diffinv.diffusion.networks import build_unet
    from diffinv.diffusion.schedule import VPSchedule

    torch.manual_seed(0)
    net = build_unet([16, 16], widths=[8, 16], norm_groups=4).eval().requires_grad_(False)
    return NetworkDenoiser(net, VPSchedule(), "epsilon", clip=2.0)


def _job(store, prior, method="slices", acceleration=4, **sampling):
    from diffinv.stages.mri3d.run import Reconstruction

    args = argparse.Namespace(data=str(store), acceleration=acceleration, train_data=None, prior=None)
    return Reconstruction(args, _cfg(method, **sampling), "cpu", prior=prior)


@pytest.mark.parametrize("coils", [None, 3])
def test_operator_is_adjoint_on_odd_shapes_and_differentiable(coils):
    g = torch.Generator().manual_seed(0)
    z, h, w = 5, 7, 9
    mask = torch.rand(z, w, generator=g) < 0.5
    sens = None if coils is None else torch.randn(z, coils, h, w, dtype=torch.complex128, generator=g)
    op = MRI3DOperator(mask, sens)
    x = torch.randn(2, z, 2, h, w, dtype=torch.float64, generator=g)
    shape = (2, z, h, w) if coils is None else (2, z, coils, h, w)
    y = torch.randn(shape, dtype=torch.complex128, generator=g)
    assert adjointness_error(op, x, y) < 1e-10
    x.requires_grad_(True)
    (op.A(x).abs() ** 2).sum().backward()  # d‖A x‖²/dx = 2 AᴴA x
    torch.testing.assert_close(x.grad, 2 * op.normal(x.detach()))


def test_the_3d_fft_is_the_2d_fft_of_each_slice_after_a_centred_fft_along_z():
    x = torch.randn(5, 7, 9, dtype=torch.complex128)
    torch.testing.assert_close(fftc(x, (-2, -1)), fft2c(x))
    torch.testing.assert_close(fftc(x, (0, -2, -1)), fftc(fft2c(x), (0,)))


@pytest.mark.parametrize("acceleration", [4, 8])
def test_mask_meets_the_acceleration_with_a_fully_sampled_centre_and_its_seed(acceleration):
    shape = (16, 32)
    mask = variable_density_mask_2d(shape, acceleration, 0.125, seed=7)
    assert int(mask.sum()) == round(16 * 32 / acceleration)
    centre = calibration_block(shape, 0.125)
    assert int(centre.sum()) == 2 * 4 and bool(mask[centre].all())
    assert bool(mask[7:9, 14:18].all()), "the centre block sits at the k-space centre"
    assert torch.equal(mask, variable_density_mask_2d(shape, acceleration, 0.125, seed=7))
    assert not torch.equal(mask, variable_density_mask_2d(shape, acceleration, 0.125, seed=8))
    # variable density: the inner half of the plane is sampled more densely than the outer
    inner = mask[4:12, 8:24].float().mean()
    assert inner > 2 * (mask.float().sum() - mask[4:12, 8:24].float().sum()) / (16 * 32 - 8 * 16)


def test_store_holds_volumes_with_zero_filled_equal_to_the_adjoint_of_the_data(stores, prior, tmp_path):
    from diffinv.io.store import open_zarr
    from diffinv.stages.mri3d.evaluate import evaluate_store

    store, _ = stores
    job = _job(store, prior)
    out = job.write(tmp_path / "posterior.zarr")
    ds = open_zarr(out).load()
    assert ds["samples"].dims == ("volume", "sample", "z", "y", "x") and ds.sizes["volume"] == 2
    assert ds["samples"].dtype == np.complex64 and ds["mask"].dims == ("volume", "kz", "kx")
    assert ds.attrs["stage"] == "mri3d" and ds.attrs["coils"] == "single coil"

    raw = open_zarr(store)
    for i, label in enumerate(ds["volume"].values):
        k2 = raw["kspace"].values[raw["file"].values == label][:, 0]  # (Z, H, W) one coil
        k3 = np.fft.fftshift(np.fft.fft(np.fft.ifftshift(k2, axes=0), axis=0, norm="ortho"), axes=0)
        m = ds["mask"].values[i][:, None, :]
        shifted = np.fft.ifftshift(m * k3, axes=(0, 1, 2))
        want = np.fft.fftshift(np.fft.ifftn(shifted, axes=(0, 1, 2), norm="ortho"), axes=(0, 1, 2))
        np.testing.assert_allclose(ds["zero_filled"].values[i], want, rtol=0, atol=1e-5 * np.abs(want).max())
        assert int(ds["mask"].values[i].sum()) == round(4 * 16 / 4)
        # final data consistency: every sample holds the measured k-space exactly
        k_samples = np.fft.fftshift(
            np.fft.fftn(
                np.fft.ifftshift(ds["samples"].values[i], axes=(1, 2, 3)), axes=(1, 2, 3), norm="ortho"
            ),
            axes=(1, 2, 3),
        )
        np.testing.assert_allclose(m * k_samples, (m * k3)[None].repeat(2, 0), atol=1e-4 * np.abs(k3).max())
    table = evaluate_store(out)
    assert len(table) == 2 * 3 * 3 and np.isfinite(table["psnr"]).all()
    assert set(table["view"]) == {"axial", "coronal", "sagittal"}


def test_z_coupling_beats_slice_by_slice_on_a_volume_constant_along_z(stores):
    """A Gaussian prior per slice (exact denoiser): slices sampled one by one fill the unmeasured k-space
    independently; admm_tv along z (λ > 0) pulls them together, so the coronal view is closer."""
    from diffinv.diffusion.denoisers import GaussianMixtureDenoiser
    from diffinv.diffusion.schedule import VPSchedule
    from diffinv.stages.ct3d.evaluate import view_metrics
    from diffinv.stages.mri3d.volumes import MRIVolume

    store, _ = stores
    d = 2 * 16 * 16
    gauss = GaussianMixtureDenoiser(VPSchedule(), torch.ones(1), torch.zeros(1, d), torch.full((1,), 0.25))
    psnr = {}
    for method in ("zcoupled", "slices"):
        job = _job(store, gauss, method, acceleration=4, samples=2, steps=8)
        base = job.source.volume(job.source.labels[0])
        truth = base.truth[2:3].repeat(4, 1, 1, 1)  # constant along z
        k3 = fftc(torch.complex(truth[:, 0], truth[:, 1]), (0, -2, -1))[:, None]
        volume = MRIVolume("constant", base.slices, k3, None, truth, 1.0)
        ds = job.case(volume)
        ref = np.abs(ds["truth"].values[0]).astype(np.float64)
        psnr[method] = view_metrics(ref, np.abs(ds["mean"].values[0]).astype(np.float64), 1)["psnr"]
    assert psnr["zcoupled"] > psnr["slices"] + 1.0, psnr


def test_refusals_name_the_option(stores, prior, tmp_path):
    from diffinv.io.store import open_zarr, write_zarr
    from diffinv.stages.mri3d.run import Reconstruction
    from diffinv.stages.mri3d.volumes import VolumeSource

    store, undersampled = stores
    with pytest.raises(ConfigError, match=r"mri3d.data.depth: 5"):
        VolumeSource(store, 0.08, {"depth": 5}, 0.08)
    with pytest.raises(ConfigError, match=r"mri3d.data.files: nope"):
        VolumeSource(store, 0.08, {"files": ["nope"]}, 0.08)
    with pytest.raises(InputError, match=r"not fully sampled.*mri3d.data.files"):
        VolumeSource(undersampled, 0.08, {}, 0.08)
    ds = open_zarr(store).load()
    swapped = write_zarr(ds.isel(slice=[1, 0, 2, 3, 4, 5, 6, 7]), tmp_path / "swapped.zarr")
    with pytest.raises(InputError, match=r"not consecutive.*mri3d.data.files"):
        VolumeSource(swapped, 0.08, {}, 0.08)
    split = write_zarr(ds.isel(slice=[0, 1, 4, 5, 2, 3, 6, 7]), tmp_path / "split.zarr")
    with pytest.raises(InputError, match=r"not consecutive in the store"):
        VolumeSource(split, 0.08, {}, 0.08)
    assert len(VolumeSource(store, 0.08, {"depth": 2, "volumes": 1}, 0.08)) == 1

    raw = copy.deepcopy(CONFIG)
    raw["mri3d"]["sampling"]["methods"][1]["name"] = "zcoupled"
    with pytest.raises(ConfigError, match=r"mri3d.sampling.methods\[1\].*zcoupled"):
        validate_config(raw)
    raw = copy.deepcopy(CONFIG)
    raw["mri3d"]["sampling"]["methods"][0]["guidance_options"] = {"lambda": 1.0}
    with pytest.raises(DiffinvError, match=r"mri3d.sampling.methods\[0\]"):
        validate_config(raw)
    many = _cfg("slices")
    many["mri3d"]["baselines"]["tv"]["lambdas"] = [0.01, 0.1]
    args = argparse.Namespace(data=str(store), acceleration=4, train_data=None, prior=None)
    with pytest.raises(ConfigError, match="--train-data"):
        Reconstruction(args, many, "cpu", prior=prior)


def test_the_sample_job_depends_on_its_method_only():
    cfg = verb_config(validate_config(CONFIG), "mri3d", "sample", "zcoupled")
    assert [m["name"] for m in cfg["mri3d"]["sampling"]["methods"]] == ["zcoupled"]
    assert "accelerations" not in cfg["mri3d"]["sampling"] and set(cfg) == {"seed", "mri", "mri3d"}
    assert validate_config({})["mri3d"]["enabled"] is False
