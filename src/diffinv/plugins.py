"""Plug-in registries for solvers, guidance and search methods.

Built-ins are listed below (imported lazily); third-party packages add their own through
the entry-point groups ``diffinv.solvers``, ``diffinv.guidance`` and ``diffinv.search``,
each entry pointing at a class with a docstring whose first line describes it and a
``cite`` attribute. Entry points cannot shadow built-ins.
"""

from __future__ import annotations

import collections.abc
import importlib
import inspect
import types
import typing
from importlib.metadata import entry_points
from typing import Any, Literal, Union, get_args, get_origin

from diffinv.errors import ConfigError, OptionRangeError

GROUPS = {"solver": "diffinv.solvers", "guidance": "diffinv.guidance", "search": "diffinv.search"}
#: Leading arguments that make_solver / make_guidance / make_search pass themselves (not options).
POSITIONAL = {"solver": 1, "guidance": 2, "search": 2}
_SEQUENCES = (list, tuple, collections.abc.Sequence)
_MAPPINGS = (dict, collections.abc.Mapping)
_UNIONS = (Union, types.UnionType)

BUILTINS: dict[str, dict[str, str]] = {
    "solver": {
        "ddpm": "diffinv.solvers.ddim:DDPM",
        "ddim": "diffinv.solvers.ddim:DDIM",
        "dpmpp_2m": "diffinv.solvers.dpmpp:DPMSolverPP2M",
        "diffpir": "diffinv.solvers.diffpir:DiffPIRStep",
        "ddrm": "diffinv.guidance.ddrm:DDRMSolver",
        "dpmpp_2s": "diffinv.solvers.dpmpp:DPMSolverPP2S",
        "dpmpp_3m": "diffinv.solvers.dpmpp:DPMSolverPP3M",
        "deis": "diffinv.solvers.deis:DEIS",
        "unipc": "diffinv.solvers.unipc:UniPC",
        "timeshift": "diffinv.solvers.timeshift:TimeShift",
        "hb": "diffinv.solvers.momentum:HeavyBall",
        "ghvb": "diffinv.solvers.momentum:GHVB",
        "dualfast": "diffinv.solvers.dualfast:DualFast",
        "tstitch": "diffinv.solvers.tstitch:TStitch",
        "mrs": "diffinv.solvers.mrs:MRS",
        "dc_solver": "diffinv.solvers.dcsolver:DCSolver",
        "s3": "diffinv.solvers.s3:S3",
        "fitted_lms": "diffinv.solvers.fitted:FittedMultistep",
    },
    "guidance": {
        "none": "diffinv.guidance.base:Unconditional",
        "dps": "diffinv.guidance.dps:DPS",
        "dds": "diffinv.guidance.dds:DDS",
        "pigdm": "diffinv.guidance.pigdm:PiGDM",
        "diffpir": "diffinv.guidance.diffpir:DiffPIR",
        "ddrm": "diffinv.guidance.ddrm:DDRM",
        "gaussian_score": "diffinv.guidance.gaussian_score:GaussianScore",
        "admm_tv": "diffinv.guidance.admm_tv:ADMMTV",
        "mmps": "diffinv.guidance.mmps:MMPS",
    },
    "search": {
        "smc": "diffinv.search.smc:SMC",
        "mcgdiff": "diffinv.search.smc:MCGdiff",
        "svdd": "diffinv.search.svdd:SVDD",
        "dts": "diffinv.search.dts:DTS",
        "dts_star": "diffinv.search.dts:DTSStar",
        "best_of_n": "diffinv.search.best_of_n:BestOfN",
        "zero_order": "diffinv.search.best_of_n:ZeroOrder",
        "path_search": "diffinv.search.best_of_n:PathSearch",
        "rbf": "diffinv.search.rbf:RBF",
        "minority": "diffinv.search.minority:MinorityGuidance",
    },
}


def _import(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def available(kind: str) -> dict[str, str]:
    """Name -> ``module:attr`` of every installed plug-in of ``kind`` (solver, guidance, search)."""
    if kind not in GROUPS:
        raise ConfigError(f"plug-in kind {kind!r} unknown (fix: use one of {', '.join(GROUPS)})")
    found = {ep.name: ep.value for ep in entry_points(group=GROUPS[kind])}
    found.update(BUILTINS[kind])
    return dict(sorted(found.items()))


def load(kind: str, name: str) -> Any:
    """The plug-in class registered as ``name``; a clear error listing known names otherwise."""
    known = available(kind)
    if name not in known:
        raise ConfigError(f"{kind} {name!r} is not installed (fix: use one of {', '.join(known)})")
    return _import(known[name])


def describe_plugins() -> str:
    """A table of installed plug-ins: name, one-line description and citation."""
    lines = []
    for kind in GROUPS:
        lines.append(f"{kind}:")
        for name, target in available(kind).items():
            obj = _import(target)
            summary = " ".join((obj.__doc__ or "").strip().split("\n\n")[0].split())
            cite = getattr(obj, "cite", "")
            lines.append(f"  {name:<14} {summary}" + (f"  [{cite}]" if cite else ""))
    return "\n".join(lines)


def _configurable(hint: Any) -> bool:
    """Whether a YAML value can have type ``hint`` (else the parameter is for Python callers only)."""
    if get_origin(hint) in _UNIONS:
        return any(_configurable(a) for a in get_args(hint) if a is not type(None))
    base = get_origin(hint) or hint
    return (
        hint is Any or base is Literal or base in (bool, int, float, str, type(None), *_SEQUENCES, *_MAPPINGS)
    )


def _accepts(value: Any, hint: Any) -> bool:
    """Whether ``value`` has type ``hint``; types that cannot be checked (classes, Any) accept anything."""
    base, args = get_origin(hint) or hint, get_args(hint)
    if base in _UNIONS:
        return any(_accepts(value, a) for a in args)
    if base is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if base in (type(None), bool, str):
        return isinstance(value, base)
    if base in (int, float):
        return isinstance(value, (int, base)) and not isinstance(value, bool)
    if base in _SEQUENCES:
        if not isinstance(value, (list, tuple)):
            return False
        if base is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(map(_accepts, value, args))
        return not args or all(_accepts(v, args[0]) for v in value)
    if base in _MAPPINGS:
        return isinstance(value, dict) and (
            not args or all(_accepts(k, args[0]) and _accepts(v, args[1]) for k, v in value.items())
        )
    if base is collections.abc.Callable:
        return callable(value)
    return True


def _type_text(param: inspect.Parameter) -> str:
    """The type of ``param`` as written in its signature."""
    if param.annotation is inspect.Parameter.empty:
        return "any"
    return (
        param.annotation if isinstance(param.annotation, str) else inspect.formatannotation(param.annotation)
    )


def plugin_options(kind: str, cls: type) -> dict[str, tuple[inspect.Parameter, Any]] | None:
    """Config options of plug-in class ``cls``: name -> (parameter, resolved type hint); None = anything goes.

    Leading arguments passed by the ``make_*`` function and parameters no YAML value can
    fill (denoisers, tensors, callables) are left out. ``**kwargs`` is taken to be passed on
    to the next ``__init__`` up the MRO, as the built-in searches do; when it reaches
    ``object`` the options cannot be known.
    """
    leaf = list(inspect.signature(cls.__init__).parameters)[1 : 1 + POSITIONAL[kind]]
    out: dict[str, tuple[inspect.Parameter, Any]] = {}
    for klass in (c for c in cls.__mro__ if "__init__" in vars(c)):
        if klass is object:
            return None
        try:
            hints = typing.get_type_hints(klass.__init__)
        except (NameError, TypeError):  # unresolvable annotations: names are still checked
            hints = {}
        params = list(inspect.signature(klass.__init__).parameters.values())[1:]
        for p in params:
            hint = hints.get(p.name, Any)
            if (
                p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                and p.name not in leaf
                and _configurable(hint)
            ):
                out.setdefault(p.name, (p, hint))
        if all(p.kind is not p.VAR_KEYWORD for p in params):
            return out
    return None


def check_options(kind: str, name: str, options: dict[str, Any], where: str, key: str | None = None) -> None:
    """Raise a one-line ConfigError unless plug-in ``name`` of ``kind`` is installed and takes ``options``.

    ``where`` is the key path of the mapping holding the name under ``key`` (default: ``kind``)
    and the options under ``KEY_options``. A solver with ``base`` and ``base_options`` (a
    wrapper, see ``WrappedSolver``) has its base solver's options checked the same way.
    """
    key = key or kind
    known = available(kind)
    if name not in known:
        raise ConfigError(
            f"{where}.{key}: {kind} {name!r} is not installed (fix: use one of {', '.join(known)})"
        )
    valid = plugin_options(kind, _import(known[name]))
    if valid is None:
        return
    path = f"{where}.{key}_options"
    for option, value in options.items():
        if option not in valid:
            listing = ", ".join(f"{n} ({_type_text(p)})" for n, (p, _) in valid.items())
            fix = f"use one of {listing}" if valid else f"remove it: {kind} {name!r} takes no options"
            raise ConfigError(f"{path}.{option}: unknown option of {kind} {name!r} (fix: {fix})")
        param, hint = valid[option]
        if not _accepts(value, hint):
            text = _type_text(param)
            raise ConfigError(
                f"{path}.{option}: {value!r} is not of type {text} (fix: give a value of type {text})"
            )
    if kind == "solver" and {"base", "base_options"} <= set(valid):
        base = options.get("base", valid["base"][0].default)
        check_options("solver", base, options.get("base_options") or {}, path, "base")
    _check_values(kind, _import(known[name]), options, path)


def _check_values(kind: str, cls: type, options: dict[str, Any], path: str) -> None:
    """Build the plug-in once, as the job will, so that its own range checks run at parse time.

    Solvers get a default schedule, guidance and searches no operator: a plug-in that needs
    a real one to be built is checked when the job builds it.
    """
    from diffinv.diffusion.schedule import VPSchedule

    args: tuple[Any, ...] = (VPSchedule(),) if kind == "solver" else (None, None)
    try:
        cls(*args, **options)
    except OptionRangeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    except Exception:  # noqa: BLE001 - needs real data to be built; the job checks it then
        return
