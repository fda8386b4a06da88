"""The 3D CT stage: view subsets, units, the slice prior, per-view metrics, refusals and resumption."""

from __future__ import annotations

import argparse
import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from diffinv.config import validate_config
from diffinv.errors import ConfigError
from diffinv.stages import verb_config
from diffinv.stages.ct3d.evaluate import view_metrics
from diffinv.stages.ct3d.volumes import CTStore, Normalisation, SliceDenoiser, Task, normalised_problem_data

CONFIG = {
    "ct3d": {
        "enabled": True,
        "data": {
            "volume_slices": 3,
            "train_volumes": 1,
            "eval_volumes": 2,
            "train_on": "truth",
            "reference": "truth",
        },
        "prior": {"network": {"widths": [8, 16], "norm_groups": 4}, "clip": 1.5},
        "tasks": [{"name": "sv4", "views": 4}, {"name": "la90", "wedge": 90}],
        "sampling": {
            "samples": 2,
            "batch_size": 2,
            "steps": 2,
            "methods": [
                {"name": "fast", "solver": "ddim", "guidance": "admm_tv", "guidance_options": {"lam": 0.1}}
            ],
        },
        "baselines": {"tv": {"lambdas": [0.1], "iterations": 5}},
    }
}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A tiny LoDoPaB-layout store: 3 volumes of 3 slices, 12 x 12 pixels, 12 noise-free views."""
    from diffinv.demo.ct import write_demo
    from diffinv.io.ct import ingest

    root = tmp_path_factory.mktemp("ct3d")
    write_demo(root / "demo", 0, volumes=3, slices=3, size=12, angles=12, noise=False)
    return ingest([root / "demo"], root / "ct.zarr")


@pytest.fixture(scope="module")
def prior(tmp_path_factory) -> Path:
    """An untrained 1-channel slice prior with the stage's checkpoint fields (values do not matter)."""
    from diffinv.diffusion.networks import build_unet, save_checkpoint, schedule_dict
    from diffinv.diffusion.schedule import VPSchedule

    torch.manual_seed(0)
    network = {"size": [12, 12], "channels": 1, "widths": [8, 16], "norm_groups": 4}
    out = tmp_path_factory.mktemp("prior")
    config = {
        "network": network,
        "prediction": "epsilon",
        "schedule": schedule_dict(VPSchedule()),
        "clip": 1.5,
        "data": {"normalisation": {"offset": 0.25, "scale": 0.25}},
    }
    return save_checkpoint(out, build_unet(**network), config)


def test_tasks_select_even_views_and_the_views_inside_a_wedge():
    angles = (np.arange(12) + 0.5) * math.pi / 12
    assert Task("sv4", views=4).select(angles).tolist() == [0, 3, 6, 9]
    assert Task("la90", wedge=90).select(angles).tolist() == [0, 1, 2, 3, 4, 5]
    assert Task("la", wedge=90, start=45, views=3).select(angles).tolist() == [3, 5, 7]
    with pytest.raises(ConfigError, match="13 views"):
        Task("sv13", views=13).select(angles)


def test_normalised_data_follow_the_linear_model(store):
    """y = A x (noise-free, Joseph on the truth) gives y_n = A x_n exactly for x_n = (x - offset)/scale."""
    ct = CTStore(store, validate_config(CONFIG)["ct3d"]["data"])
    views = Task("sv4", views=4).select(ct.angles)
    op = ct.operator(views)
    x = ct.volume(ct.bounds[1]).truth.double()
    y = op.A(x[None])[0] * ct.pixel_size  # data units (m)
    norm = Normalisation(0.2, 0.3)
    y_n = normalised_problem_data(y.float(), op, ct.pixel_size, norm)
    expected = op.A(norm.to_prior(x)[None]).float()
    torch.testing.assert_close(y_n, expected, rtol=1e-4, atol=1e-4)


def test_slice_denoiser_is_the_2d_prior_on_every_slice_whatever_the_batch():
    class Prior:
        schedule = None
        autocast = None

        def __call__(self, x, t):  # depends on each slice and its own t only
            return (x * 2 + t.reshape(-1, 1, 1, 1)).to(x.dtype)

    x = torch.randn(3, 5, 4, 4)
    t = torch.tensor([0.1, 0.2, 0.3])
    want = (x * 2 + t.reshape(3, 1, 1, 1)).float()
    for batch in (1, 4, 64):
        torch.testing.assert_close(SliceDenoiser(Prior(), batch)(x, t), want)
    assert SliceDenoiser(Prior(), 2, floor=0.0)(x, t).min() >= 0


