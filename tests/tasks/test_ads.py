"""ADS pieces: the entropy estimate, the acquisition schedule, budgets and the store."""

import math

import numpy as np
import pytest
import torch

from diffinv.complex import channels_to_complex
from diffinv.config import validate_config
from diffinv.demo.mri import write_demo
from diffinv.diffusion.denoisers import NetworkDenoiser
from diffinv.diffusion.networks import build_unet
from diffinv.diffusion.schedule import VPSchedule
from diffinv.io.fastmri import ingest
from diffinv.operators.mri import fft2c
from diffinv.stages.ads.acquisition import acquisition_steps, ads_metrics, greedy_mask, line_entropy, run_ads
from diffinv.stages.core import Method, Sampling
from diffinv.stages.mri.cases import load_cases
from diffinv.stages.mri.cs import LambdaChoice
from diffinv.stages.mri.run import reconstruct_case


def test_entropy_ranks_lines_by_particle_spread():
    """Lines where particles agree have lower entropy than lines where they spread; for a
    Gaussian cloud the estimate grows like d·log(spread)."""
    g = torch.Generator().manual_seed(0)
    n, w = 64, 5
    base = torch.randn(1, 1, 3, w, dtype=torch.complex64, generator=g)
    spread = torch.tensor([0.0, 0.1, 1.0, 3.0, 10.0])
    k = base + spread * torch.randn(n, 1, 3, w, dtype=torch.complex64, generator=g)
    h = line_entropy(k, bandwidth=1.0)
    assert torch.all(h[1:] > h[:-1]), h
    assert float(h[0]) == pytest.approx(0.0, abs=1e-6), "identical particles: entropy log N − log N = 0"
    assert float(h[-1]) == pytest.approx(math.log(n), abs=0.05), "well-separated particles saturate at log N"


@pytest.mark.parametrize(
    "steps,acq,window", [(20, 5, (0.05, 0.6)), (10, 12, (0.0, 0.5)), (20, 0, (0.1, 0.9)), (4, 3, (0.9, 1.0))]
)
def test_acquisitions_are_spread_over_the_window(steps, acq, window):
    counts = acquisition_steps(steps, acq, window)
    assert sum(counts) == acq and len(counts) == steps
    used = [i for i, c in enumerate(counts) if c]
    if acq:
        assert used[0] >= min(steps - 1, int(window[0] * steps))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ads")
    write_demo(
        root / "demo",
        seed=3,
        size=16,
        coils=2,
        slices_per_volume=2,
        train_volumes=2,
        val_volumes=1,
        test_volumes=0,
    )
    return load_cases(ingest([root / "demo" / "val"], root / "val.zarr"), 0.08), load_cases(
        ingest([root / "demo" / "train"], root / "train.zarr"), 0.08
    )


def test_greedy_mask_meets_the_budget_and_keeps_the_centre(data):
    _, train = data
    mask = greedy_mask(train, budget=5, num_low=1)
    assert int(mask.sum()) == 5 and bool(mask[8])


def test_ads_store_holds_every_strategy_at_one_budget(data):
    cases, train = data
    torch.manual_seed(0)
    prior = NetworkDenoiser(
        build_unet([16, 16], widths=[8, 16], norm_groups=4).eval().requires_grad_(False),
        VPSchedule(),
        "epsilon",
        clip=2.5,
    )
    cfg = validate_config(
        {
            "ads": {"enabled": True, "particles": 4},
            "mri": {"sampling": {"steps": 4, "samples": 4, "no_prior_iterations": 5}},
        }
    )
    sampling = Sampling.from_config(cfg["mri"]["sampling"], samples=4, batch_size=4)
    method = Method("dpmpp_2m", "dds")
    cs = LambdaChoice(0.01, [0.01], [0.0], [0.0], {"iterations": 20, "cg_steps": 4, "rho_factor": 5.0})
    ds = run_ads(cases[:1], train, prior, 4, method, sampling, cfg["ads"], 0.08, 0, "cpu", {}, cs)
    assert list(ds["strategy"].values) == ["ads", "random", "equispaced", "variable_density", "greedy"]
    assert ds["cs"].dims == ("strategy", "case", "y", "x") and ds.attrs["cs_lambda"] == 0.01
    # the CS reconstruction of each strategy is consistent with that strategy's own mask
    for s in range(ds.sizes["strategy"]):
        mask = torch.as_tensor(ds["mask"].values[s, 0])
        kspace = fft2c(torch.as_tensor(ds["cs"].values[s, 0]) / cases[0].scale * cases[0].sensitivities)
        measured = cases[0].kspace
        rel = float((mask * (kspace - measured)).abs().norm() / (mask * measured).abs().norm())
        assert rel < 0.2, (s, rel)
    assert all("long_name" in ds[d].attrs for d in ds.dims), "every dimension has a described coordinate"
    assert (ds["mask"].values.sum(-1) == 4).all(), "every strategy gets exactly W/R lines"
    order = ds["acquisition_order"].values[0]
    assert len(set(order.tolist())) == len(order) == 4 - cases[0].num_low, (
        "centre lines + distinct acquisitions"
    )
    assert np.isnan(ds["entropy"].values[0, -1, order[:-1]]).all(), "acquired lines have no entropy"
    rows = ads_metrics(ds)
    assert len(rows) == 10 and all(np.isfinite(r["ssim"]) for r in rows)
    assert {r["reconstruction"] for r in rows} == {"posterior_mean", "cs"}


@pytest.mark.parametrize("reconstruction", ["resample", "continue"])
def test_ads_reconstruction_modes(data, reconstruction):
    """``resample`` reconstructs with the final ADS mask exactly as a fixed-mask baseline is
    (same sampler, seeds and budget), so ADS and the baselines differ only by the mask;
    ``continue`` keeps the acquisition trajectory's own samples."""
    cases, train = data
    torch.manual_seed(0)
    prior = NetworkDenoiser(
        build_unet([16, 16], widths=[8, 16], norm_groups=4).eval().requires_grad_(False),
        VPSchedule(),
        "epsilon",
        clip=2.5,
    )
    cfg = validate_config(
        {
            "ads": {
                "enabled": True,
                "particles": 4,
                "baselines": ["random"],
                "reconstruction": reconstruction,
            },
            "mri": {"sampling": {"steps": 4, "samples": 4}},
        }
    )
    sampling = Sampling.from_config(cfg["mri"]["sampling"], samples=4, batch_size=4)
    method = Method("ddim", "dds", solver_options={"eta": 1.0})
    ds = run_ads(cases[:1], train, prior, 4, method, sampling, cfg["ads"], 0.08, 0, "cpu", {})
    mask = torch.as_tensor(ds["mask"].values[0, 0])
    again = reconstruct_case(cases[0], prior, mask, method, sampling, 0, "cpu")
    same = np.allclose(
        ds["samples"].values[0, 0],
        (channels_to_complex(again.samples) * cases[0].scale).numpy(),
        atol=1e-5,
    )
    assert same == (reconstruction == "resample")
    assert ds.attrs["reconstruction"] == reconstruction
