"""The fwd stage (diffusion with forward models on CT): no ground truth in training, the
observation-space loss, the rendered denoiser under the shared solvers, and the store."""

from __future__ import annotations

import argparse
import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

from diffinv.config import validate_config
from diffinv.diffusion.schedule import VPSchedule
from diffinv.errors import ConfigError
from diffinv.operators.ct import fbp
from diffinv.solvers import PerSampleNoise
from diffinv.stages import verb_config
from diffinv.stages.core import CaseSeeds, Method, Problem, Sampling, sample_case
from diffinv.stages.ct3d.volumes import Normalisation
from diffinv.stages.fwd import evaluate, run
from diffinv.stages.fwd.data import SliceObservations, load_observations, operator_for
from diffinv.stages.fwd.model import (
    FwdModel,
    Geometry,
    RenderedDenoiser,
    ViewPlan,
    draw_views,
    equispaced,
    observation_loss,
)

CONFIG = {
    "fwd": {
        "enabled": True,
        "data": {"volume_slices": 2, "train_volumes": 2, "eval_volumes": 1},
        "network": {"widths": [8, 16], "norm_groups": 4},
        "train": {"steps": 2, "batch_size": 4, "warmup": 1, "context_views": 3, "target_views": 4},
        "sampling": {
            "samples": 2,
            "batch_size": 2,
            "steps": 2,
            "context_views": 3,
            "target_views": 4,
            "guidance_scale": 1.5,
            "method": {"solver": "ddim", "guidance": "none"},
        },
    }
}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A tiny LoDoPaB-layout store: 3 volumes of 2 slices, 12 x 12 pixels, 12 noise-free views."""
    from diffinv.demo.ct import write_demo
    from diffinv.io.ct import ingest

    root = tmp_path_factory.mktemp("fwd")
    write_demo(root / "demo", 0, volumes=3, slices=2, size=12, angles=12, noise=False)
    return ingest([root / "demo"], root / "ct.zarr")


def _config(**fwd_changes: dict) -> dict:
    cfg = copy.deepcopy(CONFIG)
    for key, value in fwd_changes.items():
        cfg["fwd"][key].update(value)
    return validate_config(cfg)


def _args(store: Path, out: Path) -> argparse.Namespace:
    return argparse.Namespace(data=str(store), output=str(out), quiet=True)


def _observations(images: torch.Tensor, n_angles: int = 10) -> SliceObservations:
    """Noise-free sinograms A x of ``images`` (n, ny, nx), pixel units, ``n_angles`` views over 180°."""
    n_det = 17
    det = np.arange(n_det) - (n_det - 1) / 2
    angles = (np.arange(n_angles) + 0.5) * math.pi / n_angles
    shell = SliceObservations(
        np.zeros((1, n_angles, n_det), np.float32), angles, det, (11, 11), ("0:0",), 0.0
    )
    sino = operator_for(shell, np.arange(n_angles)).A(images.double()).float().numpy()
    ids = tuple(f"0:{i}" for i in range(len(images)))
    return SliceObservations(sino, angles, det, (11, 11), ids, 0.0)


def test_training_needs_no_ground_truth(store, tmp_path):
    """A store without truth (and without an image grid, as real scans) trains."""
    from diffinv.io.store import open_zarr, write_zarr

    bare = open_zarr(store).drop_vars(["truth", "y", "x"]).load()
    write_zarr(bare, tmp_path / "bare.zarr")
    with pytest.raises(ConfigError, match="image_size"):
        run.train(_args(tmp_path / "bare.zarr", tmp_path / "m0"), _config(), "cpu")
    run.train(_args(tmp_path / "bare.zarr", tmp_path / "m1"), _config(data={"image_size": 12}), "cpu")
    assert (tmp_path / "m1" / "model.safetensors").exists()


def test_training_never_reads_ground_truth(store, tmp_path, monkeypatch):
    """With truth in the store, the training path opens it only with truth dropped and never
    calls the evaluation loader or the unfiltered store reader."""
    opened: list[set[str]] = []
    real_open = xr.open_zarr

    def spy(*args, **kwargs):
        ds = real_open(*args, **kwargs)
        opened.append(set(ds.variables))
        return ds

    def refuse(*args, **kwargs):
        raise AssertionError("the training path read the truth loader or an unfiltered store")

    monkeypatch.setattr(xr, "open_zarr", spy)
    monkeypatch.setattr("diffinv.io.store.open_zarr", refuse)
    monkeypatch.setattr(evaluate, "load_truth", refuse)
    run.train(_args(store, tmp_path / "m2"), _config(), "cpu")
    assert opened and all("truth" not in names for names in opened)
    assert "truth" in real_open(store, consolidated=False)  # the store does hold truth


def test_observation_loss_equals_its_closed_form():
    """S = x + k𝟙 renders A x/c + k A𝟙/c: the loss is k²/c² (mean_trgt (A𝟙)² + w mean_ctx (A𝟙)²)."""
    torch.manual_seed(0)
    x = torch.rand(2, 11, 11, dtype=torch.float64)
    obs = _observations(x)
    geometry = Geometry(obs, Normalisation(0.0, 1.0), 2.0, "ram-lak")
    o = geometry.to_model(torch.from_numpy(obs.sinograms).double())
    ctx = torch.zeros(2, 10, dtype=torch.bool)
    trgt = torch.zeros(2, 10, dtype=torch.bool)
    ctx[0, [0, 5]], trgt[0, [2, 3, 7]] = True, True
    ctx[1, [1, 4, 8]], trgt[1, [6]] = True, True
    exact = observation_loss(geometry.render(x[:, None]), o, trgt, ctx, 0.7)
    assert float(exact) < 1e-12  # sinograms stored in float32: |A x| / c ≲ 3, rounding ≲ 2e-7 per bin
    k, w = 0.3, 0.7
    loss = observation_loss(geometry.render((x + k)[:, None]), o, trgt, ctx, w)
    ones = geometry.ones.double() ** 2 * (k / 2.0) ** 2  # (k A𝟙 / c)², c = 2
    per_view = ones.mean(-1)
    expected = sum(float(per_view[t].mean() + w * per_view[c].mean()) for t, c in zip(trgt, ctx)) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-5)  # cross term of the float32 rounding


def test_views_are_disjoint_and_within_the_observed_set():
    rng = np.random.default_rng(0)
    observed = torch.zeros(3, 30, dtype=torch.bool)
    observed[0] = True
    observed[1, ::2] = True
    observed[2, [1, 4, 9, 11, 20, 25, 28]] = True
    ctx, trgt = draw_views(observed, ViewPlan(context_views=4, target_views=6), rng)
    assert not bool((ctx & trgt).any())
    assert not bool(((ctx | trgt) & ~observed).any())
    assert ctx[0].sum() == 4 and trgt[0].sum() == 6
    assert ctx[2].sum() + trgt[2].sum() == 7  # only 7 measured: all used, context first
    assert equispaced(90, 8).tolist() == [0, 11, 22, 33, 45, 56, 67, 78]


class _Oracle(nn.Module):
    """A signal network that returns a fixed image, or ``gain`` × the context image."""

    def __init__(self, image: torch.Tensor | None, gain: float = 0.0) -> None:
        super().__init__()
        self.image, self.gain = image, gain

    def forward(self, context: torch.Tensor, target: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.image is None:
            return self.gain * context
        return self.image.to(target).expand(target.shape[0], 1, -1, -1)


def test_rendered_denoiser_with_an_oracle_signal_recovers_the_target_exactly():
    """With S ≡ x, D(o_t, t) = A_trgt x / c at every t, and DDIM (η = 0) from o_T ends at
    α_min x0 + (σ_min/σ_max)(o_T − α_max x0): the closed form of a constant data prediction."""
    torch.manual_seed(1)
    x = torch.rand(1, 11, 11)
    obs = _observations(x)
    geometry = Geometry(obs, Normalisation(0.0, 1.0), 3.0, "ram-lak")
    schedule = VPSchedule()
    model = FwdModel(_Oracle(x[None]), geometry, schedule, ViewPlan())  # type: ignore[arg-type]
    target = np.array([1, 4, 6, 9])
    D = RenderedDenoiser(model, torch.zeros(1, 1, 11, 11), target, 1.0)
    x0 = geometry.render(x[None])[:, target]
    assert torch.allclose(D(torch.randn(3, 4, 17), torch.full((3,), 0.5)), x0.expand(3, -1, -1))
    shape = (4, 17)
    problem = Problem(run.TargetSpace(), torch.zeros(1, *shape), shape)
    sampling = Sampling(2, 2, 5, final_dc=False)
    seeds = CaseSeeds.of(0, "0:0")
    res = sample_case(problem, D, Method("ddim", "none"), sampling, seeds, "cpu")
    grid = schedule.grid(5, "logsnr")
    start = PerSampleNoise(seeds.samples(0, 2)).randn(shape) * float(schedule.sigma(grid[0]))
    a_min, s_min = float(schedule.alpha(grid[-1])), float(schedule.sigma(grid[-1]))
    a_max, s_max = float(schedule.alpha(grid[0])), float(schedule.sigma(grid[0]))
    expected = a_min * x0 + s_min / s_max * (start - a_max * x0)
    torch.testing.assert_close(res.samples, expected, rtol=1e-5, atol=1e-5)
    assert res.nfe == 5


def test_guidance_scale_extrapolates_the_context_signal():
    """S = S_u + w (S_c − S_u); with S = ctx (S_u = 0 for a zeroed context), S = w · ctx."""
    x = torch.rand(1, 11, 11)
    obs = _observations(x)
    geometry = Geometry(obs, Normalisation(0.0, 1.0), 1.0, "ram-lak")
    model = FwdModel(_Oracle(None, 1.0), geometry, VPSchedule(), ViewPlan())  # type: ignore[arg-type]
    ctx = torch.rand(1, 1, 11, 11)
    S = RenderedDenoiser(model, ctx, np.array([0, 5]), 2.5).signal(
        torch.zeros(2, 2, 17), torch.full((2,), 0.3)
    )
    torch.testing.assert_close(S, 2.5 * ctx.expand(2, -1, -1, -1))


def test_fbp_of_the_geometry_matches_the_operator_fbp_on_a_view_subset():
    """Masked FBP through per-view weights equals the FBP of the subset's own operator."""
    x = torch.rand(1, 11, 11, dtype=torch.float64)
    obs = _observations(x, 12)
    geometry = Geometry(obs, Normalisation(0.0, 1.0), 1.0, "shepp-logan")
    views = np.array([0, 3, 4, 10])
    mask = torch.zeros(1, 12, dtype=torch.bool)
    mask[0, views] = True
    sino = torch.from_numpy(obs.sinograms).double()
    got = geometry.image(sino, geometry.view_weights(mask))[:, 0]
    want = fbp(sino[:, views], operator_for(obs, views), "shepp-logan", "adjoint")
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_train_then_sample_writes_the_documented_store(store, tmp_path):
    cfg = _config()
    run.train(_args(store, tmp_path / "model"), verb_config(cfg, "fwd", "train"), "cpu")
    out = tmp_path / "posterior.zarr"
    args = argparse.Namespace(data=str(store), model=str(tmp_path / "model"), output=str(out))
    run.sample(args, verb_config(cfg, "fwd", "sample"), "cpu")
    ds = xr.open_zarr(out, consolidated=False).load()
    assert ds.attrs["stage"] == "fwd" and ds.attrs["guidance_scale"] == 1.5
    assert ds["samples"].dims == ("volume", "sample", "z", "y", "x")
    assert ds["samples"].shape == (1, 2, 2, 12, 12)
    assert ds["z"].values.tolist() == [4, 5]
    np.testing.assert_allclose(ds["mean"].values, ds["samples"].values.mean(1), rtol=1e-6)
    assert float(ds["samples"].min()) >= 0.0  # nonnegative attenuation
    truth = xr.open_zarr(store, consolidated=False)["truth"].values[4:6]
    np.testing.assert_array_equal(ds["reference"].values[0], truth)
    obs = load_observations(store, [2], 2)
    context = equispaced(12, 3)
    want = fbp(torch.from_numpy(obs.sinograms[:, context]), operator_for(obs, context), "shepp-logan").numpy()
    np.testing.assert_allclose(ds["fbp"].values[0], want, rtol=1e-5, atol=1e-6)
    assert ds.attrs["context_views"] == context.tolist()
    assert not set(ds.attrs["target_views"]) & set(context.tolist())
    assert "provenance" in ds.attrs and ds["nfe"].values[0] == 3  # 2 steps + the final signal


def test_a_guided_method_is_refused(store, tmp_path):
    bad = copy.deepcopy(CONFIG)
    bad["fwd"]["sampling"]["method"] = {"solver": "ddim", "guidance": "dds"}
    with pytest.raises(ConfigError):
        validate_config(bad)
    model = FwdModel(_Oracle(torch.zeros(1, 1, 12, 12)), None, VPSchedule(), ViewPlan())  # type: ignore[arg-type]
    obs = load_observations(store, [2], 2)
    with pytest.raises(ConfigError, match="guidance 'dds'"):
        run.reconstruct(
            model,
            obs,
            0,
            np.arange(3),
            np.arange(3, 6),
            Method("ddim", "dds"),
            Sampling(2, 2, 1),
            1.0,
            0,
            "cpu",
        )
