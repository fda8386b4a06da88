"""MRI stage: posterior sampling of Cartesian (multi-coil) MRI slices from fastMRI k-space.

Registers ``diffinv train mri`` (the 2D prior on fully sampled slices),
``diffinv sample mri`` (posterior samples, baselines and diagnostics per acceleration
and method) and ``diffinv calibrate mri`` (split conformal calibration of the intervals
on held-out slices, :mod:`diffinv.calibration`). The work is in :mod:`.cases` (data,
operator, baselines) and :mod:`.run`.
"""

from __future__ import annotations

import argparse
from typing import Any

from diffinv.stages import Stage, Verb, positive_int, register


def _train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="ingested training store (.zarr) with fully sampled slices")
    p.add_argument("-o", "--output", required=True, help="checkpoint folder to write")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _sample_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="ingested store to reconstruct (.zarr)")
    p.add_argument(
        "--train-data",
        required=True,
        help="ingested training store (.zarr): the CS baseline's lambda is chosen on its slices",
    )
    p.add_argument("--prior", required=True, help="checkpoint folder (model.safetensors + config.json)")
    p.add_argument("--acceleration", type=positive_int, required=True, help="undersampling factor R (R >= 1)")
    p.add_argument("--method", required=True, help="SOLVER-GUIDANCE[-SEARCH], one of mri.sampling.methods")
    p.add_argument("-o", "--output", required=True, help="output posterior.zarr")
    p.add_argument(
        "--cases",
        nargs="+",
        type=int,
        metavar="START STOP [STEP]",
        help="sample the store's slices range(START, STOP, STEP) instead of mri.data.cases (calibration "
        "slices: refused where they share a slice with the evaluation slices)",
    )


def _calibrate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calibration", required=True, help="posterior.zarr of the calibration slices")
    p.add_argument("--evaluation", required=True, help="posterior.zarr of the evaluation slices")
    p.add_argument("-o", "--output", required=True, help="output store of raw and calibrated bounds")
    p.add_argument("--table", required=True, help="output CSV: coverage curve, raw against calibrated")
    p.add_argument("--figure", help="output PNG: coverage curve, rank histogram, error against std")


def keep_method(cfg: dict[str, Any], method: str) -> None:
    """Keep only ``method`` in ``cfg['mri']['sampling']['methods']`` (a sampling job runs one)."""
    from diffinv.config import method_name

    sampling = cfg["mri"]["sampling"]
    sampling["methods"] = [m for m in sampling["methods"] if method_name(m) == method]


STAGE = register(
    Stage(
        "mri",
        "Cartesian MRI reconstruction from undersampled k-space (single- and multi-coil)",
        {
            "train": Verb(
                "train the 2D image prior on the fully sampled slices of a store",
                "diffinv.stages.mri.run:train",
                ("seed", "mri.data.center_fraction", "mri.prior"),
                _train_arguments,
                drop=("mri.prior.checkpoint",),
            ),
            "sample": Verb(
                "posterior samples, baselines and diagnostics at one acceleration with one method",
                "diffinv.stages.mri.run:sample",
                ("seed", "mri.data.center_fraction", "mri.data.cases", "mri.sampling"),
                _sample_arguments,
                drop=("mri.sampling.accelerations",),
                narrow=keep_method,
            ),
            "calibrate": Verb(
                "split conformal calibration of the posterior intervals on held-out slices",
                "diffinv.stages.mri.run:calibrate",
                ("mri.calibration",),
                _calibrate_arguments,
                drop=("mri.calibration.enabled", "mri.calibration.method", "mri.calibration.cases"),
            ),
        },
    )
)
