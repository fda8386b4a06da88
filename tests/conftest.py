"""Shared fixtures: thread count, seeded generators, paths to shared real data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


@pytest.fixture(scope="session")
def real_data_root() -> Path:
    path = (ROOT / ".." / "shared" / "data" / "real").resolve()
    if not path.is_dir():
        pytest.skip("../shared/data/real not present: real-file tests need the shared sample data")
    return path
