"""Gaussian-score likelihood summed over observation modalities (SDA style)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from diffinv.diffusion.denoisers import Denoiser
from diffinv.errors import ConfigError
from diffinv.guidance.base import Guidance, score_guided
from diffinv.operators.base import LinearOperator, inner


@dataclass
class LikelihoodTerm:
    """One observation modality: y = A x + n with per-component std ``noise_std``, weighted by ``weight``."""

    operator: LinearOperator
    y: Tensor
    noise_std: float
    weight: float = 1.0


class GaussianScore(Guidance):
    """Σ_m w_m log N(y_m; A_m x̂0, (σ_m² + γ σ_t²/α_t²) I), differentiated through the denoiser.

    Rozet & Louppe 2023 (SDA), sda/score.py ``GaussianScore``: var = σ_y² + γ(σ_t/α_t)²
    with γ = 1e-2. Several modalities (e.g. a coarse field and station soundings) add
    their log-likelihoods. The first term is (operator, y, ``noise_std`` or
    operator.noise_std, ``weight``); ``terms`` adds more :class:`LikelihoodTerm` s (or
    (operator, y, noise_std, weight) tuples).
    """

    cite = "Rozet & Louppe 2023, SDA GaussianScore"
    needs_grad = True

    def __init__(
        self,
        operator: LinearOperator,
        y: Tensor,
        noise_std: float | None = None,
        weight: float = 1.0,
        gamma: float = 1e-2,
        terms: Sequence[LikelihoodTerm | tuple] = (),
    ) -> None:
        super().__init__(operator, y)
        first = LikelihoodTerm(
            operator, y, operator.noise_std if noise_std is None else float(noise_std), float(weight)
        )
        self.terms = [first] + [t if isinstance(t, LikelihoodTerm) else LikelihoodTerm(*t) for t in terms]
        if gamma < 0 or any(t.noise_std < 0 or t.weight < 0 for t in self.terms):
            raise ConfigError("guidance gaussian_score: gamma, noise_std and weight must be >= 0")
        if gamma == 0 and any(t.noise_std == 0 for t in self.terms):
            raise ConfigError(
                "guidance gaussian_score: a noiseless term needs gamma > 0 (the variance would be 0)"
            )
        self.gamma = float(gamma)

    def conditional(self, D: Denoiser, x: Tensor, t: Tensor) -> Tensor:
        return score_guided(D, x, t, lambda x0, tt: self.loglik(D, x0, tt))

    def loglik(self, D: Denoiser, x0: Tensor, t: Tensor) -> Tensor:
        """Σ_m −w_m ‖y_m − A_m x̂0‖² / (2 var_m(t)), one value per particle."""
        sch = D.schedule
        inflation = (self.gamma * (sch.sigma(t) / sch.alpha(t)) ** 2).to(
            device=x0.device, dtype=x0.real.dtype
        )
        total = torch.zeros(x0.shape[0], dtype=x0.real.dtype, device=x0.device)
        for term in self.terms:
            r = term.y - term.operator.A(x0)
            total = total - term.weight * inner(r, r) / (2 * (term.noise_std**2 + inflation))
        return total
