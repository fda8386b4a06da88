"""3D CT stage: volumes from sparse-view or limited-angle projections with a 2D slice prior.

Registers ``diffinv train ct3d`` (the 2D prior on axial slices of the training volumes:
their truth, or the FBP of a dense scan) and ``diffinv sample ct3d`` (posterior samples of
every evaluation volume for one task and one method, with FBP and TV baselines of the same
views). The z-coupling of DiffusionMBIR / DDS-3D is the ``admm_tv`` guidance; slice-by-slice
diffusion is any guidance without it (e.g. ``dds``). Data and operator: :mod:`.volumes`;
verbs: :mod:`.run`; metrics and figures: :mod:`.evaluate`.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from diffinv.stages import Stage, Verb, register


def train_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of the verbs that train on an ingested CT projection store (ct3d, fwd)."""
    p.add_argument("--data", required=True, help="ingested CT projection store (diffinv ingest ct)")
    p.add_argument("-o", "--output", required=True, help="checkpoint folder to write")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _sample_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="ingested CT projection store (diffinv ingest ct)")
    p.add_argument("--prior", required=True, help="checkpoint folder written by 'diffinv train ct3d'")
    p.add_argument("--task", required=True, help="one of ct3d.tasks (its name): which views to keep")
    p.add_argument("--method", required=True, help="one of ct3d.sampling.methods (its name)")
    p.add_argument("-o", "--output", required=True, help="output posterior.zarr")


def keep_method(cfg: dict[str, Any], method: str) -> None:
    """Keep only the method named ``method`` in ``cfg['ct3d']['sampling']['methods']`` and in the
    tasks' per-method overrides (``ct3d.tasks[].methods``)."""
    sampling = cfg["ct3d"]["sampling"]
    sampling["methods"] = [m for m in sampling["methods"] if m["name"] == method]
    for task in cfg["ct3d"].get("tasks", []):
        own = {k: v for k, v in task.pop("methods", {}).items() if k == method}
        if own:
            task["methods"] = own


def keep_task(cfg: dict[str, Any], task: str) -> None:
    """Keep only the task named ``task`` in ``cfg['ct3d']['tasks']`` (a sampling job runs one)."""
    cfg["ct3d"]["tasks"] = [t for t in cfg["ct3d"]["tasks"] if t["name"] == task]


def task_method(task: Mapping[str, Any], method: Mapping[str, Any]) -> dict[str, Any]:
    """The method entry ``method`` as run for ``task``: the task's ``methods.NAME.guidance_options``
    merged over the method's ``guidance_options`` (e.g. a wedge's stronger data consistency), and
    the task's ``methods.NAME.t_start`` and ``init`` over the method's."""
    own = (task.get("methods") or {}).get(method["name"], {})
    options = {**(method.get("guidance_options") or {}), **own.get("guidance_options", {})}
    start = {k: own[k] for k in ("t_start", "init") if k in own}
    return {**method, **start, "guidance_options": options}


STAGE = register(
    Stage(
        "ct3d",
        "3D parallel-beam CT from sparse or limited-angle views with a 2D slice prior (DiffusionMBIR, DDS)",
        {
            "train": Verb(
                "train the 2D slice prior on the training volumes of a projection store",
                "diffinv.stages.ct3d.run:train",
                ("seed", "ct3d.data", "ct3d.prior"),
                train_arguments,
                drop=("ct3d.prior.checkpoint", "ct3d.data.eval_volumes", "ct3d.data.reference"),
            ),
            "sample": Verb(
                "posterior samples of the evaluation volumes for one task and method, with FBP and TV",
                "diffinv.stages.ct3d.run:sample",
                ("seed", "ct3d.data", "ct3d.tasks", "ct3d.sampling", "ct3d.baselines"),
                _sample_arguments,
                drop=("ct3d.data.train_on",),
                narrow=keep_method,
            ),
        },
    )
)
