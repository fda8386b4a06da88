"""The diffinv CLI: one-line errors naming the file or key and the fix, nothing written."""

import json
import subprocess
import sys

import pytest

from diffinv.cli import main


def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "diffinv", *args], capture_output=True, text=True, timeout=120
    )


def test_plugins_lists_builtins_with_citations():
    out = run("plugins")
    assert out.returncode == 0
    assert "dpmpp_2m" in out.stdout and "Lu et al. 2022" in out.stdout and "dds" in out.stdout


def test_missing_input_is_one_line_naming_the_path(tmp_path, capsys):
    code = main(["ingest", "fastmri", str(tmp_path / "nope.h5"), "-o", str(tmp_path / "out.zarr")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and "nope.h5: no such file or folder (fix:" in err
    assert not (tmp_path / "out.zarr").exists()


@pytest.mark.parametrize(
    "config,message",
    [
        (
            {"mri": {"sampling": {"stepz": 3}}},
            "mri.sampling: Additional properties are not allowed ('stepz' was unexpected) "
            "(fix: remove it or use one of:",
        ),
        ({"mri": {"sampling": {"steps": "many"}}}, "mri.sampling.steps: 'many' is not of type 'integer'"),
        ({"device": "tpu"}, "device: 'tpu' does not match"),
        (
            {"mri": {"sampling": {"methods": [{"solver": "ddim"}]}}},
            "mri.sampling.methods.0: 'guidance' is a required property",
        ),
    ],
)
def test_bad_config_is_one_line_naming_the_key(tmp_path, capsys, config, message):
    code = main(
        [
            "sample",
            "mri",
            "--data",
            "x.zarr",
            "--train-data",
            "t.zarr",
            "--prior",
            "p",
            "--acceleration",
            "4",
            "--method",
            "ddim-dds",
            "-o",
            str(tmp_path / "o.zarr"),
            "--config-json",
            json.dumps(config),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert message in err
    assert not (tmp_path / "o.zarr").exists()


def test_bad_yaml_file_names_the_file(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("mri: [unclosed")
    assert main(["train", "mri", "--data", "x.zarr", "-o", str(tmp_path / "p"), "--config", str(cfg)]) == 2
    assert "c.yaml: not valid YAML" in capsys.readouterr().err


def test_unknown_or_malformed_options_are_named(tmp_path, capsys):
    assert main(["demo-data", "mri", "-o", str(tmp_path / "d"), "--set", "sizes=8"]) == 2
    err = capsys.readouterr().err
    assert "demo-data mri: unknown option(s) sizes (fix: use size, coils" in err
    assert not (tmp_path / "d").exists()
    assert main(["ingest", "fastmri", str(tmp_path), "-o", str(tmp_path / "o.zarr"), "--set", "nokey"]) == 2
    assert "expected key=value" in capsys.readouterr().err
