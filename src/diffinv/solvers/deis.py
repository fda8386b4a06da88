"""DEIS: exponential integrator with a polynomial extrapolation of ε̂ (Zhang & Chen, ICLR 2023)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from diffinv.diffusion.denoisers import Denoiser
from diffinv.diffusion.schedule import VPSchedule
from diffinv.errors import ConfigError
from diffinv.solvers.base import PerSampleNoise, Solver, State, denoise, history, push_history

BASES = ("t", "rho", "logrho")
_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(32)


class DEIS(Solver):
    """DEIS multistep (tAB / ρAB / log-ρ AB) of order 1–3 in noise prediction.

    Eq. 15 of Zhang & Chen (2023): x_t = (α_t/α_s) x_s + Σ_j C_j ε̂_j with
    C_j = α_t ∫ L_j(u) dρ over the step, ρ = σ/α, and L_j the Lagrange basis through the
    last ``order`` evaluation points in the variable u: ``t`` (tAB, the paper's default),
    ``rho`` (ρAB) or ``logrho`` (diffusers' DEISMultistepScheduler). The integrals use
    32-point Gauss–Legendre quadrature in λ (dρ = −e^{−λ} dλ). Order 1 is DDIM.

    Measured on the demo MRI prior at 10 steps of a logSNR grid: tAB-3 diverges (RMSE 1.15
    to the reference; tAB-2 0.063), while log-ρ AB-3 gives 0.049, the best of the three
    bases. The t-polynomial extrapolates ε̂ across steps whose t-lengths differ by orders of
    magnitude there; prefer ``basis: logrho`` on logSNR grids at few steps.
    """

    cite = "Zhang & Chen 2023, DEIS Eq. 15 (tAB)"

    def __init__(self, schedule: VPSchedule, order: int = 3, basis: str = "t") -> None:
        super().__init__(schedule)
        if order not in (1, 2, 3):
            raise ConfigError(f"deis order: must be 1, 2 or 3, got {order!r}")
        if basis not in BASES:
            raise ConfigError(f"deis basis: unknown {basis!r} (fix: use one of {', '.join(BASES)})")
        self.order = int(order)
        self.basis = basis

    def _variable(self, lam: Tensor) -> Tensor:
        """The interpolation variable u(λ)."""
        if self.basis == "t":
            return self.schedule.t_of_lambda(lam)
        return torch.exp(-lam) if self.basis == "rho" else -lam

    def coefficients_ab(self, lams: tuple[float, ...], lam_t: float) -> list[float]:
        """∫_{λ_s}^{λ_t} L_j(u(λ)) (−e^{−λ}) dλ for the newest-first nodes ``lams``.

        λ_s = lams[0]; memoised.
        """
        memo = self.__dict__.setdefault("_ab_memo", {})
        if (lams, lam_t) not in memo:
            memo[lams, lam_t] = self._integrate_basis(lams, lam_t)
        return memo[lams, lam_t]

    def _integrate_basis(self, lams: tuple[float, ...], lam_t: float) -> list[float]:
        lam_s = lams[0]
        half = (lam_t - lam_s) / 2
        lam_q = torch.as_tensor(lam_s + half * (_NODES + 1), dtype=torch.float64)
        jac = -torch.exp(-lam_q) * torch.as_tensor(_WEIGHTS) * half
        u_q = self._variable(lam_q)
        u_n = self._variable(torch.as_tensor(lams, dtype=torch.float64))
        out = []
        for j in range(len(lams)):
            basis = torch.ones_like(u_q)
            for k in range(len(lams)):
                if k != j:
                    basis = basis * (u_q - u_n[k]) / (u_n[j] - u_n[k])
            out.append(float((basis * jac).sum()))
        return out

    def step(
        self, D: Denoiser, x: Tensor, state: State, s: Tensor, t: Tensor, noise: PerSampleNoise | None = None
    ) -> tuple[Tensor, State]:
        a_s, sig_s, a_t, _, _ = self.coefficients(s, t)
        x0 = denoise(D, x, s)
        eps = (x - a_s * x0) / sig_s
        new = push_history(state, {"eps": eps, "lam": (self.lam(s),)}, self.order)
        coef = self.coefficients_ab(new["lam"], self.lam(t))
        x_next = (a_t / a_s) * x
        for c, e in zip(coef, history(new, "eps")):
            x_next = x_next + a_t * c * e
        new["x0"] = x0
        return x_next, new
