"""CLI verbs of the stages: ``train``, ``sample``, ``evaluate``, ``summarise``."""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from diffinv.config import load_config, resolve_device, validate_config
from diffinv.errors import ConfigError
from diffinv.stages import positive_int

#: A settings value that reads back as itself without quotes: no whitespace, quote, backslash
#: or YAML flow/indicator character.
_PLAIN = re.compile(r"[A-Za-z0-9_.+-][A-Za-z0-9_.+:/@%-]*")


def _value(value: Any) -> str:
    """``value`` as YAML text that :func:`_read_value` reads back as ``value`` (compact, no spaces)."""
    if isinstance(value, bool) or value is None:
        text = json.dumps(value)
    elif isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            text = ".nan" if math.isnan(value) else ("-.inf" if value < 0 else ".inf")
        else:
            text = repr(value)
            mantissa, e, exponent = text.partition("e")
            if e:  # YAML 1.1 floats need a dot and a signed exponent: 1e-05 -> 1.0e-05
                mantissa = mantissa if "." in mantissa else mantissa + ".0"
                exponent = exponent if exponent[0] in "+-" else "+" + exponent
                text = f"{mantissa}e{exponent}"
    elif isinstance(value, list):
        text = "[" + ",".join(_value(v) for v in value) + "]"
    elif isinstance(value, Mapping):
        text = "{" + ",".join(f"{k}: {_value(v)}" for k, v in sorted(value.items())) + "}"
    elif isinstance(value, str) and _PLAIN.fullmatch(value):
        text = value
    else:
        text = json.dumps(value)
    if _read_value(text) != value or type(_read_value(text)) is not type(value):
        text = json.dumps(value)
    return text


def _read_value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def _items(cfg: Any, prefix: str) -> list[tuple[str, Any]]:
    """Leaves of ``cfg`` as (dotted path, value); list items of mappings as ``path[i]``."""
    if isinstance(cfg, Mapping) and cfg:
        out = []
        for key in sorted(cfg):
            out += _items(cfg[key], f"{prefix}.{key}" if prefix else str(key))
        return out
    if isinstance(cfg, list) and cfg and all(isinstance(v, Mapping) and v for v in cfg):
        return [item for i, v in enumerate(cfg) for item in _items(v, f"{prefix}[{i}]")]
    return [(prefix, cfg)]


def format_settings(cfg: Mapping[str, Any]) -> str:
    """``cfg`` as sorted ``key.path=value`` settings, space-separated (``--config-set``).

    Readable in a Snakemake report (a job's params), and read back exactly by
    :func:`parse_settings`. Values are YAML (lists of scalars in flow style, ``{}``/``[]``);
    a setting with a space or quote in it is shell-quoted.
    """
    words = []
    for path, value in _items(cfg, ""):
        word = f"{path}={_value(value)}"
        words.append(word if re.fullmatch(r"[^\s'\"\\]+", word) else shlex.quote(word))
    return " ".join(words)


def parse_settings(text: str, what: str = "--config-set") -> dict[str, Any]:
    """The config of :func:`format_settings` text (inverse of it)."""
    out: dict[str, Any] = {}
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise ConfigError(f"{what}: {exc} (fix: quote settings with spaces)") from exc
    for word in words:
        path, sep, raw = word.partition("=")
        steps = re.findall(r"([^.\[\]]+)|\[(\d+)\]", path)
        if not sep or not steps or "".join(k or f"[{i}]" for k, i in steps) != path.replace(".", ""):
            raise ConfigError(f"{what}: {word!r} is not key.path=value (fix: e.g. mri.sampling.steps=20)")
        try:
            value = _read_value(raw)
        except Exception as exc:
            raise ConfigError(f"{what}: {word!r}: value is not YAML (fix: quote it as JSON)") from exc
        keys: list[str | int] = [key or int(index) for key, index in steps]
        node: Any = out
        for here, after in zip(keys, keys[1:] + [None]):
            if isinstance(here, int) != isinstance(node, list):
                raise ConfigError(
                    f"{what}: {word!r}: {here!r} does not fit the settings before it "
                    "(fix: lists as key[i], mappings as key.sub)"
                )
            if isinstance(node, list):
                node.extend([None] * (here + 1 - len(node)))
            if after is None:
                node[here] = value
            else:
                child = node[here] if isinstance(node, list) else node.get(here)
                if child is None:
                    child = [] if isinstance(after, int) else {}
                    node[here] = child
                node = child
    return out


