"""Stage registry: each stage composes data, operator, prior, method and outputs on the core.

A stage registers a :class:`Stage` when its package is imported: its verbs (``train``,
``sample``), the CLI arguments of each verb, the function that runs it (as
``"module:function"``, imported only when the verb runs), and the config paths each
verb's outputs depend on. The Snakemake rules pass a job exactly those paths
(:func:`verb_config`), so an edit reruns only the jobs it affects, and the CLI keeps only
those paths after validation, so a verb cannot read a key its rule did not pass.

Third-party stages register through the entry-point group ``diffinv.stages`` (an entry
point naming a module that calls :func:`register` on import).
"""

from __future__ import annotations

import argparse
import copy
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from diffinv.errors import ConfigError

BUILTIN = (
    "diffinv.stages.mri",
    "diffinv.stages.ads",
    "diffinv.stages.ct3d",
    "diffinv.stages.mri3d",
    "diffinv.stages.atmos",
    "diffinv.stages.fwd",
)


@dataclass(frozen=True)
class Verb:
    """One verb of a stage: its help, CLI arguments, implementation and config paths."""

    help: str
    run: str  # "module:function", called with (args, config, device)
    config_paths: tuple[str, ...]
    arguments: Callable[[argparse.ArgumentParser], None]
    drop: tuple[str, ...] = ()  # paths under config_paths the outputs do not depend on
    narrow: Callable[[dict[str, Any], str], None] | None = None  # keep one method of several


@dataclass(frozen=True)
class Stage:
    """A posterior-sampling stage and its verbs."""

    name: str
    description: str
    verbs: Mapping[str, Verb] = field(default_factory=dict)


_REGISTRY: dict[str, Stage] = {}


def register(stage: Stage) -> Stage:
    """Add ``stage`` to the registry (a name registers once)."""
    if stage.name in _REGISTRY and _REGISTRY[stage.name] is not stage:
        raise ConfigError(f"stage {stage.name!r} is registered twice (fix: rename one of them)")
    _REGISTRY[stage.name] = stage
    return stage


def stages() -> dict[str, Stage]:
    """Every registered stage, built-ins first."""
    for module in BUILTIN:
        importlib.import_module(module)
    for ep in entry_points(group="diffinv.stages"):
        importlib.import_module(ep.value)
    return dict(_REGISTRY)


def get_verb(stage: str, verb: str) -> Verb:
    """The verb ``verb`` of stage ``stage``; a one-line error naming the valid ones otherwise."""
    found = stages()
    if stage not in found:
        raise ConfigError(f"stage {stage!r}: not registered (fix: use one of {', '.join(found)})")
    verbs = found[stage].verbs
    if verb not in verbs:
        raise ConfigError(f"stage {stage!r} has no verb {verb!r} (fix: use one of {', '.join(verbs)})")
    return verbs[verb]


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value


def _get(cfg: Mapping[str, Any], path: str) -> Any:
    node: Any = cfg
    for part in path.split("."):
        node = node[part]
    return node


def _put(out: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        out = out.setdefault(part, {})
    out[last] = value


def select(cfg: Mapping[str, Any], paths: tuple[str, ...], drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """The part of ``cfg`` at ``paths`` (dotted), without the sub-paths in ``drop``."""
    out: dict[str, Any] = {}
    for path in paths:
        _put(out, path, copy.deepcopy(_get(cfg, path)))
    for path in drop:
        *parents, last = path.split(".")
        node: Any = out
        for part in parents:
            node = node.get(part, {})
        node.pop(last, None)
    return out


def verb_config(cfg: Mapping[str, Any], stage: str, verb: str, method: str | None = None) -> dict[str, Any]:
    """What the job ``stage verb`` depends on: the verb's config paths of a validated config.

    ``method`` keeps only that method where the config lists several and a job runs one.
    """
    v = get_verb(stage, verb)
    out = select(cfg, v.config_paths, v.drop)
    if method is not None and v.narrow is not None:
        v.narrow(out, method)
    return out
