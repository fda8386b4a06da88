"""3D compressed-sensing MRI stage: volumes of fastMRI-layout stores with the MRI stage's 2D prior.

Registers ``diffinv sample mri3d``: the consecutive slices of each file of an ingested MRI store
form a volume; its 3D k-space is undersampled on a variable-density (kz, k_phase) mask
(:mod:`diffinv.operators.mri3d`: undersampling along two axes, every readout line kept) and
reconstructed with the prior of ``diffinv train mri`` on every axial slice
(:class:`~diffinv.stages.slices.SliceDenoiser`), by any method of ``mri3d.sampling.methods``:
``admm_tv`` couples the slices along z (DiffusionMBIR / DDS-3D), ``dds`` samples them one by one.
Zero-filled and 3D TV baselines share the mask. Data: :mod:`.volumes`; verb: :mod:`.run`;
metrics: :mod:`.evaluate`. There is no training verb: the 2D prior is the MRI stage's.
"""

from __future__ import annotations

import argparse
from typing import Any

from diffinv.stages import Stage, Verb, positive_int, register


def _sample_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="ingested fastMRI store with fully sampled volumes (.zarr)")
    p.add_argument(
        "--train-data",
        help="ingested training store: the TV baseline's lambda is chosen on its first volume "
        "(needed when mri3d.baselines.tv.lambdas holds several)",
    )
    p.add_argument("--prior", required=True, help="checkpoint folder written by 'diffinv train mri'")
    p.add_argument(
        "--acceleration", type=positive_int, required=True, help="undersampling factor R of the 3D k-space"
    )
    p.add_argument("--method", required=True, help="one of mri3d.sampling.methods (its name)")
    p.add_argument("-o", "--output", required=True, help="output posterior.zarr")


def keep_method(cfg: dict[str, Any], method: str) -> None:
    """Keep only the method named ``method`` in ``cfg['mri3d']['sampling']['methods']``."""
    sampling = cfg["mri3d"]["sampling"]
    sampling["methods"] = [m for m in sampling["methods"] if m["name"] == method]


STAGE = register(
    Stage(
        "mri3d",
        "3D compressed-sensing MRI (undersampled along kz and k_phase) with the MRI stage's 2D slice prior",
        {
            "sample": Verb(
                "posterior samples of every volume at one acceleration with one method, zero-filled and TV",
                "diffinv.stages.mri3d.run:sample",
                ("seed", "mri.data.center_fraction", "mri3d.data", "mri3d.sampling", "mri3d.baselines"),
                _sample_arguments,
                drop=("mri3d.sampling.accelerations",),
                narrow=keep_method,
            ),
        },
    )
)
