# Helpers shared by the rule files (config validation, path functions); no rules here.
import json
import shlex
import sys

sys.path.insert(0, str(Path(workflow.basedir) / "src"))
from diffinv.config import method_name, validate_config  # noqa: E402
from diffinv.stages import verb_config  # noqa: E402

config.update(validate_config(config, "config (config/config.yaml + --config)"))

# The CLI of the diffinv source tree that ships with this workflow.
DIFFINV = (
    f"PYTHONPATH={workflow.basedir}/src${{PYTHONPATH:+:$PYTHONPATH}} python -m diffinv"
)
MRI = config["mri"]
MRI_DATASET = MRI["dataset"]
MRI_METHODS = [method_name(m) for m in MRI["sampling"]["methods"]]
MRI_ACCELERATIONS = MRI["sampling"]["accelerations"]
ADS_ACCELERATIONS = config["ads"]["accelerations"]


def job_config(stage, verb, method=None):
    """The config paths that stage's verb depends on, shell-quoted, for --config-json.

    A job's params hold only these, so an edit reruns exactly the jobs it affects.
    """
    return shlex.quote(
        json.dumps(verb_config(config, stage, verb, method), sort_keys=True)
    )


# Runtime setting: it does not change results, so it is a resource, not a param (params
# changes rerun jobs).
DEVICE = config["device"]
# conda environment of the GPU rules (those with resources gpu=1) under --sdm conda, set
# by the config's conda_env (cpu | cuda); other rules use envs/cpu.yaml. Relative to
# workflow/rules. Not a param: the environment does not change results.
GPU_ENV = f"../../envs/{config['conda_env']}.yaml"


def mri_demo_options(wildcards):
    """--set options of the MRI demo generator."""
    return " ".join(f"--set {k}={v}" for k, v in MRI["data"]["demo_options"].items())


def mri_ingest_options(wildcards):
    """--set options of the fastMRI reader."""
    crop = MRI["data"]["kspace_crop"]
    return f"--set kspace_crop=[{crop[0]},{crop[1]}]" if crop else ""


def mri_inputs(wildcards):
    """Files or folders of one split: the demo folder, or the paths in the config."""
    if MRI["data"]["demo"]:
        return [
            f"resources/demo/mri/{'train' if wildcards.split == 'train' else 'val'}"
        ]
    return MRI["data"]["train" if wildcards.split == "train" else "eval"]


def mri_prior():
    """The prior checkpoint folder: the configured one, or the one the pipeline trains."""
    return MRI["prior"]["checkpoint"] or f"results/mri/{MRI_DATASET}/prior"


def all_outputs():
    """Every final output of the workflow."""
    out = [f"results/mri/{MRI_DATASET}/summary.csv"]
    out += expand(
        "results/mri/{dataset}/{acc}x/{method}/figures",
        dataset=MRI_DATASET,
        acc=MRI_ACCELERATIONS,
        method=MRI_METHODS,
    )
    if not MRI["prior"]["checkpoint"]:
        out.append(f"results/mri/{MRI_DATASET}/prior/loss.png")
    if config["ads"]["enabled"]:
        out.append(f"results/ads/{MRI_DATASET}/summary.csv")
        out += expand(
            "results/ads/{dataset}/{acc}x/figures",
            dataset=MRI_DATASET,
            acc=ADS_ACCELERATIONS,
        )
    out += [
        f"results/data/{source}.zarr"
        for source in ("era5", "igra", "ct")
        if source in config["data"]
    ]
    return out
