"""CLI verbs of the stages: ``train``, ``sample``, ``evaluate``, ``summarise``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from diffinv.config import load_config, resolve_device, validate_config
from diffinv.errors import ConfigError
from diffinv.stages import positive_int


def _config(args: argparse.Namespace) -> dict[str, Any]:
    if args.config_json:
        try:
            raw = json.loads(args.config_json)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--config-json: not valid JSON ({exc.msg}) (fix: pass a JSON object)") from exc
        return validate_config(raw, "--config-json")
    return load_config(args.config)


def _setup(threads: int, device: str) -> str:
    """Torch threads and the device: runtime settings, not part of any job's config paths."""
    import torch

    torch.set_num_threads(threads)
    return resolve_device(device)


def _run_verb(args: argparse.Namespace) -> None:
    """Run ``diffinv VERB STAGE``: validate, keep the verb's config paths, call the stage.

    ``--threads`` and ``--device`` override the config's ``threads`` and ``device``.
    """
    import importlib

    from diffinv.stages import get_verb, verb_config

    verb = get_verb(args.stage, args.verb)
    full = _config(args)
    cfg = verb_config(full, args.stage, args.verb, getattr(args, "method", None))
    device = _setup(args.threads or full["threads"], args.device or full["device"])
    module, _, func = verb.run.partition(":")
    getattr(importlib.import_module(module), func)(args, cfg, device)


def _cmd_ads_evaluate(args: argparse.Namespace) -> None:
    from diffinv.stages.evaluate import evaluate_ads

    table = evaluate_ads(Path(args.store), Path(args.metrics), Path(args.figures))
    print(table.groupby("strategy")[["psnr", "ssim", "nmse"]].mean().to_string())


def _cmd_ads_summarise(args: argparse.Namespace) -> None:
    from diffinv.stages.evaluate import summarise_ads

    print(summarise_ads([Path(m) for m in args.metrics], Path(args.output)).to_string(index=False))


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from diffinv.stages.evaluate import evaluate

    table = evaluate(
        [Path(s) for s in args.stores], Path(args.metrics), Path(args.figures) if args.figures else None
    )
    print(table.groupby("reconstruction")[["psnr", "ssim", "nmse"]].mean().to_string())


def _cmd_summarise(args: argparse.Namespace) -> None:
    from diffinv.stages.evaluate import summarise

    print(summarise([Path(m) for m in args.metrics], Path(args.output)).to_string(index=False))


def _add_runtime(p: argparse.ArgumentParser) -> None:
    """Config source, device and threads: the arguments every stage verb shares."""
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--config", help="YAML config file (validated against the schema)")
    g.add_argument("--config-json", help="the config as a JSON object (used by the Snakemake rules)")
    p.add_argument(
        "--device", help="auto (cuda when available), cpu, cuda or cuda:N (default: the config's device)"
    )
    p.add_argument(
        "--threads", type=positive_int, help="torch intra-op threads (default: the config's threads)"
    )


def add_verbs(verbs: argparse._SubParsersAction) -> None:
    """Register the stage verbs on the ``diffinv`` parser."""
    from diffinv.stages import stages

    registered = stages()
    for verb, what in (
        ("train", "train a stage's diffusion prior"),
        ("sample", "posterior sampling of a stage"),
    ):
        p = verbs.add_parser(verb, help=what)
        sub = p.add_subparsers(dest="stage", required=True, metavar="STAGE", help="the stage (see below)")
        for stage in registered.values():
            if verb not in stage.verbs:
                continue
            v = stage.verbs[verb]
            sp = sub.add_parser(stage.name, help=v.help, description=f"{stage.description}: {v.help}")
            v.arguments(sp)
            _add_runtime(sp)
            sp.set_defaults(func=_run_verb, verb=verb)

    p = verbs.add_parser("ads-evaluate", help="metrics CSV and figures of an ADS store")
    p.add_argument("store", help="ads.zarr written by 'diffinv sample ads'")
    p.add_argument("--metrics", required=True, help="output CSV: PSNR/SSIM/NMSE per strategy and case")
    p.add_argument("--figures", required=True, help="output folder of PNGs, one per case")
    p.set_defaults(func=_cmd_ads_evaluate)

    p = verbs.add_parser("ads-summarise", help="mean ADS metrics per acceleration and strategy")
    p.add_argument("metrics", nargs="+", help="metrics CSVs written by 'diffinv ads-evaluate'")
    p.add_argument("-o", "--output", required=True, help="output CSV of means per acceleration and strategy")
    p.set_defaults(func=_cmd_ads_summarise)

    p = verbs.add_parser("evaluate", help="metrics CSV and figures of posterior stores")
    p.add_argument("stores", nargs="+", help="posterior.zarr stores written by 'diffinv sample mri'")
    p.add_argument("--metrics", required=True, help="output CSV")
    p.add_argument("--figures", help="output folder of PNGs")
    p.set_defaults(func=_cmd_evaluate)

    p = verbs.add_parser("summarise", help="mean metrics per method, acceleration and reconstruction")
    p.add_argument("metrics", nargs="+", help="metrics CSVs written by 'diffinv evaluate'")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="output CSV of means per method, acceleration and reconstruction",
    )
    p.set_defaults(func=_cmd_summarise)
