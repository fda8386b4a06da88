"""Diffusion with forward models on real ERA5 (issue 14, instance 2): UK 2 m temperature, March 2019.

Data: ``era5-2mt-2019-03-uk.grib`` (744 hourly 0.25° fields, 33x49), normalised with the mean/std
of the training times 0-479. The network never sees a field: each training time is observed
through its 4x block average (noise 0.02) and 12 stations (noise 0.05, normalised units) drawn per
time from a fixed list of 40 sites (the 12 sites of ``benchmarks/atmos_uk.py`` plus 28 more drawn
uniformly), and trains with the observation-space loss of :mod:`diffinv.stages.fwd.atmos`.
Evaluation follows ``benchmarks/atmos_uk.py``: times 504-743 every 12th hour (20 fields), each from
its noisy 4x field plus the 9 conditioning stations (noise seeded by the case as
``diffinv.stages.atmos.run.SuperResolution.observe``); the diffused target is the observation at a
fixed set of sites (``--target held_out``: the 3 held-out sites; ``list``: the 31 list sites that
are not conditioning). 8 members, DDIM 10 steps (η from ``--eta``). Scores pooled over the 20 fields (K).

    OMP_NUM_THREADS=1 python benchmarks/fwd_atmos.py train --steps 600
    OMP_NUM_THREADS=1 python benchmarks/fwd_atmos.py test --target held_out

Outputs under ``benchmarks/out/fwd_atmos/``: ``model/`` (weights, config, loss curve),
``summary.csv`` (one row per run of ``test``, appended).
"""

from __future__ import annotations

import argparse
import csv
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

OUT = Path(__file__).parent / "out" / "fwd_atmos"
GRIB = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "era5" / "era5-2mt-2019-03-uk.grib"
TRAIN, EVAL, STRIDE = (0, 480), (504, 744), 12
NOISE = (0.02, 0.05)
NETWORK = {"widths": [16, 32], "layers_per_block": 1, "norm_groups": 8}
SEED = 0


def setup() -> dict[str, Any]:
    """Fields, normalisation, grid, the 12 evaluation sites and the 40-site training list."""
    from diffinv.stages.atmos.data import Normalisation, load_fields, station_sites
    from diffinv.stages.fwd.atmos import Grid

    fields = load_fields(GRIB, {"variables": ["t2m"], "levels": None})
    train = np.arange(*TRAIN)
    norm = Normalisation.of(fields, train)
    lat, lon = fields.latitude, fields.longitude
    grid = Grid.of(lat, lon, 4, NETWORK["widths"])
    evaluation = station_sites({"n_random": 12, "held_out": 3}, lat, lon, SEED)
    extra = station_sites({"n_random": 28}, lat, lon, SEED + 1)
    site_lat = np.concatenate([evaluation.latitude, extra.latitude])
    site_lon = np.concatenate([evaluation.longitude, extra.longitude])
    return {
        "fields": fields,
        "norm": norm,
        "grid": grid,
        "eval_sites": evaluation,
        "list": (site_lat, site_lon),
    }


def case_id(fields: Any, i: int) -> str:
    """The atmos stage's case identity of time ``i``."""
    return f"atmos:{np.datetime_as_string(fields.times[i], unit='s')}"


def train(steps: int, t_power: float, name: str) -> None:
    """Observe the training times, train from the observations, write ``model/``."""
    from diffinv.diffusion.networks import save_checkpoint
    from diffinv.diffusion.schedule import VPSchedule
    from diffinv.diffusion.training import write_loss_curve
    from diffinv.stages.fwd.atmos import StationPlan, observe, train_fwd_atmos
    from diffinv.stages.fwd.model import FwdTrain

    s = setup()
    fields, grid = s["fields"], s["grid"]
    idx = np.arange(*TRAIN)
    sites = grid.stations(*s["list"])
    truth = torch.from_numpy(s["norm"].to_prior(fields.values[idx], fields.channels))
    obs = observe(truth, grid, sites, 12, NOISE, [case_id(fields, int(i)) for i in idx], SEED)
    del truth
    fields.values[idx] = np.nan  # the training times' fields are poisoned before training
    plan = StationPlan(per_time=12, context=8, t_power=t_power)
    cfg = FwdTrain(steps=steps, batch_size=16, lr=2e-3, warmup=50, log_every=10)
    schedule = VPSchedule()
    model, log, record = train_fwd_atmos(obs, grid, sites, NETWORK, schedule, plan, cfg)
    folder = OUT / name
    h, w = grid.shape
    size = [h + grid.pad[0] + grid.pad[1], w + grid.pad[2] + grid.pad[3]]
    config = {
        "network": {"size": size, "channels": 5, **NETWORK},
        "prediction": "x0",
        "schedule": asdict(schedule),
        "clip": None,
        "data": {"model": "fwd-atmos", "normalisation": s["norm"].as_dict(), "grib": str(GRIB)},
        "training": record,
    }
    save_checkpoint(folder, model.net.unet, config)
    write_loss_curve(folder, log)
    print(
        f"trained {steps} steps: wall {record['wall_time_s']} s, cpu {record['cpu_time_s']} s, "
        f"final loss (EMA) {record['final_loss_ema']:.4f}"
    )


