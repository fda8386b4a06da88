"""Configuration: one JSON schema (``schemas/config.schema.yaml``) for the Snakefile and the CLI.

Validation fills defaults and reports the first problem as one line naming the file,
the key path and the fix.
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, validators

from diffinv.errors import ConfigError
from diffinv.plugins import GROUPS, check_options


def schema() -> dict[str, Any]:
    """The config JSON schema shipped with the package."""
    return yaml.safe_load(resources.files("diffinv").joinpath("schemas/config.schema.yaml").read_text())


def _with_defaults(cls: type) -> type:
    validate_props = cls.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):  # noqa: ANN001
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_props(validator, properties, instance, schema)

    return validators.extend(cls, {"properties": set_defaults})


_Validator = _with_defaults(Draft202012Validator)


def _fix_for(err: Any) -> str:
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        return f"remove it or use one of: {', '.join(allowed)}"
    if err.validator == "enum":
        return f"use one of {err.validator_value}"
    if err.validator == "type":
        return f"give a value of type {err.validator_value}"
    if err.validator in ("minimum", "exclusiveMinimum", "maximum", "minItems"):
        return f"respect {err.validator} {err.validator_value}"
    return err.schema.get("description", "see workflow/schemas/config.schema.yaml")


def validate_config(config: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """A validated deep copy of ``config`` with defaults filled in; ConfigError otherwise."""
    cfg = copy.deepcopy(config)
    errors = sorted(
        _Validator(schema()).iter_errors(cfg), key=lambda e: (len(e.path), list(map(str, e.path)))
    )
    if errors:
        err = errors[0]
        where = ".".join(str(p) for p in err.path) or "(top level)"
        raise ConfigError(f"{source}: {where}: {err.message} (fix: {_fix_for(err)})")
    _check_methods(cfg, source)
    _check_network(cfg, source)
    return cfg


def _check_network(cfg: dict[str, Any], source: str) -> None:
    """Group normalisation needs every width of the prior's UNet divisible by ``norm_groups``."""
    nets = {
        f"{s}.prior.network": cfg.get(s, {}).get("prior", {}).get("network") for s in ("mri", "ct3d", "atmos")
    }
    nets["fwd.network"] = cfg.get("fwd", {}).get("network")
    for where, net in nets.items():
        if not net or "norm_groups" not in net:
            continue
        bad = [w for w in net["widths"] if w % net["norm_groups"]]
        if bad:
            raise ConfigError(
                f"{source}: {where}.widths: {bad} not divisible by norm_groups "
                f"{net['norm_groups']} (fix: use multiples of norm_groups as widths, or lower norm_groups)"
            )


def _check_methods(cfg: dict[str, Any], source: str) -> None:
    """Plug-in names and options of every method, and distinct method names, checked before any job runs."""
    methods = cfg["mri"]["sampling"]["methods"]
    entries = [(f"mri.sampling.methods[{i}]", m) for i, m in enumerate(methods)]
    ct3d = [(f"ct3d.sampling.methods[{i}]", m) for i, m in enumerate(cfg["ct3d"]["sampling"]["methods"])]
    mri3d = [(f"mri3d.sampling.methods[{i}]", m) for i, m in enumerate(cfg["mri3d"]["sampling"]["methods"])]
    atmos_methods = cfg.get("atmos", {}).get("sampling", {}).get("methods", [])
    atmos = [(f"atmos.sampling.methods[{i}]", m) for i, m in enumerate(atmos_methods)]
    others = [("ads.method", cfg["ads"]["method"])]
    if cfg.get("fwd", {}).get("sampling", {}).get("method"):
        others.append(("fwd.sampling.method", cfg["fwd"]["sampling"]["method"]))
    try:
        for where, method in entries + ct3d + mri3d + atmos + others:
            for kind in (k for k in GROUPS if method.get(k)):
                check_options(kind, method[kind], method.get(f"{kind}_options", {}), where)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    first: dict[str, str] = {}
    for where, method in entries:
        name = method_name(method)
        if name in first:
            raise ConfigError(
                f"{source}: {where}: method name {name!r} is also that of {first[name]} "
                "(fix: remove one; methods are named SOLVER-GUIDANCE[-SEARCH], options do not count)"
            )
        first[name] = where
    _check_unique(ct3d, "name", source)
    _check_unique(mri3d, "name", source)
    _check_unique(atmos, "name", source)
    _check_unique([(f"ct3d.tasks[{i}]", t) for i, t in enumerate(cfg["ct3d"]["tasks"])], "name", source)
    for i, task in enumerate(cfg["ct3d"]["tasks"]):
        if "views" not in task and "wedge" not in task:
            raise ConfigError(
                f"{source}: ct3d.tasks[{i}]: neither views nor wedge (fix: give views: N or wedge: DEGREES)"
            )
    _check_ct3d_task_methods(cfg, source)


def _check_ct3d_task_methods(cfg: dict[str, Any], source: str) -> None:
    """Each ``ct3d.tasks[].methods`` key names a ct3d method, whose guidance takes the merged options."""
    from diffinv.stages.ct3d import task_method

    methods = {m["name"]: m for m in cfg["ct3d"]["sampling"]["methods"]}
    for i, task in enumerate(cfg["ct3d"]["tasks"]):
        for name in task.get("methods", {}):
            where = f"ct3d.tasks[{i}].methods.{name}"
            if name not in methods:
                raise ConfigError(
                    f"{source}: {where}: no method {name!r} in ct3d.sampling.methods "
                    f"(fix: use one of {', '.join(methods)})"
                )
            entry = task_method(task, methods[name])
            try:
                check_options("guidance", entry["guidance"], entry["guidance_options"], where)
            except ConfigError as exc:
                raise ConfigError(f"{source}: {exc}") from exc


def _check_unique(entries: list[tuple[str, dict[str, Any]]], key: str, source: str) -> None:
    """Every entry's ``key`` is distinct."""
    first: dict[str, str] = {}
    for where, entry in entries:
        if entry[key] in first:
            raise ConfigError(
                f"{source}: {where}: {key} {entry[key]!r} is also that of {first[entry[key]]} "
                "(fix: rename one)"
            )
        first[entry[key]] = where


def load_config(path: str | Path) -> dict[str, Any]:
    """Read and validate a YAML config file."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: no such config file (fix: pass an existing YAML file)")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"{p}: not valid YAML ({str(exc).splitlines()[0]}) (fix: correct the syntax)"
        ) from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: top level must be a mapping (fix: write key: value pairs)")
    return validate_config(raw, str(p))


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when available else ``cpu``; explicit names are checked."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"device: {name!r} requested but CUDA is not available (fix: set device: auto or cpu)"
        )
    return name


def method_name(method: dict[str, Any]) -> str:
    """The name of an mri.sampling.methods item: SOLVER-GUIDANCE, or SOLVER-GUIDANCE-SEARCH with a search."""
    parts = [method["solver"], method["guidance"]] + ([method["search"]] if method.get("search") else [])
    return "-".join(parts)
