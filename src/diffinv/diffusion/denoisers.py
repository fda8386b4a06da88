"""Denoisers ``D(x, t) -> E[x0 | x_t]``: the one interface every solver sees.

Implementations: :class:`GaussianMixtureDenoiser` (exact, closed form, for tests and
benchmarks) and :class:`NetworkDenoiser` (a network predicting ε, x0 or v, converted to x0).
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from diffinv.diffusion.schedule import VPSchedule

Prediction = Literal["epsilon", "x0", "v"]


@runtime_checkable
class Denoiser(Protocol):
    """``D(x, t)``: posterior mean of x0 given x_t, for ``t`` of shape (batch,)."""

    schedule: VPSchedule

    def __call__(self, x: Tensor, t: Tensor) -> Tensor: ...


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    return v.to(like.dtype).reshape((-1,) + (1,) * (like.ndim - 1))


class GaussianMixtureDenoiser:
    """Exact denoiser of a Gaussian-mixture prior p(x0) = Σ_k w_k N(μ_k, Σ_k).

    Closed form (e.g. Cardoso et al. 2024, MCGdiff App. B): with C_k = α² Σ_k + σ² I,
    E[x0 | x_t] = Σ_k π_k(x_t) [μ_k + α Σ_k C_k⁻¹ (x_t − α μ_k)], π_k ∝ w_k N(x_t; α μ_k, C_k).
    Event dimensions of ``x`` are flattened; computations in float64.

    Parameters
    ----------
    weights : (K,) mixture weights (normalised here).
    means : (K, d) component means.
    covs : (K, d, d) covariances, (K,) isotropic variances, or ``None`` for identity.
    """

    def __init__(
        self, schedule: VPSchedule, weights: Tensor, means: Tensor, covs: Tensor | None = None
    ) -> None:
        self.schedule = schedule
        self.means = means.to(torch.float64)
        k, d = self.means.shape
        self.log_weights = torch.log(weights.to(torch.float64) / weights.sum())
        if covs is None:
            covs = torch.ones(k, dtype=torch.float64)
        covs = covs.to(torch.float64)
        if covs.ndim == 1:
            self.eigvals = covs[:, None].expand(k, d).clone()
            self.eigvecs = torch.eye(d, dtype=torch.float64).expand(k, d, d).clone()
        else:
            self.eigvals, self.eigvecs = torch.linalg.eigh(covs)
            self.eigvals = self.eigvals.clamp_min(0)
        self.dim = d

    @property
    def covs(self) -> Tensor:
        """(K, d, d) component covariances."""
        return self.eigvecs @ torch.diag_embed(self.eigvals) @ self.eigvecs.transpose(-1, -2)

    def _component_stats(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Log responsibilities (B, K) and per-component posterior means (B, K, d)."""
        xf = x.reshape(x.shape[0], -1).to(torch.float64)
        t = torch.as_tensor(t, dtype=torch.float64).expand(x.shape[0])
        a = self.schedule.alpha(t)[:, None, None]
        s2 = self.schedule.sigma(t)[:, None, None] ** 2
        c = a**2 * self.eigvals[None] + s2  # (B, K, d) eigenvalues of C_k
        r = xf[:, None, :] - a * self.means[None]  # (B, K, d)
        r_rot = torch.einsum("kdj,bkd->bkj", self.eigvecs, r)  # U^T r
        loglik = -0.5 * (r_rot**2 / c).sum(-1) - 0.5 * torch.log(c).sum(-1)
        log_resp = torch.log_softmax(self.log_weights[None] + loglik, dim=-1)
        gain = a * self.eigvals[None] / c  # α Σ C⁻¹ in the eigenbasis
        mean_k = self.means[None] + torch.einsum("kdj,bkj->bkd", self.eigvecs, gain * r_rot)
        return log_resp, mean_k

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        log_resp, mean_k = self._component_stats(x, t)
        x0 = (log_resp.exp()[..., None] * mean_k).sum(1)
        return x0.reshape(x.shape).to(x.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` exact samples from the mixture, shape (n, d), float64."""
        comp = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        scaled = torch.einsum("nij,nj->ni", self.eigvecs[comp], self.eigvals[comp].sqrt() * z)
        return self.means[comp] + scaled


class NetworkDenoiser(nn.Module):
    """Wrap a network ``net(x, 1000 t) -> out`` as a denoiser.

    ``prediction`` says what the network outputs: ``epsilon`` (x0 = (x − σ ε)/α),
    ``x0``, or ``v`` (Salimans & Ho 2022: x0 = α x − σ v). ``clip`` clamps x0 to
    [−clip, clip] (the value constraint of the data range), or ``None``.
    """

    def __init__(
        self,
        net: nn.Module,
        schedule: VPSchedule,
        prediction: Prediction = "epsilon",
        clip: float | None = None,
    ) -> None:
        super().__init__()
        if prediction not in ("epsilon", "x0", "v"):
            raise ValueError(f"prediction: unknown {prediction!r} (use epsilon, x0 or v)")
        self.net = net
        self.schedule = schedule
        self.prediction = prediction
        self.clip = clip

    def raw(self, x: Tensor, t: Tensor) -> Tensor:
        """The network's own output at (x, t)."""
        t = torch.as_tensor(t, dtype=torch.float64, device=x.device).expand(x.shape[0])
        out = self.net(x, (1000.0 * t).to(x.dtype))
        return out.sample if hasattr(out, "sample") else out

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float64, device=x.device).expand(x.shape[0])
        out = self.raw(x, t)
        a, s = _bcast(self.schedule.alpha(t), x), _bcast(self.schedule.sigma(t), x)
        if self.prediction == "epsilon":
            x0 = (x - s * out) / a
        elif self.prediction == "v":
            x0 = a * x - s * out
        else:
            x0 = out
        return x0.clamp(-self.clip, self.clip) if self.clip is not None else x0