def _config(args: argparse.Namespace) -> dict[str, Any]:
    if getattr(args, "config_set", None) is not None:
        return validate_config(parse_settings(args.config_set), "--config-set")
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

    calibration = [Path(c) for c in args.calibration or ()]
    print(summarise([Path(m) for m in args.metrics], Path(args.output), calibration).to_string(index=False))


def _cmd_ct3d_evaluate(args: argparse.Namespace) -> None:
    from diffinv.stages.ct3d.evaluate import evaluate

    table = evaluate(
        [Path(s) for s in args.stores], Path(args.metrics), Path(args.figures) if args.figures else None
    )
    print(table.groupby(["reconstruction", "view"])[["psnr", "ssim"]].mean().to_string())


def _cmd_ct3d_summarise(args: argparse.Namespace) -> None:
    from diffinv.stages.ct3d.evaluate import summarise

    print(summarise([Path(m) for m in args.metrics], Path(args.output)).to_string(index=False))


def _cmd_mri3d_evaluate(args: argparse.Namespace) -> None:
    from diffinv.stages.mri3d.evaluate import evaluate

    table = evaluate(
        [Path(s) for s in args.stores], Path(args.metrics), Path(args.figures) if args.figures else None
    )
    print(table.groupby(["reconstruction", "view"])[["psnr", "ssim"]].mean().to_string())


def _cmd_mri3d_summarise(args: argparse.Namespace) -> None:
    from diffinv.stages.mri3d.evaluate import summarise

    print(summarise([Path(m) for m in args.metrics], Path(args.output)).to_string(index=False))


def _add_runtime(p: argparse.ArgumentParser) -> None:
    """Config source, device and threads: the arguments every stage verb shares."""
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--config", help="YAML config file (validated against the schema)")
    g.add_argument("--config-json", help="the config as a JSON object")
    g.add_argument(
        "--config-set",
        metavar="SETTINGS",
        help="the config as space-separated key.path=value settings, values YAML, list items "
        "of mappings as key[i] (used by the Snakemake rules: e.g. 'seed=0 mri.sampling.steps=20')",
    )
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
        ("calibrate", "split conformal calibration of a stage's posterior intervals on held-out cases"),
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

    p = verbs.add_parser("ct3d-evaluate", help="metrics CSV and figures of 3D CT stores")
    p.add_argument("stores", nargs="+", help="posterior.zarr stores written by 'diffinv sample ct3d'")
    p.add_argument(
        "--metrics", required=True, help="output CSV: PSNR/SSIM per volume, reconstruction and view"
    )
    p.add_argument("--figures", help="output folder of PNGs, three orthogonal views per volume")
    p.set_defaults(func=_cmd_ct3d_evaluate)

    p = verbs.add_parser(
        "ct3d-summarise", help="mean 3D CT metrics per task, method, reconstruction and view"
    )
    p.add_argument("metrics", nargs="+", help="metrics CSVs written by 'diffinv ct3d-evaluate'")
    p.add_argument("-o", "--output", required=True, help="output CSV of means over volumes")
    p.set_defaults(func=_cmd_ct3d_summarise)

    p = verbs.add_parser("mri3d-evaluate", help="metrics CSV and figures of 3D MRI stores")
    p.add_argument("stores", nargs="+", help="posterior.zarr stores written by 'diffinv sample mri3d'")
    p.add_argument(
        "--metrics", required=True, help="output CSV: magnitude PSNR/SSIM per volume, reconstruction and view"
    )
    p.add_argument("--figures", help="output folder of PNGs, three orthogonal views per volume")
    p.set_defaults(func=_cmd_mri3d_evaluate)

    p = verbs.add_parser(
        "mri3d-summarise", help="mean 3D MRI metrics per acceleration, method, reconstruction and view"
    )
    p.add_argument("metrics", nargs="+", help="metrics CSVs written by 'diffinv mri3d-evaluate'")
    p.add_argument("-o", "--output", required=True, help="output CSV of means over volumes")
    p.set_defaults(func=_cmd_mri3d_summarise)

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
    p.add_argument(
        "--calibration",
        nargs="+",
        help="calibration CSVs written by 'diffinv calibrate mri': their primary level's columns join "
        "the posterior rows",
    )
    p.set_defaults(func=_cmd_summarise)