def test_view_metrics_skip_empty_slices_and_match_a_hand_computation():
    ref = np.zeros((4, 6, 6))
    ref[1:3, 2:4, 2:4] = 1.0
    est = ref + 0.1
    m = view_metrics(ref, est, axis=0)
    assert m["object_slices"] == 2
    assert m["psnr"] == pytest.approx(20.0)  # range 1, error 0.1 everywhere
    assert m["psnr_all_slices"] == pytest.approx(20.0)
    est[0] = 0.0  # perfect on an empty slice: changes the all-slices mean only
    assert view_metrics(ref, est, 0)["psnr"] == pytest.approx(20.0)
    assert view_metrics(ref, est, 0)["psnr_all_slices"] == pytest.approx((300 + 3 * 20) / 4)  # 1e-30 floor


def test_refusals_name_the_option(store):
    data = validate_config(CONFIG)["ct3d"]["data"]
    with pytest.raises(ConfigError, match="volume_slices: 4 does not divide"):
        CTStore(store, {**data, "volume_slices": 4})
    with pytest.raises(ConfigError, match="eval_volumes"):
        CTStore(store, {**data, "train_volumes": 2, "eval_volumes": 2})
    with pytest.raises(ConfigError, match="image_size"):
        CTStore(store, {**data, "image_size": 13})


def _job(store: Path, prior: Path, **entry: object):
    from diffinv.stages.ct3d.run import Reconstruction

    config = copy.deepcopy(CONFIG)
    config["ct3d"]["sampling"]["methods"][0].update(entry)
    cfg = verb_config(validate_config(config), "ct3d", "sample", "fast")
    return Reconstruction(argparse.Namespace(data=str(store), prior=str(prior), task="sv4"), cfg, "cpu")


def test_a_method_entry_overrides_the_sections_steps_samples_grid_and_start(store, prior):
    """Per-method steps, samples, time grid and start reach the sampler; unset ones come from the section."""
    default = _job(store, prior).sampling
    assert (default.steps, default.samples, default.grid, default.t_start) == (2, 2, "logsnr", None)
    own = _job(store, prior, steps=3, samples=4, grid="time_uniform", t_start=0.5).sampling
    assert (own.steps, own.samples, own.grid, own.t_start) == (3, 4, "time_uniform", 0.5)


def test_a_tasks_start_overrides_the_methods_for_that_task_only(store, prior):
    config = copy.deepcopy(CONFIG)
    config["ct3d"]["sampling"]["methods"][0]["t_start"] = 0.7
    config["ct3d"]["tasks"][1]["methods"] = {"fast": {"t_start": 0.5}}
    job = _task_job(store, prior, "la90", config)
    assert job.sampling.t_start == 0.5 and job.method.guidance_options == {"lam": 0.1}
    grid = {"steps": 2, "grid": "logsnr", "t_start": 0.5, "init": "zero"}
    assert json.loads(job.attrs()["sampling_grid"]) == grid
    assert _task_job(store, prior, "sv4", config).sampling.t_start == 0.7
    config["ct3d"]["sampling"]["t_start"] = 0.8
    config["ct3d"]["tasks"][1]["methods"] = {"fast": {"t_start": None}}  # null: the full grid
    assert _task_job(store, prior, "la90", config).sampling.t_start is None


@pytest.mark.parametrize("init", ["tv", "fbp"])
def test_a_tasks_init_starts_the_particles_from_its_own_baseline(store, prior, monkeypatch, init):
    """``init: tv|fbp`` (a task's override here): the sampler gets the task's TV or FBP baseline in
    prior units, the very array the store holds, and no start at all for the other task."""
    from diffinv.stages.ct3d import run

    starts: list = []
    original = run.sample_case

    def spy(*args, x_init=None, **kwargs):
        starts.append(x_init)
        return original(*args, x_init=x_init, **kwargs)

    monkeypatch.setattr(run, "sample_case", spy)
    config = copy.deepcopy(CONFIG)
    config["ct3d"]["tasks"][1]["methods"] = {"fast": {"init": init, "t_start": 0.5}}
    job = _task_job(store, prior, "la90", config)
    volume = job.store.volume(job.store.eval_bounds[0])
    ds = job.case(volume)
    want = job.norm.to_prior(torch.from_numpy(ds[init].values[0]))
    torch.testing.assert_close(starts[-1], want)
    assert json.loads(job.attrs()["sampling_grid"])["init"] == init
    _task_job(store, prior, "sv4", config).case(volume)
    assert starts[-1] is None


def test_a_killed_job_resumes_from_its_last_completed_volume(store, prior, tmp_path, monkeypatch):
    """The first volume's part survives a crash in the second and is reused; the result equals an
    uninterrupted run."""
    import xarray as xr

    from diffinv.io.store import open_zarr
    from diffinv.stages.ct3d.run import Reconstruction

    clean = tmp_path / "clean.zarr"
    _job(store, prior).write(clean)

    calls: list[str] = []
    original = Reconstruction.case

    def crashing(self, volume):
        calls.append(volume.label)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return original(self, volume)

    monkeypatch.setattr(Reconstruction, "case", crashing)
    parts, out = tmp_path / "out.zarr.parts", tmp_path / "out.zarr"
    with pytest.raises(KeyboardInterrupt):
        _job(store, prior).write(out)
    assert not out.exists() and (parts / "block0000.zarr").exists()

    calls.clear()
    _job(store, prior).write(out)
    assert not parts.exists()
    assert calls == [open_zarr(clean)["volume"].values[1]]  # only the second volume ran again
    xr.testing.assert_equal(  # values and coordinates (provenance times differ)
        open_zarr(out)[["samples", "tv", "fbp"]], open_zarr(clean)[["samples", "tv", "fbp"]]
    )


