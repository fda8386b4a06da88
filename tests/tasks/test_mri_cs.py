"""The compressed-sensing baseline (TV-SENSE by ADMM), its λ chosen on training slices, and
how the MRI evaluation presents the baselines."""

import argparse

import numpy as np
import pandas as pd
import pytest
import torch

from diffinv.complex import channels_to_complex, complex_to_channels
from diffinv.config import validate_config
from diffinv.demo.mri import write_demo
from diffinv.diffusion.denoisers import NetworkDenoiser
from diffinv.diffusion.networks import build_unet
from diffinv.diffusion.schedule import VPSchedule
from diffinv.io.fastmri import ingest
from diffinv.io.store import get_provenance, open_zarr, write_zarr
from diffinv.metrics import image_metrics
from diffinv.operators.mri import MRIOperator, fft2c, sampling_mask
from diffinv.stages.core import Method
from diffinv.stages.evaluate import evaluate, summarise
from diffinv.stages.mri.cases import load_cases
from diffinv.stages.mri.cs import (
    choose_lambda,
    gradient,
    gradient_adjoint,
    total_variation,
    tv_objective,
    tv_sense,
)
from diffinv.stages.mri.run import reconstruct


def _phantom(size: int = 32) -> torch.Tensor:
    """Piecewise-constant complex phantom (1, 2, H, W): an ellipse, two rectangles, a constant phase."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    img = (((yy - 16) / 12.0) ** 2 + ((xx - 15) / 9.0) ** 2 <= 1).float() * 0.6
    img[8:14, 10:16] = 1.0
    img[18:26, 17:21] = 0.3
    return complex_to_channels(img * torch.exp(torch.tensor(0.7j)))[None]


def _single_coil(acceleration: int = 4, noise: float = 0.002):
    x = _phantom()
    mask = sampling_mask("equispaced_fraction", 32, acceleration, 0.08, seed=0)
    op = MRIOperator(mask, None)
    g = torch.Generator().manual_seed(1)
    k = fft2c(channels_to_complex(x)) + noise * torch.randn(1, 32, 32, dtype=torch.complex64, generator=g)
    return x, op, op.mask * k


def _psnr(truth: torch.Tensor, x: torch.Tensor) -> float:
    return image_metrics(channels_to_complex(truth[0]).numpy(), channels_to_complex(x[0]).numpy())["psnr"]


def test_gradient_adjoint_is_the_adjoint():
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(3, 2, 7, 9, generator=g), torch.randn(3, 2, 2, 7, 9, generator=g)
    assert float((gradient(x) * v).sum()) == pytest.approx(float((x * gradient_adjoint(v)).sum()), rel=1e-5)


def test_tv_sense_beats_zero_filled_on_a_piecewise_constant_phantom():
    truth, op, y = _single_coil()
    zero_filled = _psnr(truth, op.A_adjoint(y))
    cs = _psnr(truth, tv_sense(op, y, 0.003))
    # measured: zero-filled 17.9 dB, TV-SENSE 28.4 dB at 4x (equispaced, 3 centre lines)
    assert cs > zero_filled + 8.0, (cs, zero_filled)


def _pdhg(op: MRIOperator, y: torch.Tensor, lam: float, iterations: int) -> torch.Tensor:
    """Independent reference: Chambolle & Pock 2011 (Alg. 1) in float64 with K = D, the data
    term's prox in closed form (single coil: AᴴA is a projection, (I + τAᴴA)⁻¹ = I − τ/(1+τ)AᴴA)."""
    aty = op.A_adjoint(y).double()
    x = aty.clone()
    bar, p = x.clone(), torch.zeros_like(gradient(x))
    tau = sigma = 0.99 / 8**0.5

    for _ in range(iterations):
        p = p + sigma * gradient(bar)
        p = p / (p.pow(2).sum((1, 2), keepdim=True).sqrt() / lam).clamp_min(1)
        v = x - tau * gradient_adjoint(p) + tau * aty
        new = v - tau / (1 + tau) * op.normal(v)
        bar, x = 2 * new - x, new
    return x


def test_tv_sense_reaches_the_minimum_of_its_objective():
    truth, op, y = _single_coil()
    lam = 0.01
    admm = tv_sense(op, y, lam)
    reference = _pdhg(op, y, lam, 3000)
    f_ref = float(tv_objective(op, y, reference.double(), lam))
    gaps = [
        (float(tv_objective(op, y, tv_sense(op, y, lam, iterations=n).double(), lam)) - f_ref) / f_ref
        for n in (100, 400)
    ]
    # measured relative gaps: 9.6e-4 (100 iterations, the default), 2.1e-4 (400), 6e-5 (1000)
    assert gaps[0] < 2e-3 and 0 < gaps[1] < 4e-4, gaps
    assert float(total_variation(admm)) < float(total_variation(op.A_adjoint(y)))
    # each slice of a batch has its own λ and does not see the others
    both = tv_sense(
        MRIOperator(torch.stack([op.mask.reshape(-1)] * 2), None), torch.cat([y, y]), torch.tensor([lam, 0.1])
    )
    torch.testing.assert_close(both[:1], admm, rtol=0, atol=1e-5)
    assert not torch.allclose(both[1], admm[0], atol=1e-3)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("cs")
    out = {}
    for coils in (1, 2):
        write_demo(
            root / f"demo{coils}",
            seed=4,
            size=16,
            coils=coils,
            slices_per_volume=2,
            train_volumes=3,
            val_volumes=1,
            test_volumes=0,
        )
        out[coils] = (
            ingest([root / f"demo{coils}" / "train"], root / f"train{coils}.zarr"),
            ingest([root / f"demo{coils}" / "val"], root / f"val{coils}.zarr"),
        )
    return out


