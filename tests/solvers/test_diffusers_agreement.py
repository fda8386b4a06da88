"""Agreement with diffusers' schedulers on the same α_t and timesteps (float64, 1e-5 relative).

Both sides live on one discrete schedule: index k of diffusers' 1000 training steps is our
continuous time t_k = t_min + k (t_max − t_min)/999, and diffusers' ``alphas_cumprod`` and
``sigmas`` are overwritten in float64 with our α(t_k)² (diffusers builds them in float32).
The model output is the exact data prediction (``prediction_type="sample"``). Convention
differences set on the diffusers side: ``lower_order_final=False`` (our multistep solvers
never drop order on the last steps) and ``final_sigmas_type="sigma_min"`` (our grid ends at
t_min, not at σ = 0; DEIS always ends there); DDIM uses ``set_alpha_to_one=False`` so its last
step ends at index 0.
"""

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    UniPCMultistepScheduler,
)

from diffinv.solvers import make_solver, sample

TRAIN = 1000
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _times(schedule, index):
    return schedule.t_min + torch.as_tensor(index, dtype=torch.float64) * (
        schedule.t_max - schedule.t_min
    ) / (TRAIN - 1)


def _diffusers_run(cls, gmm, x, steps, **config):
    s = gmm.schedule
    acp = s.alpha(_times(s, np.arange(TRAIN))) ** 2
    betas = (1 - acp / torch.cat([torch.ones(1, dtype=torch.float64), acp[:-1]])).numpy()
    sched = cls(num_train_timesteps=TRAIN, trained_betas=betas, prediction_type="sample", **config)
    sched.alphas_cumprod = acp
    if hasattr(sched, "final_alpha_cumprod"):
        sched.final_alpha_cumprod = acp[0]
    sched.set_timesteps(steps)
    index = sched.timesteps.numpy().astype(np.int64)
    grid = torch.cat([_times(s, index), _times(s, [0])])
    if hasattr(sched, "sigmas"):
        sched.sigmas = (s.sigma(grid) / s.alpha(grid)).to(torch.float64)
    out = x.clone()
    for k, ts in enumerate(sched.timesteps):
        out = sched.step(gmm(out, grid[k].expand(len(out))), ts, out).prev_sample
    return out, grid


CASES = [
    ("ddim", {}, DDIMScheduler, {"set_alpha_to_one": False, "clip_sample": False}),
    ("dpmpp_2m", {}, DPMSolverMultistepScheduler, {"solver_order": 2}),
    ("dpmpp_3m", {}, DPMSolverMultistepScheduler, {"solver_order": 3}),
    (
        "dpmpp_2m",
        {"thresholding": True, "threshold_ratio": 0.9, "sample_max_value": 1.2},
        DPMSolverMultistepScheduler,
        {"solver_order": 2, "thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.2},
    ),
    ("deis", {"order": 2, "basis": "logrho"}, DEISMultistepScheduler, {"solver_order": 2}),
    ("deis", {"order": 3, "basis": "logrho"}, DEISMultistepScheduler, {"solver_order": 3}),
    ("unipc", {"order": 2}, UniPCMultistepScheduler, {"solver_order": 2}),
    ("unipc", {"order": 3}, UniPCMultistepScheduler, {"solver_order": 3}),
    (
        "unipc",
        {"order": 2, "variant": "bh1"},
        UniPCMultistepScheduler,
        {"solver_order": 2, "solver_type": "bh1"},
    ),
]
MULTISTEP = {"lower_order_final": False, "final_sigmas_type": "sigma_min"}


@pytest.mark.parametrize("steps", [6, 20])
@pytest.mark.parametrize(
    "name,options,cls,config", CASES, ids=[f"{c[0]}-{c[2].__name__}-{i}" for i, c in enumerate(CASES)]
)
def test_matches_diffusers(smooth_gmm, x_start, name, options, cls, config, steps):
    extra = {DDIMScheduler: {}, DEISMultistepScheduler: {"lower_order_final": False}}.get(cls, MULTISTEP)
    x = x_start[:, :, None]  # (batch, channel, pixel): diffusers' thresholding wants a channel axis
    expected, grid = _diffusers_run(cls, smooth_gmm, x, steps, **config, **extra)
    ours = sample(make_solver(name, smooth_gmm.schedule, **options), smooth_gmm, x, grid)
    rel = float((ours - expected).norm() / expected.norm())
    assert rel < 1e-5, f"{name} {options}: relative difference {rel:.2e} to {cls.__name__}"