def _task_job(store: Path, prior: Path, task: str, config: dict):
    from diffinv.stages.ct3d import keep_task
    from diffinv.stages.ct3d.run import Reconstruction

    name = config["ct3d"]["sampling"]["methods"][0]["name"]
    cfg = verb_config(validate_config(config), "ct3d", "sample", name)
    keep_task(cfg, task)  # as the sampling rule narrows its params
    return Reconstruction(argparse.Namespace(data=str(store), prior=str(prior), task=task), cfg, "cpu")


def test_a_tasks_guidance_options_override_the_methods_for_that_task_only(store, prior):
    """la90's override {lam: 0, cg_steps: 2} turns fast's admm_tv into DDS with 2 CG steps (ADMMTV
    docstring: λ = 0 is exactly DDS), so its samples equal a dds method's bit for bit; sv4 keeps
    the method's own options."""
    config = copy.deepcopy(CONFIG)
    config["ct3d"]["tasks"][1]["methods"] = {"fast": {"guidance_options": {"lam": 0.0, "cg_steps": 2}}}
    job = _task_job(store, prior, "la90", config)
    assert job.method.guidance_options == {"lam": 0.0, "cg_steps": 2}
    assert json.loads(job.attrs()["guidance_options"]) == {"lam": 0.0, "cg_steps": 2}
    assert _task_job(store, prior, "sv4", config).method.guidance_options == {"lam": 0.1}

    dds = copy.deepcopy(CONFIG)
    dds["ct3d"]["sampling"]["methods"] = [
        {"name": "fast", "solver": "ddim", "guidance": "dds", "guidance_options": {"cg_steps": 2}}
    ]
    volume = job.store.volume(job.store.eval_bounds[0])
    got = job.case(volume)["samples"].values
    want = _task_job(store, prior, "la90", dds).case(volume)["samples"].values
    np.testing.assert_array_equal(got, want)


def test_task_overrides_reach_only_the_jobs_of_their_task_and_method():
    """A sampling job's params hold its own task and only its own method's override."""
    from diffinv.stages.ct3d import keep_task

    config = copy.deepcopy(CONFIG)
    config["ct3d"]["sampling"]["methods"].append({"name": "slicewise", "solver": "ddim", "guidance": "dds"})
    config["ct3d"]["tasks"][1]["methods"] = {
        "fast": {"guidance_options": {"lam": 2.0}},
        "slicewise": {"guidance_options": {"cg_steps": 3}},
    }
    cfg = validate_config(config)
    fast = verb_config(cfg, "ct3d", "sample", "fast")
    keep_task(fast, "la90")
    assert fast["ct3d"]["tasks"] == [
        {"name": "la90", "wedge": 90, "start": 0, "methods": {"fast": {"guidance_options": {"lam": 2.0}}}}
    ]
    sv4 = verb_config(cfg, "ct3d", "sample", "slicewise")
    keep_task(sv4, "sv4")
    assert sv4["ct3d"]["tasks"] == [{"name": "sv4", "views": 4, "start": 0}]


@pytest.mark.parametrize(
    "methods,message",
    [
        ({"slow": {"guidance_options": {"lam": 1.0}}}, r"ct3d\.tasks\[1\]\.methods\.slow: no method 'slow'"),
        ({"fast": {"guidance_options": {"lamda": 1.0}}}, r"\[1\]\.methods\.fast\.guidance_options\.lamda"),
        ({"fast": {"guidance_options": {"lam": "big"}}}, r"guidance_options\.lam: 'big' is not of type"),
        ({"fast": {"solver_options": {"eta": 1.0}}}, r"ct3d\.tasks\.1\.methods\.fast"),
        ({"fast": {"t_start": 1.5}}, r"ct3d\.tasks\.1\.methods\.fast\.t_start"),
        ({"fast": {"init": "tikhonov"}}, r"ct3d\.tasks\.1\.methods\.fast\.init: 'tikhonov' is not one of"),
        ({"fast": {}}, r"ct3d\.tasks\.1\.methods\.fast"),
    ],
)
def test_task_overrides_are_refused_naming_the_key(methods, message):
    config = copy.deepcopy(CONFIG)
    config["ct3d"]["tasks"][1]["methods"] = methods
    with pytest.raises(ConfigError, match=message):
        validate_config(config)
