"""Bad stage input is refused with one line naming the key or file, before any work (issue 16)."""

import json

import pytest
import torch

from diffinv.cli import main
from diffinv.config import validate_config
from diffinv.demo.mri import write_demo
from diffinv.errors import ConfigError, DiffinvError
from diffinv.io.fastmri import ingest
from diffinv.stages.core import CaseSeeds, Method, Problem, Sampling, sample_case

TINY = {
    "threads": 1,
    "mri": {
        "prior": {
            "network": {"widths": [8, 16], "norm_groups": 4},
            "train": {"steps": 3, "batch_size": 2, "warmup": 1},
        },
        "sampling": {"samples": 2, "batch_size": 2, "steps": 2, "no_prior_iterations": 2},
    },
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("refuse")
    write_demo(root / "demo", seed=0, size=16, coils=1, slices_per_volume=2, train_volumes=1, val_volumes=1)
    train = ingest([root / "demo" / "train"], root / "train.zarr")
    val = ingest([root / "demo" / "val"], root / "val.zarr")
    prior = root / "prior"
    assert (
        main(
            [
                "train",
                "mri",
                "--data",
                str(train),
                "-o",
                str(prior),
                "--quiet",
                "--config-json",
                json.dumps(TINY),
            ]
        )
        == 0
    )
    return root, train, val, prior


def _one_line_error(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("diffinv"), err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def _sample(data, **kw):
    root, train, val, prior = data
    args = {
        "--data": str(val),
        "--train-data": str(train),
        "--prior": str(prior),
        "--acceleration": "4",
        "--method": "dpmpp_2m-dds",
    }
    args.update(kw)
    return [
        "sample",
        "mri",
        *[x for kv in args.items() for x in kv],
        "-o",
        str(root / "out.zarr"),
        "--config-json",
        json.dumps(TINY),
    ]


@pytest.mark.parametrize("acc", ["0", "-4", "abc"])
def test_acceleration_below_one_is_refused(data, capsys, acc):
    with pytest.raises(SystemExit) as exc:
        main(_sample(data, **{"--acceleration": acc}))
    assert exc.value.code == 2 and "--acceleration" in capsys.readouterr().err
    assert not (data[0] / "out.zarr").exists()


def test_a_store_of_another_kind_as_data_is_refused(data, capsys, tmp_path):
    import xarray as xr

    from diffinv.io.store import write_zarr

    other = write_zarr(xr.Dataset({"t2m": (("time",), [1.0, 2.0])}), tmp_path / "era5.zarr")
    _one_line_error(
        capsys, _sample(data, **{"--data": str(other)}), "era5.zarr", "not an ingested fastMRI store"
    )


def test_a_store_of_another_kind_as_training_data_is_refused(data, capsys, tmp_path):
    import xarray as xr

    from diffinv.io.store import write_zarr

    other = write_zarr(xr.Dataset({"t2m": (("time",), [1.0, 2.0])}), tmp_path / "era5.zarr")
    _one_line_error(
        capsys, _sample(data, **{"--train-data": str(other)}), "era5.zarr", "not an ingested fastMRI store"
    )
    assert not (data[0] / "out.zarr").exists()


def test_a_prior_for_another_grid_is_refused(data, capsys, tmp_path):
    root, train, _, prior = data
    cfg = json.loads((prior / "config.json").read_text())
    cfg["network"]["size"] = [32, 32]
    other = tmp_path / "prior32"
    other.mkdir()
    (other / "config.json").write_text(json.dumps(cfg))
    (other / "model.safetensors").write_bytes((prior / "model.safetensors").read_bytes())
    _one_line_error(capsys, _sample(data, **{"--prior": str(other)}), "config.json", "32x32", "16x16")


def _train(train, out, **overrides):
    """argv of ``diffinv train mri`` on the tiny config with ``mri.prior.train`` overrides."""
    cfg = json.loads(json.dumps(TINY))
    cfg["mri"]["prior"]["train"].update(overrides)
    return ["train", "mri", "--data", str(train), "-o", str(out), "--quiet", "--config-json", json.dumps(cfg)]


def test_batch_larger_than_the_training_set_is_refused(data, capsys, tmp_path):
    _, train, _, _ = data
    argv = _train(train, tmp_path / "p", batch_size=64)
    _one_line_error(capsys, argv, "mri.prior.train.batch_size", "at most 2")
    assert not (tmp_path / "p").exists()


def test_a_diverging_learning_rate_stops_training_with_the_step_named(data, capsys, tmp_path):
    _, train, _, _ = data
    argv = _train(train, tmp_path / "p", lr=1e6, steps=30)
    _one_line_error(capsys, argv, "mri.prior.train.lr")
    assert not (tmp_path / "p" / "model.safetensors").exists(), "no checkpoint of a diverged prior"


@pytest.mark.parametrize(
    "method,key",
    [
        ({"solver": "ddim", "guidance": "dds", "solver_options": {"eta": -1.0}}, "eta"),
        ({"solver": "ddim", "guidance": "dps", "guidance_options": {"zeta": -3.0}}, "zeta"),
        ({"solver": "ddim", "guidance": "dds", "guidance_options": {"cg_steps": -2}}, "cg_steps"),
    ],
)
def test_meaningless_option_values_are_refused_at_validation(method, key):
    with pytest.raises(ConfigError, match=f"methods\\[0\\].*{key}"):
        validate_config({"mri": {"sampling": {"methods": [method]}}})


def test_widths_must_suit_the_group_norm():
    with pytest.raises(ConfigError, match="mri.prior.network.widths"):
        validate_config({"mri": {"prior": {"network": {"widths": [12, 16], "norm_groups": 8}}}})


def test_non_finite_samples_are_not_written_unless_asked():
    class Broken:
        from diffinv.diffusion.schedule import VPSchedule

        schedule = VPSchedule()

        def __call__(self, x, t):
            return torch.full_like(x, float("nan"))

    from diffinv.operators.mri import MRIOperator

    op = MRIOperator(torch.ones(4, dtype=torch.bool), None)
    problem = Problem(op, torch.zeros(1, 4, 4, dtype=torch.complex64), (2, 4, 4))
    sampling = Sampling(samples=2, batch_size=2, steps=2, final_dc=False)
    with pytest.raises(DiffinvError, match="non-finite"):
        sample_case(problem, Broken(), Method("ddim", "none"), sampling, CaseSeeds.of(0, "c"), "cpu")
    allowed = Sampling(samples=2, batch_size=2, steps=2, final_dc=False, allow_nonfinite=True)
    out = sample_case(problem, Broken(), Method("ddim", "none"), allowed, CaseSeeds.of(0, "c"), "cpu")
    assert torch.isnan(out.samples).all()
