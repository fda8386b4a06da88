import json

import pytest
import torch

from diffinv.diffusion.networks import build_unet, load_denoiser, save_checkpoint
from diffinv.diffusion.schedule import VPSchedule
from diffinv.diffusion.training import TrainConfig, train_prior
from diffinv.errors import InputError

NET = {"size": [16, 16], "channels": 2, "widths": [8, 16], "layers_per_block": 1, "norm_groups": 4}


def test_training_writes_a_checkpoint_that_round_trips(tmp_path):
    images = torch.randn(64, 2, 16, 16) * 0.3
    denoiser = train_prior(
        images,
        tmp_path,
        NET,
        VPSchedule(),
        TrainConfig(steps=20, batch_size=8, warmup=2, log_every=5),
        2.0,
        {"test": True},
        progress=False,
    )
    assert (tmp_path / "loss.png").stat().st_size > 0
    assert (tmp_path / "loss.csv").read_text().startswith("step,loss")
    loaded = load_denoiser(tmp_path)
    x = torch.randn(2, 2, 16, 16)
    t = torch.tensor([0.3, 0.7], dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(loaded(x, t), denoiser(x, t), atol=1e-6)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["prediction"] == "epsilon" and cfg["clip"] == 2.0


def test_checkpoint_errors_name_the_file_and_fix(tmp_path):
    with pytest.raises(InputError, match="config.json.*checkpoint config missing"):
        load_denoiser(tmp_path)
    save_checkpoint(
        tmp_path,
        build_unet(**NET),
        {"network": {**NET, "widths": [8, 32]}, "prediction": "epsilon", "schedule": {}},
    )
    (tmp_path / "model.safetensors").unlink()
    save_checkpoint(
        tmp_path,
        build_unet(**NET),
        {"network": {**NET, "widths": [8, 32]}, "prediction": "epsilon", "schedule": {}},
    )
    with pytest.raises(InputError, match="do not match"):
        load_denoiser(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_denoiser(tmp_path)
