"""Time-stepping plug-ins: a ``step`` kernel over any denoiser, and the generic loop."""

from diffinv.solvers.base import (
    CountingDenoiser,
    PerSampleNoise,
    Solver,
    StepInfo,
    make_solver,
    sample,
    select_state,
)

__all__ = [
    "CountingDenoiser",
    "PerSampleNoise",
    "Solver",
    "StepInfo",
    "make_solver",
    "sample",
    "select_state",
]
