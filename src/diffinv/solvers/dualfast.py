"""DualFast: an approximation-error reduction term added to any base solver at no extra NFE."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from diffinv.diffusion.denoisers import Denoiser
from diffinv.diffusion.schedule import VPSchedule
from diffinv.solvers.base import FunctionDenoiser, State, WrappedSolver


class DualFast(WrappedSolver):
    """DualFast: D̃ = D + c_t (D − D_ref), c_t = c (t − t_min)/(t_max − t_min).

    D_ref is the first (noisiest) prediction.
    Yu et al. 2025 (arXiv 2506.13058), §4: the network's approximation error is smaller at
    high noise, so the prediction is pushed away from the high-noise prediction by a
    strength that decays to 0 at the end. The exact update was not retrieved (samplers.md
    marks it unverified); this is our reading of §4. ``coefficient=0`` is the base solver.
    Measured (``benchmarks/solvers_convergence.py``, c = 0.2): the term does not vanish as
    NFE grows, so the error to the ODE solution plateaus (RMSE about 0.1 on the GMM prior and
    0.35 on the demo MRI prior, whose first x0 prediction is clipped noise). Check against
    the paper before relying on it.
    """

    cite = "Yu et al. 2025, DualFast §4 (update as read here, unverified)"
    prefix = "df_"

    def __init__(
        self,
        schedule: VPSchedule,
        base: str = "dpmpp_2m",
        base_options: dict[str, Any] | None = None,
        coefficient: float = 0.2,
    ) -> None:
        super().__init__(schedule, base, base_options)
        self.coefficient = float(coefficient)

    def wrap(self, D: Denoiser, own: State, s: Tensor) -> tuple[Denoiser, State]:
        sch = self.schedule
        own = dict(own)

        def reduced(x: Tensor, t: Tensor) -> Tensor:
            d = D(x, t)
            if "df_ref" not in own:
                own["df_ref"] = d
            c = self.coefficient * (float(t.reshape(-1)[0]) - sch.t_min) / (sch.t_max - sch.t_min)
            return d + c * (d - own["df_ref"])

        return FunctionDenoiser(sch, reduced), own