@pytest.fixture(scope="module")
def prior():
    torch.manual_seed(0)
    net = build_unet([16, 16], widths=[8, 16], norm_groups=4).eval().requires_grad_(False)
    return NetworkDenoiser(net, VPSchedule(), "epsilon", clip=2.5)


def _cfg(**cs):
    return validate_config(
        {
            "mri": {
                "data": {"cases": 2},
                "sampling": {
                    "samples": 2,
                    "batch_size": 2,
                    "steps": 2,
                    "no_prior_iterations": 5,
                    "methods": [{"solver": "ddim", "guidance": "dds"}],
                    "cs": {"lambdas": [0.001, 0.01, 0.1], "iterations": 40, "tuning_slices": 3, **cs},
                },
            }
        }
    )


def _sample(monkeypatch, prior, data, train, out):
    from diffinv.stages.mri import run

    monkeypatch.setattr(run, "load_prior", lambda *a, **k: prior)
    args = argparse.Namespace(data=data, train_data=train, prior="unused", acceleration=4, output=out)
    run.sample(args, _cfg(), "cpu")
    return open_zarr(out)


def test_lambda_is_chosen_on_training_slices_only(stores, prior, monkeypatch, tmp_path):
    train, val = stores[2]
    clean = _sample(monkeypatch, prior, val, train, tmp_path / "clean.zarr")
    # poison the evaluation store: its truth (fully sampled k-space) becomes noise
    poisoned_store = tmp_path / "poisoned_val.zarr"
    ds = open_zarr(val).load()
    g = np.random.default_rng(0)
    ds["kspace"].values[...] = (g.standard_normal(ds["kspace"].shape) * 1e3).astype(np.complex64)
    write_zarr(ds, poisoned_store)
    poisoned = _sample(monkeypatch, prior, poisoned_store, train, tmp_path / "poisoned.zarr")
    for key in ("cs_lambda", "cs_lambda_grid", "cs_grid_ssim"):
        assert clean.attrs[key] == poisoned.attrs[key], key
    assert not np.allclose(np.abs(clean["truth"].values), np.abs(poisoned["truth"].values))
    prov = get_provenance(clean)["cs"]
    assert prov["tuning_slices"] and all("_train_" in s for s in prov["tuning_slices"])
    assert prov["lambda"] == clean.attrs["cs_lambda"] and "lambda=" in clean["cs"].attrs["long_name"]
    assert clean["cs"].dims == ("case", "y", "x") and clean["cs"].dtype == np.complex64
    # the scores do come from the training store: another one changes them
    other_train, _ = stores[1]
    settings = _cfg()["mri"]["sampling"]
    other = choose_lambda(other_train, 4, settings["mask"]["kind"], 0.08, settings["cs"], 0, "cpu")
    assert other.ssim != clean.attrs["cs_grid_ssim"]


def _posterior(cases, prior, cs, acceleration=4):
    settings = _cfg()["mri"]["sampling"]
    return reconstruct(cases, prior, acceleration, Method("ddim", "dds"), settings, 0.08, 0, "cpu", {}, cs)


@pytest.mark.parametrize("coils", [1, 2])
def test_summary_has_the_cs_row_and_coinciding_baselines_once(stores, prior, coils, tmp_path):
    train, val = stores[coils]
    settings = _cfg()["mri"]["sampling"]
    cs = choose_lambda(train, 4, settings["mask"]["kind"], 0.08, settings["cs"], 0, "cpu")
    ds = _posterior(load_cases(val, 0.08), prior, cs)
    store = write_zarr(ds, tmp_path / "posterior.zarr")
    table = evaluate([store], tmp_path / "metrics.csv", tmp_path / "figures")
    summary = summarise([tmp_path / "metrics.csv"], tmp_path / "summary.csv")
    recons = set(summary["reconstruction"])
    coincide = np.abs(ds["no_prior"].values - ds["zero_filled"].values).max() == 0
    assert coincide == (coils == 1), "single coil: the no-prior baseline is exactly A^H y"
    if coils == 1:
        assert recons == {"posterior_mean", "zero_filled", "cs"}
        note = summary.set_index("reconstruction").loc["zero_filled", "note"]
        assert "no_prior" in note
    else:
        assert recons == {"posterior_mean", "zero_filled", "no_prior", "cs"}
    row = summary.set_index("reconstruction").loc["cs"]
    assert np.isfinite(row["psnr"]) and np.isfinite(row["ssim"]) and row["cases"] == 2
    assert "lambda=" in row["note"]
    assert len(table) == 2 * len(recons)
    assert len(list((tmp_path / "figures").glob("*.png"))) == 2
    written = pd.read_csv(tmp_path / "summary.csv")
    assert written["reconstruction"].tolist() == summary["reconstruction"].tolist()


def test_cs_does_not_depend_on_the_method_or_the_block(stores, prior):
    train, val = stores[2]
    settings = _cfg()["mri"]["sampling"]
    cs = choose_lambda(train, 4, settings["mask"]["kind"], 0.08, settings["cs"], 0, "cpu")
    cases = load_cases(val, 0.08)
    a = reconstruct(cases, prior, 4, Method("ddim", "dds"), settings, 0.08, 0, "cpu", {}, cs)
    b = reconstruct(
        cases, prior, 4, Method("ddim", "dps"), {**settings, "case_block": 1}, 0.08, 0, "cpu", {}, cs
    )
    np.testing.assert_allclose(a["cs"].values, b["cs"].values, atol=1e-5)
