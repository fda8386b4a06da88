"""The MRI stage runs every guidance and search plug-in by name, with exact NFE and data consistency."""

import pytest
import torch

from diffinv.diffusion.denoisers import GaussianMixtureDenoiser
from diffinv.diffusion.schedule import VPSchedule
from diffinv.io.store import get_provenance
from diffinv.operators.mri import fft2c
from diffinv.plugins import BUILTINS, load
from diffinv.stages.core import Method, Sampling
from diffinv.stages.mri.cases import MRICase
from diffinv.stages.mri.run import reconstruct, reconstruct_case
from diffinv.testbed import OWN_SOLVER, SMALL_SEARCH_OPTIONS

STEPS = 6
SETTINGS = {
    "mask": {"kind": "random"},
    "steps": STEPS,
    "grid": "logsnr",
    "samples": 3,
    "batch_size": 2,
    "hallucination_steps": 2,
    "final_dc": False,
    "no_prior_iterations": 3,
    "no_prior_cg_steps": 5,
    "case_block": 8,
}
SAMPLING = Sampling.from_config(SETTINGS)
MASK = torch.tensor([True, False, False, True, True, False, True, False])


def _case():
    g = torch.Generator().manual_seed(0)
    truth = torch.randn(2, 8, 8, generator=g)
    k = fft2c(torch.complex(truth[0], truth[1]))[None]
    return MRICase("c0", k, None, torch.ones(8, dtype=torch.bool), truth, 1.0, 2)


def _prior():
    means = torch.randn(2, 128, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return GaussianMixtureDenoiser(VPSchedule(), torch.ones(2), means)


def _residual(method: Method) -> tuple[float, float]:
    out = reconstruct_case(_case(), _prior(), MASK, method, SAMPLING, 0, "cpu")
    assert out.samples.shape == (3, 2, 8, 8) and out.samples.dtype == torch.float32
    return float(out.relative_residual.mean()), out.nfe


PRIOR_RESIDUAL = _residual(Method("ddim", "none"))[0]
# options that make these pull towards the data within 6 steps on this mixture
# (the defaults follow the papers)
OPTIONS = {"dps": {"zeta": 10.0}, "gaussian_score": {"gamma": 1.0}}


@pytest.mark.parametrize("guidance", sorted(set(BUILTINS["guidance"]) - {"none"}))
def test_every_guidance_runs_in_the_mri_stage_by_name_and_pulls_towards_the_data(guidance):
    """Exact NFE, and samples closer to the measurements than prior samples (no final projection)."""
    solver = OWN_SOLVER.get(guidance, "ddim")
    residual, nfe = _residual(Method(solver, guidance, guidance_options=OPTIONS.get(guidance, {})))
    assert nfe == STEPS * load("solver", solver).nfe_per_step
    assert residual < 0.5 * PRIOR_RESIDUAL, (guidance, residual, PRIOR_RESIDUAL)


@pytest.mark.parametrize("search", sorted(BUILTINS["search"]))
def test_every_search_runs_in_the_mri_stage_by_name_and_stays_data_consistent(search):
    """Searches spend at least one trajectory per sample and keep DDS's data consistency."""
    guidance = "none" if search == "mcgdiff" else "dds"  # MCGdiff conditions in its own kernel
    method = Method("ddpm", guidance, search, search_options=SMALL_SEARCH_OPTIONS[search])
    residual, nfe = _residual(method)
    assert nfe >= STEPS
    assert residual < 0.5 * PRIOR_RESIDUAL, (search, residual, PRIOR_RESIDUAL)


def test_population_methods_write_ess_and_the_default_path_does_not():
    method = Method("ddpm", "dds", "smc", search_options={"particles": 2})
    ds = reconstruct([_case()], _prior(), 2, method, SETTINGS, 0.25, 0, "cpu", {})
    assert ds["ess"].dims == ("case", "sample") and ds.attrs["method"] == "ddpm-dds-smc"
    assert float(ds["nfe"][0]) == 2 * STEPS, "a population of 2 costs 2 trajectories per sample"
    plain = reconstruct([_case()], _prior(), 2, Method("ddim", "dds"), SETTINGS, 0.25, 0, "cpu", {})
    assert "ess" not in plain and plain.attrs["method"] == "ddim-dds" and float(plain["nfe"][0]) == STEPS
    prov = get_provenance(plain)
    assert prov["dtype"] == "float64" and prov["precision"] == "fp32", "the exact mixture runs in float64"
