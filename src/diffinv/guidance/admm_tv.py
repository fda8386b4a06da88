"""z-coupled ADMM-TV data consistency on x0_hat (DiffusionMBIR's slice coupling, DDS-style)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from diffinv.diffusion.denoisers import Denoiser, content_hash
from diffinv.errors import OptionRangeError, check_range
from diffinv.guidance.base import Guidance
from diffinv.operators.base import LinearOperator
from diffinv.operators.tv import FiniteDifference, admm_tv_step, soft_threshold


class ADMMTV(Guidance):
    """ADMM-TV: x0_hat ← ``admm_iters`` ADMM steps on ½‖A x − y‖² + λ‖D x‖₁ along ``dims``, v and u carried.

    DiffusionMBIR (Chung et al., CVPR 2023, Eq. 11–14) couples the slices of a volume sampled with
    a 2D prior by one ADMM iteration per diffusion step, with v = D_z x and the scaled dual u
    persisting across steps; DDS (Chung, Lee & Ye, ICLR 2024, Sec. 4, 3D) runs the x-update as a
    few CG steps started at the denoised estimate x0_hat. This plug-in does the latter: each call
    runs ``cg_steps`` of CG on (AᵀA + ρDᵀD) x = Aᵀy + ρDᵀ(v − u) from x0_hat (later ADMM
    iterations of the same call continue from the last x), then updates v and u.

    ``dims`` are the particle dimensions to difference (batch = 0; default (1,), the slice axis z
    of (n, Z, H, W), or the coordinate axis of plain vectors). The state (v, u) starts fresh,
    v = D x0_hat and u = 0, whenever the particles' shape, dtype or device changes or t rises
    (a new sampling run). ``lam`` = 0 has no TV term, hence no split: the update is then exactly
    DDS with the same ``cg_steps``, slice-by-slice sampling without z-coupling. Defaults
    λ = 0.04, ρ = 10 are DiffusionMBIR's (images in [0, 1], ½‖Ax − y‖² data term); λ scales with
    ‖A‖², so pick it per operator, e.g. by :func:`~diffinv.operators.tv.select_tv_lambda`.
    ``clip`` re-applies a value constraint to the returned estimate, as in DDS.

    ``carry_split`` = False re-forms the split variable from each later call's estimate,
    v = soft(D x0_hat + u, λ/ρ) (the v-update moved before the x-update), and carries only u (a
    fresh state starts from v = D x0_hat, u = 0 in both modes). With
    an operator that has a large null space (3D Cartesian MRI), the carried v otherwise holds the
    differences of the first, pure-noise x0_hat for the whole run: there the x-update has nothing
    but ρ‖D x − (v − u)‖² to follow, and |u| ≤ λ/ρ is too small to undo it.
    """

    cite = "Chung et al. 2023, DiffusionMBIR Eq. 11-14; Chung, Lee & Ye 2024, DDS Sec. 4"

    def __init__(
        self,
        operator: LinearOperator,
        y: Tensor,
        lam: float = 0.04,
        rho: float = 10.0,
        cg_steps: int = 5,
        admm_iters: int = 1,
        dims: Sequence[int] = (1,),
        clip: float | None = None,
        carry_split: bool = True,
    ) -> None:
        super().__init__(operator, y)
        check_range("admm_tv", "lam", lam, 0.0)
        if not rho > 0:
            raise OptionRangeError(
                f"admm_tv: rho must be > 0, got {rho!r} (fix: give a positive value, e.g. 10)"
            )
        check_range("admm_tv", "cg_steps", cg_steps, 1)
        check_range("admm_tv", "admm_iters", admm_iters, 1)
        if not dims or min(dims) < 1 or len(set(dims)) != len(dims):
            raise OptionRangeError(
                f"admm_tv: dims must be distinct particle dimensions >= 1, got {dims!r} (fix: e.g. [1])"
            )
        self.lam = float(lam)
        self.rho = float(rho)
        self.cg_steps = int(cg_steps)
        self.admm_iters = int(admm_iters)
        self.dims = tuple(int(d) for d in dims)
        self.clip = clip
        self.carry_split = bool(carry_split)
        self._state: _State | None = None

    def fingerprint(self) -> str | None:
        """Content hash of the observation model and options (the carried ADMM state excluded)."""
        try:
            own = {k: v for k, v in vars(self).items() if k != "_state"}
            return content_hash((type(self).__module__, type(self).__qualname__, own))
        except TypeError:
            return None

    def conditional(self, D: Denoiser, x: Tensor, t: Tensor) -> Tensor:
        x0 = D(x, t)
        if self.lam == 0:
            out = self.operator.solve_normal(self.y, x0, steps=self.cg_steps)
        else:
            out = self._admm(x0, float(t.max()))
        return out.clamp(-self.clip, self.clip) if self.clip is not None else out

    def _admm(self, x0: Tensor, t: float) -> Tensor:
        """``admm_iters`` ADMM iterations from x0 with the carried (v, u), which are then stored."""
        diff = FiniteDifference(self.dims)
        key = (tuple(x0.shape), x0.dtype, x0.device)
        s = self._state
        if s is None or s.key != key or t > s.t:
            dx0 = diff.A(x0)
            s = _State(key, t, dx0, torch.zeros_like(dx0), self.operator.A_adjoint(self.y))
        elif not self.carry_split:
            s = replace(s, v=soft_threshold(diff.A(x0) + s.u, self.lam / self.rho))
        x, v, u = x0, s.v, s.u
        for _ in range(self.admm_iters):
            x, v, u = admm_tv_step(self.operator, diff, s.aty, x, v, u, self.lam, self.rho, self.cg_steps)
        self._state = _State(key, t, v, u, s.aty)
        return x


@dataclass(frozen=True)
class _State:
    """ADMM state carried between calls: the particles' (shape, dtype, device), last t, v, u and Aᵀy."""

    key: tuple[object, ...]
    t: float
    v: Tensor
    u: Tensor
    aty: Tensor
