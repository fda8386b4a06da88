"""CLI verbs of the stages: ``train``, ``sample``, ``evaluate``, ``summarise``."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from diffinv.config import load_config, method_name, resolve_device, validate_config
from diffinv.errors import ConfigError


def _config(args: argparse.Namespace) -> dict[str, Any]:
    if args.config_json:
        try:
            raw = json.loads(args.config_json)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--config-json: not valid JSON ({exc.msg}) (fix: pass a JSON object)") from exc
        return validate_config(raw, "--config-json")
    return load_config(args.config)


def _setup(cfg: dict[str, Any]) -> str:
    import torch

    torch.set_num_threads(cfg["threads"])
    return resolve_device(cfg["device"])


def _method(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    methods = {method_name(m): m for m in cfg["mri"]["sampling"]["methods"]}
    if name not in methods:
        raise ConfigError(
            f"--method {name!r}: not in mri.sampling.methods (fix: use one of {', '.join(methods)})"
        )
    return methods[name]


def _cmd_train(args: argparse.Namespace) -> None:
    from diffinv.diffusion.schedule import VPSchedule
    from diffinv.diffusion.training import TrainConfig, train_prior
    from diffinv.tasks.mri import training_images

    cfg = _config(args)
    device = _setup(cfg)
    mri = cfg["mri"]
    images = training_images(Path(args.data), mri["data"]["center_fraction"])
    prior = mri["prior"]
    network = {"size": list(images.shape[-2:]), "channels": 2, **prior["network"]}
    train = TrainConfig(**prior["train"], seed=cfg["seed"])
    info = {
        "source": str(args.data),
        "images": int(images.shape[0]),
        "normalisation": "q99 of the calibration-line image magnitude",
        "representation": "complex image as (real, imag) channels",
    }
    train_prior(
        images,
        Path(args.output),
        network,
        VPSchedule(**prior["schedule"]),
        train,
        prior["clip"],
        info,
        device,
        progress=not args.quiet,
    )
    print(f"wrote {args.output}")


def _cmd_sample(args: argparse.Namespace) -> None:
    from diffinv.diffusion.networks import load_denoiser
    from diffinv.io.store import write_zarr
    from diffinv.tasks.mri import load_cases, reconstruct

    cfg = _config(args)
    device = _setup(cfg)
    mri = cfg["mri"]
    method = _method(cfg, args.method)
    prior = load_denoiser(Path(args.prior), device)
    cases = load_cases(Path(args.data), mri["data"]["center_fraction"], mri["data"]["cases"])
    start = time.perf_counter()
    record = {"step": "sample mri", "config": cfg, "data": str(args.data), "prior": str(args.prior)}
    ds = reconstruct(
        cases,
        prior,
        args.acceleration,
        method,
        mri["sampling"],
        mri["data"]["center_fraction"],
        cfg["seed"],
        device,
        record,
    )
    write_zarr(ds, Path(args.output))
    print(f"wrote {args.output} ({len(cases)} cases, {time.perf_counter() - start:.1f} s)")


def _cmd_ads(args: argparse.Namespace) -> None:
    from diffinv.diffusion.networks import load_denoiser
    from diffinv.io.store import write_zarr
    from diffinv.tasks.ads import ads_inputs, run_ads

    cfg = _config(args)
    device = _setup(cfg)
    prior = load_denoiser(Path(args.prior), device)
    cases, train, method, sampling = ads_inputs(cfg, Path(args.data), Path(args.train))
    record = {
        "step": "ads",
        "config": cfg,
        "data": str(args.data),
        "train": str(args.train),
        "prior": str(args.prior),
    }
    start = time.perf_counter()
    ds = run_ads(
        cases,
        train,
        prior,
        args.acceleration,
        method,
        sampling,
        cfg["ads"],
        cfg["mri"]["data"]["center_fraction"],
        cfg["seed"],
        device,
        record,
    )
    write_zarr(ds, Path(args.output))
    print(f"wrote {args.output} ({len(cases)} cases, {time.perf_counter() - start:.1f} s)")


def _cmd_ads_evaluate(args: argparse.Namespace) -> None:
    from diffinv.tasks.evaluate import evaluate_ads

    table = evaluate_ads(Path(args.store), Path(args.metrics), Path(args.figures))
    print(table.groupby("strategy")[["psnr", "ssim", "nmse"]].mean().to_string())


def _cmd_ads_summarise(args: argparse.Namespace) -> None:
    from diffinv.tasks.evaluate import summarise_ads

    print(summarise_ads([Path(m) for m in args.metrics], Path(args.output)).to_string(index=False))


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from diffinv.tasks.evaluate import evaluate

    table = evaluate(
        [Path(s) for s in args.stores], Path(args.metrics), Path(args.figures) if args.figures else None
    )
    print(table.groupby("reconstruction")[["psnr", "ssim", "nmse"]].mean().to_string())


def _cmd_summarise(args: argparse.Namespace) -> None:
    from diffinv.tasks.evaluate import summarise

    print(summarise([Path(m) for m in args.metrics], Path(args.output)).to_string(index=False))


def _add_config(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--config", help="YAML config file (validated against the schema)")
    g.add_argument("--config-json", help="the config as a JSON object (used by the Snakemake rules)")


def add_verbs(verbs: argparse._SubParsersAction) -> None:
    """Register the stage verbs on the ``diffinv`` parser."""
    p = verbs.add_parser("train", help="train a diffusion prior on an ingested store")
    p.add_argument("stage", choices=["mri"])
    p.add_argument("--data", required=True, help="ingested training store (.zarr)")
    p.add_argument("-o", "--output", required=True, help="checkpoint folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_config(p)
    p.set_defaults(func=_cmd_train)

    p = verbs.add_parser("sample", help="posterior sampling of a stage into posterior.zarr")
    p.add_argument("stage", choices=["mri"])
    p.add_argument("--data", required=True, help="ingested store to reconstruct (.zarr)")
    p.add_argument("--prior", required=True, help="checkpoint folder")
    p.add_argument("--acceleration", type=int, required=True)
    p.add_argument("--method", required=True, help="SOLVER-GUIDANCE from the config's methods")
    p.add_argument("-o", "--output", required=True, help="output posterior.zarr")
    _add_config(p)
    p.set_defaults(func=_cmd_sample)

    p = verbs.add_parser(
        "ads", help="active diffusion subsampling of MRI k-space lines, with fixed-mask baselines"
    )
    p.add_argument("--data", required=True, help="ingested store to reconstruct (.zarr)")
    p.add_argument("--train", required=True, help="ingested training store (for the greedy fixed mask)")
    p.add_argument("--prior", required=True, help="checkpoint folder")
    p.add_argument("--acceleration", type=int, required=True)
    p.add_argument("-o", "--output", required=True, help="output ads.zarr")
    _add_config(p)
    p.set_defaults(func=_cmd_ads)

    p = verbs.add_parser("ads-evaluate", help="metrics CSV and figures of an ADS store")
    p.add_argument("store")
    p.add_argument("--metrics", required=True)
    p.add_argument("--figures", required=True)
    p.set_defaults(func=_cmd_ads_evaluate)

    p = verbs.add_parser("ads-summarise", help="mean ADS metrics per acceleration and strategy")
    p.add_argument("metrics", nargs="+")
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=_cmd_ads_summarise)

    p = verbs.add_parser("evaluate", help="metrics CSV and figures of posterior stores")
    p.add_argument("stores", nargs="+")
    p.add_argument("--metrics", required=True, help="output CSV")
    p.add_argument("--figures", help="output folder of PNGs")
    p.set_defaults(func=_cmd_evaluate)

    p = verbs.add_parser("summarise", help="mean metrics per method, acceleration and reconstruction")
    p.add_argument("metrics", nargs="+")
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=_cmd_summarise)
