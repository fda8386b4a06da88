# diffinv: posterior sampling with diffusion priors, from raw files to zarr posteriors.
# Run: snakemake --cores all --workflow-profile workflow/profiles/default
from snakemake.utils import min_version

min_version("9.1.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


wildcard_constraints:
    dataset=r"[A-Za-z0-9_.-]+",
    acc=r"\d+",
    method=r"[A-Za-z0-9_]+-[A-Za-z0-9_]+(-[A-Za-z0-9_]+)?",
    split=r"train|eval",
    task=r"[A-Za-z0-9_]+",
    ctmethod=r"[A-Za-z0-9_]+",
    atmethod=r"[A-Za-z0-9_]+",


include: "workflow/rules/data.smk"
include: "workflow/rules/mri.smk"
include: "workflow/rules/ads.smk"
include: "workflow/rules/ct3d.smk"
include: "workflow/rules/mri3d.smk"
include: "workflow/rules/atmos.smk"
include: "workflow/rules/fwd.smk"


rule all:
    default_target: True
    input:
        all_outputs(),
