"""Diffusion with forward models (Tewari et al. 2023): sample signals only ever observed through an operator.

Registers ``diffinv train fwd`` (a network whose output is the signal, trained with the loss in
observation space on the sinograms of the training volumes; the store's ``truth`` is never
opened) and ``diffinv sample fwd`` (posterior slices of the evaluation volumes from a context of
sparse views, with any solver plug-in over the rendered denoiser, and the FBP of the same views).
Observations: :mod:`.data`; model and loss: :mod:`.model`; verbs: :mod:`.run`; metrics against
the truth of demo data: :mod:`.evaluate` (never imported by training).
"""

from __future__ import annotations

import argparse

from diffinv.stages import Stage, Verb, register
from diffinv.stages.ct3d import train_arguments


def _sample_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="ingested CT projection store (diffinv ingest ct)")
    p.add_argument("--model", required=True, help="checkpoint folder written by 'diffinv train fwd'")
    p.add_argument("-o", "--output", required=True, help="output posterior.zarr")


STAGE = register(
    Stage(
        "fwd",
        "diffusion with forward models on CT: signals sampled from sparse views, trained on projections only",
        {
            "train": Verb(
                "train the signal network on the training volumes' sinograms (observation-space loss)",
                "diffinv.stages.fwd.run:train",
                ("seed", "fwd.data", "fwd.network", "fwd.schedule", "fwd.train"),
                train_arguments,
                drop=("fwd.data.eval_volumes", "fwd.data.reference"),
            ),
            "sample": Verb(
                "posterior slices of the evaluation volumes from the context views, with their FBP",
                "diffinv.stages.fwd.run:sample",
                ("seed", "fwd.data", "fwd.sampling"),
                _sample_arguments,
            ),
        },
    )
)
