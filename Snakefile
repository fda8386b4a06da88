# diffinv: posterior sampling with diffusion priors, from raw files to zarr posteriors.
# Run: snakemake --cores all --workflow-profile workflow/profiles/default
from snakemake.utils import min_version

min_version("9.1.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/mri.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        all_outputs(),
    default_target: True
