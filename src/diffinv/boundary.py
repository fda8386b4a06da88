"""Optimal boundary conditions for deterministic diffusion samplers (Ma, Zhao, Lu, Zhou & Zhu, ICLR 2024).

A deterministic (ODE) sampler is a map from its start noise x_T to a reconstruction. The
paper (§3.2–3.3) shows that one x_T shared across inputs can be approximately optimal: draw
K candidate noises, score each by the reconstruction error over a small reference set of
(observation, truth) pairs, and reuse the best one for every new input. Here a candidate is
a standard-normal draw ε (the sampler applies its own start scaling, σ_{t_max} ε for VP
samplers), scored by ``reconstruct(ε_batch, reference_index)``; the selection is stored as
safetensors (the noise and the score table) beside a JSON record.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from diffinv.errors import ConfigError, InputError
from diffinv.io.store import atomic_path
from diffinv.solvers.base import PerSampleNoise, derive_seed

NOISE_FILE = "boundary.safetensors"
RECORD_FILE = "boundary.json"

METRICS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "rmse": lambda x, truth: (x - truth).pow(2).flatten(1).mean(1).sqrt(),
    "mae": lambda x, truth: (x - truth).abs().flatten(1).mean(1),
}

Reconstruct = Callable[[Tensor, int], Tensor]


@dataclass(frozen=True)
class BoundarySelection:
    """The selected start noise and the score of every candidate on every reference case.

    ``noise`` is the best candidate (event shape, no batch axis); ``scores`` is (K, R),
    candidate k on reference r; ``best`` minimises the mean over references.
    """

    noise: Tensor
    scores: np.ndarray
    best: int
    metric: str
    seed: int
    record: Mapping[str, Any] = field(default_factory=dict)

    def table(self) -> list[dict[str, Any]]:
        """One row per candidate: index, mean score, per-reference scores, selected or not."""
        return [
            {
                "candidate": k,
                f"mean_{self.metric}": float(row.mean()),
                **{f"{self.metric}_ref{r}": float(v) for r, v in enumerate(row)},
                "selected": k == self.best,
            }
            for k, row in enumerate(self.scores)
        ]


def candidate_noise(seed: int, candidates: int, shape: Sequence[int]) -> Tensor:
    """(K, *shape) standard-normal candidates; candidate k is drawn from ``derive_seed(seed, k)``,
    so it does not depend on K or on the batches they are scored in."""
    return PerSampleNoise([derive_seed(seed, k) for k in range(candidates)]).randn(tuple(shape))


def select_boundary(
    reconstruct: Reconstruct,
    truths: Sequence[Tensor],
    candidates: int,
    shape: Sequence[int],
    seed: int,
    metric: str = "rmse",
    batch_size: int = 8,
    record: Mapping[str, Any] | None = None,
) -> BoundarySelection:
    """Score ``candidates`` start noises on every reference case and keep the best (paper §3.3).

    ``reconstruct(eps, r)`` runs the deterministic sampler from each row of ``eps`` (k, *shape)
    for reference case r and returns (k, *shape); ``truths[r]`` (*shape) is its fine field.
    Costs K·R reconstructions (the selection cost, reported apart from evaluation).
    """
    if metric not in METRICS:
        raise ConfigError(f"boundary.metric: unknown {metric!r} (fix: use one of {sorted(METRICS)})")
    if candidates < 1 or not truths or batch_size < 1:
        raise ConfigError(
            f"boundary: need candidates >= 1, batch_size >= 1 and reference cases, got {candidates}, "
            f"{batch_size} and {len(truths)} (fix: give a reference set from the training period)"
        )
    noise = candidate_noise(seed, candidates, shape)
    scores = np.empty((candidates, len(truths)))
    for r, truth in enumerate(truths):
        if tuple(truth.shape) != tuple(shape):
            raise ConfigError(
                f"boundary: reference {r} has shape {tuple(truth.shape)}, the noise {tuple(shape)} "
                "(fix: give truths in the sampler's event shape)"
            )
        for k0 in range(0, candidates, batch_size):
            out = reconstruct(noise[k0 : k0 + batch_size], r)
            err = METRICS[metric](out.detach().cpu().double(), truth.cpu().double()[None])
            scores[k0 : k0 + out.shape[0], r] = err.numpy()
    best = int(np.argmin(scores.mean(1)))
    return BoundarySelection(noise[best].clone(), scores, best, metric, int(seed), dict(record or {}))


def save_boundary(folder: Path, selection: BoundarySelection) -> Path:
    """Write ``boundary.safetensors`` (noise, scores) and ``boundary.json`` (metric, seed, best,
    score table, record) into ``folder``, each atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        "noise": selection.noise.detach().cpu().contiguous(),
        "scores": torch.from_numpy(np.ascontiguousarray(selection.scores, dtype=np.float64)),
    }
    with atomic_path(folder / NOISE_FILE) as tmp:
        save_file(tensors, str(tmp))
    meta = {
        "metric": selection.metric,
        "seed": selection.seed,
        "best": selection.best,
        "candidates": int(selection.scores.shape[0]),
        "references": int(selection.scores.shape[1]),
        "scores": selection.table(),
        "record": dict(selection.record),
        "cite": "Ma, Zhao, Lu, Zhou & Zhu, ICLR 2024, §3.3",
    }
    with atomic_path(folder / RECORD_FILE) as tmp:
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    return folder


def load_boundary(folder: Path) -> BoundarySelection:
    """Read a selection written by :func:`save_boundary` (safetensors only, never unpickled)."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / RECORD_FILE).read_text())
        tensors = load_file(str(folder / NOISE_FILE))
    except FileNotFoundError as exc:
        raise InputError(exc.filename, "boundary file missing", "run the boundary selection first") from exc
    except (json.JSONDecodeError, SafetensorError) as exc:
        raise InputError(
            folder, f"boundary files unreadable ({exc})", "rerun the boundary selection"
        ) from exc
    missing = {"noise", "scores"} - set(tensors) or {"metric", "seed", "best"} - set(meta)
    if missing:
        raise InputError(folder, f"boundary files lack {sorted(missing)}", "rerun the boundary selection")
    return BoundarySelection(
        tensors["noise"],
        tensors["scores"].numpy(),
        int(meta["best"]),
        meta["metric"],
        int(meta["seed"]),
        meta.get("record", {}),
    )
