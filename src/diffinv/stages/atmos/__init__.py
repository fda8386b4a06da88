"""Multimodal atmospheric super-resolution stage (issue 13): fine ERA5 fields from a coarse field
plus station values, with calibrated ensembles.

Registers ``diffinv train atmos`` (a diffusion prior on normalised fine fields of the training
times), ``diffinv sample atmos`` (ensembles of one method at every evaluation time, with
bicubic and conservative baselines of the coarse input in the same store) and ``diffinv
calibrate atmos`` (the same at held-out calibration times, then :mod:`.calibrate` applied to an
evaluation store). Data: :mod:`.data`;
verbs: :mod:`.run`; metrics and figures: :mod:`.evaluate` (on :mod:`.metrics`, :mod:`.figures`).
"""

from __future__ import annotations

import argparse
from typing import Any

from diffinv.stages import Stage, Verb, register


def _train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="ingested ERA5 store (diffinv ingest era5) or an ERA5 file")
    p.add_argument("-o", "--output", required=True, help="checkpoint folder to write")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _sample_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="ingested ERA5 store (diffinv ingest era5) or an ERA5 file")
    p.add_argument("--prior", required=True, help="checkpoint folder written by 'diffinv train atmos'")
    p.add_argument("--method", required=True, help="one of atmos.sampling.methods (its name)")
    p.add_argument(
        "--stations", help="ingested IGRA store (diffinv ingest igra) when stations.source is igra"
    )
    p.add_argument("-o", "--output", required=True, help="output posterior.zarr")


def _calibrate_arguments(p: argparse.ArgumentParser) -> None:
    _sample_arguments(p)
    p.add_argument("--evaluation", required=True, help="posterior.zarr of the same method to calibrate")
    p.add_argument("--samples", required=True, help="output posterior.zarr of the calibration times")
    p.add_argument("--table", required=True, help="output CSV of raw and calibrated scores per channel")


def keep_method(cfg: dict[str, Any], method: str) -> None:
    """Keep only the method named ``method`` in ``cfg['atmos']['sampling']['methods']``."""
    sampling = cfg["atmos"]["sampling"]
    sampling["methods"] = [m for m in sampling["methods"] if m["name"] == method]


STAGE = register(
    Stage(
        "atmos",
        "atmospheric super-resolution from a coarse field and stations with a diffusion prior (SDA score)",
        {
            "train": Verb(
                "train the fine-field prior on the training times of an ERA5 store",
                "diffinv.stages.atmos.run:train",
                ("seed", "atmos.data", "atmos.prior"),
                _train_arguments,
                drop=("atmos.prior.checkpoint", "atmos.data.eval", "atmos.data.eval_stride"),
            ),
            "sample": Verb(
                "ensembles of every evaluation time for one method, with bicubic and conservative baselines",
                "diffinv.stages.atmos.run:sample",
                ("seed", "atmos.data", "atmos.observations", "atmos.sampling"),
                _sample_arguments,
                narrow=keep_method,
            ),
            "calibrate": Verb(
                "ensembles at the atmos.calibration times; their spread inflation and conformal "
                "intervals applied to an evaluation store",
                "diffinv.stages.atmos.run:calibrate",
                ("seed", "atmos.data", "atmos.observations", "atmos.sampling", "atmos.calibration"),
                _calibrate_arguments,
                drop=("atmos.calibration.enabled", "atmos.calibration.method"),
                narrow=keep_method,
            ),
        },
    )
)
