"""The UNet prior network (diffusers ``UNet2DModel``) and its safetensors checkpoints.

A checkpoint is a folder with ``model.safetensors`` (EMA weights) and ``config.json``
(network kwargs, prediction type, schedule, value clip, data description, training log).
Loading never unpickles.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DModel
from safetensors.torch import load_file, save_file

from diffinv.diffusion.denoisers import NetworkDenoiser
from diffinv.diffusion.schedule import VPSchedule
from diffinv.errors import InputError
from diffinv.io.store import atomic_path

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def build_unet(
    size: list[int] | tuple[int, int],
    channels: int = 2,
    widths: list[int] | tuple[int, ...] = (32, 64, 64),
    layers_per_block: int = 1,
    attention: bool = False,
    norm_groups: int = 8,
) -> UNet2DModel:
    """A small ``UNet2DModel``; ``attention`` puts self-attention at the lowest resolution."""
    depth = len(widths)
    down = ["DownBlock2D"] * depth
    up = ["UpBlock2D"] * depth
    if attention:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    return UNet2DModel(
        sample_size=tuple(int(s) for s in size),
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(int(w) for w in widths),
        layers_per_block=layers_per_block,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        norm_num_groups=norm_groups,
    )


def save_checkpoint(folder: Path, net: torch.nn.Module, config: dict[str, Any]) -> Path:
    """Write weights and config atomically into ``folder`` (kept beside other files there)."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    with atomic_path(folder / WEIGHTS) as tmp:
        save_file(state, str(tmp))
    with atomic_path(folder / CONFIG) as tmp:
        tmp.write_text(json.dumps(config, indent=2, sort_keys=True))
    return folder


def checkpoint_config(folder: Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a checkpoint folder, with clear errors."""
    path = Path(folder) / CONFIG
    if not path.exists():
        raise InputError(
            path, "checkpoint config missing", "point prior.checkpoint at a folder written by 'diffinv train'"
        )
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(
            path, f"not valid JSON ({exc.msg} at line {exc.lineno})", "repair or retrain"
        ) from exc
    for key in ("network", "prediction", "schedule"):
        if key not in cfg:
            raise InputError(path, f"missing key '{key}'", "retrain with 'diffinv train' or add the key")
    return cfg


def load_denoiser(folder: Path, device: str | torch.device = "cpu") -> NetworkDenoiser:
    """Rebuild the EMA denoiser of a checkpoint folder (safetensors only)."""
    folder = Path(folder)
    cfg = checkpoint_config(folder)
    weights = folder / WEIGHTS
    if not weights.exists():
        raise InputError(
            weights,
            "checkpoint weights missing",
            "point prior.checkpoint at a folder written by 'diffinv train'",
        )
    net = build_unet(**cfg["network"])
    try:
        net.load_state_dict(load_file(str(weights)), strict=True)
    except (RuntimeError, OSError) as exc:
        raise InputError(
            weights,
            f"weights do not match the network in config.json ({str(exc).splitlines()[0]})",
            "retrain or fix config.json",
        ) from exc
    net.eval().requires_grad_(False).to(device)
    return NetworkDenoiser(net, VPSchedule(**cfg["schedule"]), cfg["prediction"], cfg.get("clip"))


def schedule_dict(schedule: VPSchedule) -> dict[str, Any]:
    """JSON form of a schedule."""
    return asdict(schedule)
