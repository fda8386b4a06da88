"""Calibration helpers of fitted solvers (DC-Solver, S³): reference trajectories and a JSON cache."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffinv.diffusion.denoisers import Denoiser, counted, fingerprint
from diffinv.diffusion.schedule import VPSchedule
from diffinv.errors import ConfigError
from diffinv.io.store import atomic_path
from diffinv.solvers.base import sample
from diffinv.solvers.unipc import UniPC


def calibration_start(schedule: VPSchedule, like: Tensor, t_start: float, seed: int, size: int) -> Tensor:
    """Seeded starting points: ``size`` particles with the event shape, dtype and device of ``like``.

    The calibration batch does not depend on the batch being sampled, so neither do fitted
    parameters. A guided denoiser must therefore accept any batch: give guidance its
    observation with a batch axis of 1 (it broadcasts), as the MRI stage does.
    """
    g = torch.Generator().manual_seed(int(seed))
    noise = torch.randn((int(size),) + tuple(like.shape[1:]), generator=g, dtype=torch.float64)
    return (noise * float(schedule.sigma(t_start))).to(dtype=like.dtype, device=like.device)


def refine(schedule: VPSchedule, grid: Tensor, substeps: int) -> Tensor:
    """``grid`` with ``substeps`` λ-uniform sub-steps per interval (the coarse nodes are kept)."""
    lam = schedule.lam(grid)
    u = torch.linspace(0.0, 1.0, substeps + 1, dtype=torch.float64)[:-1]
    fine = (lam[:-1, None] + (lam[1:] - lam[:-1])[:, None] * u[None]).reshape(-1)
    return torch.cat([schedule.t_of_lambda(fine), grid[-1:].to(torch.float64)])


def reference_trajectory(D: Denoiser, x: Tensor, grid: Tensor, substeps: int) -> list[Tensor]:
    """Third-order UniPC with ``substeps`` sub-steps per interval: the solution at every node of ``grid``."""
    points = [x]
    fine = refine(D.schedule, grid, substeps)

    def keep(info: Any) -> None:
        if (info.index + 1) % substeps == 0:
            points.append(info.x)

    sample(UniPC(D.schedule, order=3), D, x, fine, callback=keep)
    return points


def planned_grid(times: list[float] | None, grid: Tensor, owner: str) -> Tensor:
    """The grid a fitted plan integrates on: its ``times`` (as many as ``grid`` has), or ``grid`` itself."""
    if times is None:
        return grid
    if len(times) != len(grid):
        raise ConfigError(f"{owner}: 'times' needs {len(grid)} entries")
    return torch.as_tensor(times, dtype=torch.float64)


def config_key(**fields: Any) -> str:
    """A stable key of a calibration configuration (SHA-1 of its sorted JSON)."""
    return hashlib.sha1(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


class CalibrationCache:
    """Fitted parameters keyed by configuration in one JSON file (``None``: in memory only).

    A configuration includes the content hash of the denoiser (prior and observation model,
    :func:`~diffinv.diffusion.denoisers.fingerprint`). Fits of a denoiser without one are
    kept in memory only, for that object alone.
    """

    def __init__(self, path: str | None) -> None:
        self.path = None if path is None else Path(path)
        self.memory: dict[str, Any] = {}
        self.anonymous: dict[int, Denoiser] = {}  # denoisers keyed by identity, held so ids stay unique

    def _load(self) -> dict[str, Any]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            return json.loads(self.path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{self.path}: calibration cache is not valid JSON ({exc}) (fix: delete it)"
            ) from exc

    def get(self, key: str, persist: bool = True) -> Any | None:
        """The entry stored under ``key`` (in the file too if ``persist``), or ``None``."""
        if key in self.memory:
            return self.memory[key]
        return self._load().get(key) if persist else None

    def get_or_fit(
        self,
        fit: Callable[[], Any],
        solver: str,
        grid: Tensor,
        like: Tensor,
        denoiser: Denoiser,
        **fields: Any,
    ) -> Any:
        """The entry of this configuration (solver name, grid, particle shape of ``like``, the
        content hash of ``denoiser`` and ``fields``), made by ``fit()`` and stored when missing."""
        content = fingerprint(denoiser)
        persist = content is not None
        if content is None:  # no content hash: this object's own fits, in memory only
            subject = counted(denoiser)
            self.anonymous[id(subject)] = subject
            content = f"object {id(subject)}"
        key = config_key(
            solver=solver,
            grid=[round(float(t), 10) for t in grid],
            shape=list(like.shape[1:]),
            denoiser=content,
            **fields,
        )
        found = self.get(key, persist)
        if found is None:
            found = fit()
            self.put(key, found, persist)
        return found

    def put(self, key: str, value: Any, persist: bool = True) -> None:
        """Store ``value`` under ``key`` (and in the file, rewritten atomically, if ``persist``)."""
        self.memory[key] = value
        if self.path is None or not persist:
            return
        data = self._load()
        data[key] = value
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