def pooled(members: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """field_metrics of members (M, T, H, W) against truth (T, H, W), the T fields stacked in rows."""
    from diffinv.stages.atmos.metrics import field_metrics

    m = members.shape[0]
    row = field_metrics(
        members.reshape(m, 1, -1, truth.shape[-1]), truth.reshape(1, -1, truth.shape[-1]), ["t2m"]
    )
    return {k: float(v) for k, v in row.iloc[0].items() if k != "channel"}


def test(target: str, samples: int, steps: int, eta: float, name: str) -> None:
    """Posterior ensembles of the evaluation times; bicubic baseline; append to ``summary.csv``."""
    from diffinv.diffusion.networks import checkpoint_config, load_denoiser
    from diffinv.diffusion.schedule import VPSchedule
    from diffinv.stages.core import CaseSeeds, Method, Sampling
    from diffinv.stages.fwd.atmos import FwdAtmosModel, StationPlan, context_image, posterior_fields
    from diffinv.stages.fwd.model import SignalNet

    torch.set_num_threads(1)
    s = setup()
    fields, grid, norm, ev = s["fields"], s["grid"], s["norm"], s["eval_sites"]
    folder = OUT / name
    record = checkpoint_config(folder)["training"]
    net = SignalNet(load_denoiser(folder, "cpu").net).eval().requires_grad_(False)
    model = FwdAtmosModel(net, grid, VPSchedule(), StationPlan(**record["plan"]))
    all12 = grid.stations(ev.latitude, ev.longitude)
    used = torch.from_numpy(~ev.held_out)[None]
    if target == "held_out":
        trgt = grid.stations(ev.latitude[ev.held_out], ev.longitude[ev.held_out])
    else:
        lat, lon = s["list"]
        rest = np.setdiff1d(np.arange(len(lat)), ev.used)
        trgt = grid.stations(lat[rest], lon[rest])
    sampling = Sampling(samples, samples, steps)
    idx = np.arange(*EVAL)[::STRIDE]
    members, truths, cubic, nfe = [], [], [], 0.0
    start = time.perf_counter()
    for i in idx:
        cid = case_id(fields, int(i))
        x = torch.from_numpy(norm.to_prior(fields.values[i], fields.channels))[None].double()
        gen = torch.Generator().manual_seed(CaseSeeds.of(SEED, cid).mask)
        coarse = grid.coarse.A(x)
        coarse = coarse + NOISE[0] * torch.randn(coarse.shape, generator=gen, dtype=coarse.dtype)
        clean = all12.interpolate(x)
        noisy = clean + NOISE[1] * torch.randn(clean.shape, generator=gen, dtype=clean.dtype)
        ctx = context_image(grid, coarse.float(), all12, noisy[..., 0].float(), used)
        out, nfe = posterior_fields(
            model,
            ctx,
            trgt,
            Method("ddim", "none", solver_options={"eta": eta}),
            sampling,
            CaseSeeds.of(SEED, cid),
        )
        members.append(norm.to_data(out.numpy(), fields.channels)[:, 0])
        truths.append(fields.values[i, 0])
        cubic.append(norm.to_data(grid.upsample(coarse.float()).numpy(), fields.channels)[0, 0])
    wall = time.perf_counter() - start
    post = pooled(np.stack(members, 1).astype(np.float64), np.stack(truths))
    truth = np.stack(truths).astype(np.float64)
    bic = float(np.sqrt(np.mean((np.stack(cubic) - truth) ** 2)))
    row = {
        "model": name,
        "t_power": record["plan"]["t_power"],
        "target": target,
        "train_steps": record["steps"],
        "train_wall_s": record["wall_time_s"],
        "train_cpu_s": record["cpu_time_s"],
        "samples": samples,
        "ddim_steps": steps,
        "eta": eta,
        "nfe": nfe,
        "sample_wall_s": round(wall, 1),
        "bicubic_rmse": round(bic, 4),
        **{k: round(v, 4) for k, v in post.items()},
    }
    path = OUT / "summary.csv"
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
    print(
        f"target {target}, eta {eta}: bicubic RMSE {bic:.3f} K; "
        f"fwd posterior mean RMSE {post['rmse']:.3f} K, "
        f"CRPS {post['crps']:.3f} K, spread-skill {post['spread_skill']:.3f}, cov90 {post['cov90']:.3f} "
        f"({len(idx)} fields, {samples} members, {nfe:.0f} NFE, {wall:.0f} s)"
    )


def main() -> None:
    torch.set_num_threads(1)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train")
    tr.add_argument("--steps", type=int, default=600)
    tr.add_argument("--t-power", type=float, default=1.0)
    t = sub.add_parser("test")
    t.add_argument("--target", choices=["held_out", "list"], default="held_out")
    t.add_argument("--samples", type=int, default=8)
    t.add_argument("--steps", type=int, default=10)
    t.add_argument("--eta", type=float, default=0.0)
    for q in (tr, t):
        q.add_argument("--name", default="model", help="model folder under benchmarks/out/fwd_atmos/")
    a = p.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if a.cmd == "train":
        train(a.steps, a.t_power, a.name)
    else:
        test(a.target, a.samples, a.steps, a.eta, a.name)


if __name__ == "__main__":
    main()
