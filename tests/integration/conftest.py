"""Session-wide fixtures of the integration tests."""

import shutil

import pytest


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """Working directory where the demo DAG ran on tests/integration/tiny.yaml (once a session)."""
    from tests.integration.test_demo_dag import ROOT, snakemake

    workdir = tmp_path_factory.mktemp("dag")
    shutil.copytree(ROOT / "config", workdir / "config")
    result = snakemake(workdir)
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir
