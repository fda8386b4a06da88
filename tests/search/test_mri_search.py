"""The MRI stage runs a search plug-in by name and records the ESS of population methods."""

import pytest
import torch

from diffinv.config import method_name
from diffinv.diffusion.denoisers import GaussianMixtureDenoiser
from diffinv.diffusion.schedule import VPSchedule
from diffinv.operators.mri import fft2c
from diffinv.tasks.mri import MRICase, reconstruct, reconstruct_case

SAMPLING = {
    "mask": {"kind": "random"},
    "steps": 4,
    "grid": "logsnr",
    "samples": 3,
    "batch_size": 2,
    "hallucination_steps": 2,
    "final_dc": False,
    "no_prior_iterations": 3,
}


def _case():
    g = torch.Generator().manual_seed(0)
    truth = torch.randn(2, 8, 8, generator=g)
    k = fft2c(torch.complex(truth[0], truth[1]))[None]
    return MRICase("c0", k, None, torch.ones(8, dtype=torch.bool), truth, 1.0, 2)


def _prior():
    means = torch.randn(2, 128, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return GaussianMixtureDenoiser(VPSchedule(), torch.ones(2), means)


@pytest.mark.parametrize(
    "search,options", [("smc", {"particles": 2}), ("best_of_n", {"n": 2}), ("mcgdiff", {"particles": 2})]
)
def test_reconstruct_case_uses_the_search_by_name(search, options):
    method = {
        "solver": "ddpm",
        "guidance": "none" if search == "mcgdiff" else "dds",
        "search": search,
        "search_options": options,
    }
    out = reconstruct_case(_case(), 0, _prior(), 2, method, SAMPLING, 0.25, 0, "cpu")
    assert out["samples"].shape == (3, 2, 8, 8) and torch.isfinite(out["samples"]).all()
    assert (out["ess"] is not None) == (search != "best_of_n")
    assert method_name(method) == f"ddpm-{method['guidance']}-{search}"


def test_population_methods_write_ess_and_the_default_path_does_not():
    ds = reconstruct(
        [_case()],
        _prior(),
        2,
        {"solver": "ddpm", "guidance": "dds", "search": "smc", "search_options": {"particles": 2}},
        SAMPLING,
        0.25,
        0,
        "cpu",
        {},
    )
    assert ds["ess"].dims == ("case", "sample") and ds.attrs["method"] == "ddpm-dds-smc"
    plain = reconstruct(
        [_case()], _prior(), 2, {"solver": "ddim", "guidance": "dds"}, SAMPLING, 0.25, 0, "cpu", {}
    )
    assert "ess" not in plain and plain.attrs["method"] == "ddim-dds"


def _registered(group: str) -> list[str]:
    from diffinv.plugins import BUILTINS

    return sorted(BUILTINS[group])


# guidance methods whose update is a solver kernel of their own (DDRM, DiffPIR)
OWN_SOLVER = {"ddrm": "ddrm", "diffpir": "diffpir"}
SMALL_SEARCH_OPTIONS = {
    "smc": {"particles": 2},
    "mcgdiff": {"particles": 2},
    "svdd": {"candidates": 2},
    "dts": {"rollouts": 2},
    "dts_star": {"rollouts": 2},
    "best_of_n": {"n": 2},
    "zero_order": {"n": 2},
    "path_search": {"n": 2},
    "rbf": {"budget": 16},
    "minority": {},
}


@pytest.mark.parametrize("guidance", _registered("guidance"))
def test_every_guidance_runs_in_the_mri_stage_by_name(guidance):
    """The MRI stage (what the Snakemake rule calls) accepts every registered guidance by name."""
    method = {"solver": OWN_SOLVER.get(guidance, "ddim"), "guidance": guidance}
    out = reconstruct_case(_case(), 0, _prior(), 2, method, SAMPLING, 0.25, 0, "cpu")
    assert out["samples"].shape == (3, 2, 8, 8) and torch.isfinite(out["samples"]).all()


@pytest.mark.parametrize("search", _registered("search"))
def test_every_search_runs_in_the_mri_stage_by_name(search):
    """... and every registered search / population method (small budgets)."""
    method = {
        "solver": "ddpm",
        "guidance": "none" if search == "mcgdiff" else "dds",
        "search": search,
        "search_options": SMALL_SEARCH_OPTIONS[search],
    }
    out = reconstruct_case(_case(), 0, _prior(), 2, method, SAMPLING, 0.25, 0, "cpu")
    assert out["samples"].shape == (3, 2, 8, 8) and torch.isfinite(out["samples"]).all()
    assert (
        out["samples"].dtype == torch.float32
    )  # MCGdiff's float64 spectral step once leaked into the particles (a float32 network then failed)
