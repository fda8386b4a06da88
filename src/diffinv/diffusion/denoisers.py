"""Denoisers ``D(x, t) -> E[x0 | x_t]``: the one interface every solver sees.

Implementations: :class:`GaussianMixtureDenoiser` (exact, closed form, for tests and
benchmarks) and :class:`NetworkDenoiser` (a network predicting ε, x0 or v, converted to x0).
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from diffinv.diffusion.schedule import VPSchedule

Prediction = Literal["epsilon", "x0", "v"]


@runtime_checkable
class Denoiser(Protocol):
    """``D(x, t)``: posterior mean of x0 given x_t, for ``t`` of shape (batch,)."""

    schedule: VPSchedule

    def __call__(self, x: Tensor, t: Tensor) -> Tensor: ...


def content_hash(obj: object) -> str:
    """SHA-256 of ``obj``'s content: tensors by dtype, shape and bytes, numbers, strings and ``None``
    by value, sequences and mappings by their items, objects with ``fingerprint()`` by it, other
    non-callable objects by class and attributes. Raises TypeError on anything else (a function, a
    module without ``fingerprint()``), where equal content cannot be told apart from equal identity.
    """
    h = hashlib.sha256()
    _feed(h, obj, 0)
    return h.hexdigest()


def _feed(h: Any, obj: object, depth: int) -> None:
    if depth > 16:
        raise TypeError("content_hash: nested too deeply (a cycle?)")
    if obj is None or isinstance(obj, (bool, int, float, complex, str)):
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
    elif isinstance(obj, Tensor):
        t = obj.detach().cpu().resolve_conj().resolve_neg().contiguous()
        h.update(f"tensor:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif callable(getattr(obj, "fingerprint", None)):
        value = obj.fingerprint()  # type: ignore[attr-defined]
        if value is None:
            raise TypeError(f"content_hash: {type(obj).__name__} has no fingerprint")
        h.update(f"fingerprint:{value};".encode())
    elif isinstance(obj, (list, tuple)):
        h.update(f"sequence:{len(obj)};".encode())
        for item in obj:
            _feed(h, item, depth + 1)
    elif isinstance(obj, dict):
        h.update(f"mapping:{len(obj)};".encode())
        for key in sorted(obj, key=str):
            _feed(h, str(key), depth + 1)
            _feed(h, obj[key], depth + 1)
    elif hasattr(obj, "__dict__") and not callable(obj):
        h.update(f"object:{type(obj).__module__}.{type(obj).__qualname__};".encode())
        _feed(h, vars(obj), depth + 1)
    else:
        raise TypeError(f"content_hash: cannot hash a {type(obj).__name__}")


COUNTS = ("nfe", "rows")  # what counting wrappers (solvers, searches, stages) name their count


def counted(D: Denoiser) -> Denoiser:
    """``D`` seen through counting wrappers (a ``denoiser`` and a count in :data:`COUNTS`: same values)."""
    while hasattr(D, "denoiser") and any(hasattr(D, c) for c in COUNTS):
        D = D.denoiser
    return D


def fingerprint(D: Denoiser) -> str | None:
    """Content hash of the function ``D`` computes, through counting wrappers; ``None`` when unknown.

    A denoiser states its own by a ``fingerprint()`` method (priors: their parameters; guided
    denoisers: the observation model and the prior); an arbitrary function has none.
    """
    own = getattr(counted(D), "fingerprint", None)
    return own() if callable(own) else None


def wrapped(D: Denoiser) -> Denoiser | None:
    """The denoiser inside ``D`` if ``D`` is a wrapper :func:`rewrap` can rebuild, else ``None``.

    A wrapper exposes ``denoiser`` and either ``rewrap(inner)`` (e.g. a search's evaluation counter)
    or ``guidance`` (guided denoisers, as guidance plug-ins return them).
    """
    inner = getattr(D, "denoiser", None)
    if inner is None or not (callable(getattr(D, "rewrap", None)) or callable(getattr(D, "guidance", None))):
        return None
    return inner


def rewrap(D: Denoiser, inner: Denoiser) -> Denoiser:
    """The wrapper ``D`` (see :func:`wrapped`) rebuilt around ``inner``: by its ``rewrap`` or ``guidance``."""
    own = getattr(D, "rewrap", None)
    return own(inner) if callable(own) else D.guidance(inner)  # type: ignore[attr-defined]


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

    def fingerprint(self) -> str:
        """Content hash of the mixture: schedule, weights, means and covariances."""
        params = (self.schedule, self.log_weights, self.means, self.eigvals, self.eigvecs)
        return content_hash(("GaussianMixtureDenoiser", params))

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
        self._fingerprint: str | None = None
        self.autocast: torch.dtype | None = None  # network calls under autocast to this dtype (stages.core)

    def fingerprint(self) -> str:
        """SHA-256 of the weights (``state_dict`` in key order), prediction, clip and schedule.

        Computed once: the weights are taken as frozen after the first call.
        """
        if self._fingerprint is None:
            weights = sorted(self.net.state_dict().items())
            self._fingerprint = content_hash(
                ("NetworkDenoiser", weights, self.prediction, self.clip, self.schedule)
            )
        return self._fingerprint

    def raw(self, x: Tensor, t: Tensor) -> Tensor:
        """The network's own output at (x, t)."""
        t = torch.as_tensor(t, dtype=torch.float64, device=x.device).expand(x.shape[0])
        with torch.autocast(
            x.device.type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None
        ):
            out = self.net(x, (1000.0 * t).to(x.dtype))
        out = out.sample if hasattr(out, "sample") else out
        return out.to(x.dtype)

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
