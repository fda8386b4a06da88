"""Fixtures of the ingest tests: the shared real sample files and small demo inputs."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def real_data() -> Path:
    """``../shared/data/real`` beside the repository; the test is skipped when it is absent."""
    path = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real").resolve()
    if not path.is_dir():
        pytest.skip("../shared/data/real not present: real-file tests need the shared sample data")
    return path
