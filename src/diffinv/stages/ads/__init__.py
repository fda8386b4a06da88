"""ADS stage: Active Diffusion Subsampling of MRI k-space lines (Nolan et al. 2024).

Registers ``diffinv sample ads``: per slice, lines acquired during reverse diffusion by
maximum estimated entropy, against fixed masks at the same budget, on the MRI prior.
The work is in :mod:`.acquisition`.
"""

from __future__ import annotations

import argparse

from diffinv.stages import Stage, Verb, positive_int, register


def _sample_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="ingested store to reconstruct (.zarr)")
    p.add_argument("--train", required=True, help="ingested training store (for the greedy fixed mask)")
    p.add_argument("--prior", required=True, help="checkpoint folder (model.safetensors + config.json)")
    p.add_argument(
        "--acceleration", type=positive_int, required=True, help="line budget: width / acceleration lines"
    )
    p.add_argument("-o", "--output", required=True, help="output ads.zarr")


STAGE = register(
    Stage(
        "ads",
        "active k-space line selection during sampling, against fixed masks",
        {
            "sample": Verb(
                "ADS and fixed-mask baselines at one acceleration",
                "diffinv.stages.ads.acquisition:sample",
                ("seed", "mri.data.center_fraction", "mri.sampling", "ads"),
                _sample_arguments,
                drop=(
                    "mri.sampling.accelerations",
                    "mri.sampling.methods",
                    "mri.sampling.samples",
                    "mri.sampling.batch_size",
                    "mri.sampling.no_prior_iterations",
                    "mri.sampling.no_prior_cg_steps",
                    "ads.enabled",
                    "ads.accelerations",
                ),
            ),
        },
    )
)
