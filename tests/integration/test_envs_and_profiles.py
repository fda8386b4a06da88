"""Per-rule conda environments (config conda_env) and the SLURM profile's GPU rules.

Fast: dry runs and workflow parsing only; no conda environment is created (conda itself
need not be installed: the dry run gets a stand-in `conda` that answers only the queries
Snakemake makes before it would create anything, and fails on anything else).
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RULES = ROOT / "workflow/rules"
CPU_ENV = (ROOT / "envs/cpu.yaml").resolve()
CUDA_ENV = (ROOT / "envs/cuda.yaml").resolve()
pytestmark = pytest.mark.integration

FAKE_CONDA = """#!/bin/sh
case "$*" in
  "info --json") printf '{"conda_prefix": "%s", "platform": "linux-64"}\\n' "$FAKE_CONDA_PREFIX";;
  "--version") echo "conda 25.1.1";;
  "config --get channel_priority --json") echo '{"get": {"channel_priority": "strict"}}';;
  *) echo "stand-in conda: refusing '$*'" >&2; exit 1;;
esac
"""

# Rules parsed by the API in a subprocess (Snakemake sets global state): name ->
# [resolved conda env file or null, gpu resource or null].
API_SCRIPT = """
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import (
    ConfigSettings, DeploymentMethod, DeploymentSettings, OutputSettings, ResourceSettings,
)
root, workdir, config = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
with SnakemakeApi(OutputSettings()) as api:
    wf = api.workflow(
        resource_settings=ResourceSettings(cores=1),
        config_settings=ConfigSettings(
            configfiles=[root / "tests/integration/tiny.yaml"], config=config
        ),
        deployment_settings=DeploymentSettings(deployment_method={DeploymentMethod.CONDA}),
        snakefile=root / "Snakefile",
        workdir=workdir,
    )
    out = {}
    for rule in wf._workflow.rules:
        env = rule.conda_env
        if env is not None:
            env = str((Path(rule.basedir.get_path_or_uri(secret_free=True)) / env).resolve())
        gpu = rule.resources.get("gpu")
        out[rule.name] = [env, getattr(gpu, "value", gpu)]
print("RULES=" + json.dumps(out))
"""


def gpu_rules_in_sources() -> set[str]:
    """Rules whose `resources:` declare gpu=GPU (1 on a GPU run), read from workflow/rules/*.smk."""
    found = set()
    for smk in sorted(RULES.glob("*.smk")):
        for block in re.split(r"(?m)^(?=rule \w+:)", smk.read_text()):
            name = re.match(r"rule (\w+):", block)
            if name and re.search(r"(?m)^\s+gpu\s*=\s*GPU\s*,?\s*$", block):
                found.add(name.group(1))
    return found


def test_gpu_rules_are_found():
    assert {
        "train_prior_mri",
        "sample_mri",
        "ads_mri",
        "train_prior_ct3d",
        "sample_ct3d",
    } <= gpu_rules_in_sources()


@pytest.fixture
def workdir(tmp_path):
    shutil.copytree(ROOT / "config", tmp_path / "config")
    return tmp_path


def parsed_rules(workdir: Path, config: dict) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", API_SCRIPT, str(ROOT), str(workdir), json.dumps(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("RULES="))
    return json.loads(line.removeprefix("RULES="))


@pytest.mark.parametrize("conda_env", [None, "cpu", "cuda"])
def test_conda_env_switch_selects_the_gpu_rules_environment(workdir, conda_env):
    config = {"device": "cuda", **({} if conda_env is None else {"conda_env": conda_env})}
    rules = parsed_rules(workdir, config)
    gpu_env = CUDA_ENV if conda_env == "cuda" else CPU_ENV
    gpu_rules = gpu_rules_in_sources()
    assert {name for name, (_, gpu) in rules.items() if gpu == 1} == gpu_rules
    for name, (env, _) in rules.items():
        if name == "all":
            assert env is None
            continue
        want = gpu_env if name in gpu_rules else CPU_ENV
        assert env == str(want), (name, env)


def test_cpu_runs_hold_no_gpu_so_jobs_run_side_by_side(workdir):
    """On device cpu no job holds the profile's single `gpu`, so --cores N runs N jobs at once."""
    rules = parsed_rules(workdir, {"device": "cpu"})
    assert all(gpu in (None, 0) for _, gpu in rules.values()), rules


def dry_run_sdm_conda(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    fake = workdir / "fakebin"
    fake.mkdir()
    (fake / "conda").write_text(FAKE_CONDA)
    (fake / "conda").chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{fake}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}",
        "FAKE_CONDA_PREFIX": str(workdir / "no-conda"),
    }
    cmd = [
        str(BIN / "snakemake"),
        "-s",
        str(ROOT / "Snakefile"),
        "-d",
        str(workdir),
        "--cores",
        "2",
        "-n",
        "--sdm",
        "conda",
        "--configfile",
        str(ROOT / "tests/integration/tiny.yaml"),
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("conda_env", ["cpu", "cuda"])
def test_dry_run_with_sdm_conda_resolves_the_environment_files(workdir, conda_env):
    result = dry_run_sdm_conda(workdir, "--config", f"conda_env={conda_env}")
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    resolved = {Path(m).resolve() for m in re.findall(r"Conda environment (\S+) will be created", log)}
    assert resolved == ({CPU_ENV, CUDA_ENV} if conda_env == "cuda" else {CPU_ENV}), log[-4000:]
    envs = workdir / ".snakemake/conda"
    assert not envs.exists() or not any(envs.iterdir()), "a dry run created an environment"


def test_conda_env_is_validated(workdir):
    result = dry_run_sdm_conda(workdir, "--config", "conda_env=rocm")
    assert result.returncode != 0 and "conda_env" in result.stdout + result.stderr


def test_slurm_profile_sends_every_gpu_rule_to_the_gpu_partition():
    profile = yaml.safe_load((ROOT / "workflow/profiles/slurm/config.yaml").read_text())
    default_partition = profile["default-resources"]["slurm_partition"]
    set_resources = profile.get("set-resources", {})
    gpu_rules = gpu_rules_in_sources()
    missing = sorted(gpu_rules - set(set_resources))
    assert not missing, f"GPU rules missing from the SLURM profile's set-resources: {missing}"
    partitions = set()
    for name in sorted(gpu_rules):
        res = set_resources[name]
        partitions.add(res.get("slurm_partition"))
        assert res.get("slurm_partition") not in (None, default_partition), name
        asks_gpu = int(res.get("gpu", 0)) >= 1 or re.fullmatch(r"gpu(:\w+)?:\d+", str(res.get("gres", "")))
        assert asks_gpu, f"{name}: no gpu/gres resource in the SLURM profile"
    assert len(partitions) == 1, partitions
    # rules without a GPU stay off the GPU partition
    for name, res in set_resources.items():
        if name not in gpu_rules:
            assert res.get("slurm_partition") not in partitions, name
