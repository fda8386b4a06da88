"""Plug-in registries for solvers, guidance and search methods.

Built-ins are listed below (imported lazily); third-party packages add their own through
the entry-point groups ``diffinv.solvers``, ``diffinv.guidance`` and ``diffinv.search``,
each entry pointing at a class with a docstring whose first line describes it and a
``cite`` attribute. Entry points cannot shadow built-ins.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

from diffinv.errors import ConfigError

GROUPS = {"solver": "diffinv.solvers", "guidance": "diffinv.guidance", "search": "diffinv.search"}

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
            summary = (obj.__doc__ or "").strip().splitlines()[0] if obj.__doc__ else ""
            cite = getattr(obj, "cite", "")
            lines.append(f"  {name:<14} {summary}" + (f"  [{cite}]" if cite else ""))
    return "\n".join(lines)
