# Helpers shared by the rule files (config validation, path functions); no rules here.
import json
import os
import shlex
import shutil
import sys

sys.path.insert(0, str(Path(workflow.basedir) / "src"))
from diffinv.config import method_name, validate_config  # noqa: E402
from diffinv.stages import verb_config  # noqa: E402

config.update(validate_config(config, "config (config/config.yaml + --config)"))

# The CLI of the diffinv source tree that ships with this workflow: shell lines call
# `python -m diffinv` literally, with that src/ first on PYTHONPATH (set here, not in params
# or shell lines, so no job shows an absolute path; cluster jobs re-read this file).
_SRC = f"{workflow.basedir}/src"
if os.environ.get("PYTHONPATH", "").split(os.pathsep)[0] != _SRC:
    os.environ.update(
        PYTHONPATH=os.pathsep.join(filter(None, [_SRC, os.environ.get("PYTHONPATH")]))
    )
DIFFINV = "python -m diffinv"
MRI = config["mri"]
MRI_DATASET = MRI["dataset"]
MRI_METHODS = [method_name(m) for m in MRI["sampling"]["methods"]]
MRI_ACCELERATIONS = MRI["sampling"]["accelerations"]
ADS_ACCELERATIONS = config["ads"]["accelerations"]


def job_config(stage, verb, method=None):
    """The config paths that stage's verb depends on, as sorted `key.path=value` settings.

    A job's params hold only these, so an edit reruns exactly the jobs it affects; the
    report shows them as they are. Pass them shell-quoted: `--config-set {params.config:q}`.
    """
    from diffinv.tasks_cli import format_settings

    return format_settings(verb_config(config, stage, verb, method))


def ct3d_sample_config(task, method):
    """The sampling job's settings: job_config narrowed to its task and its method, so a task's
    per-method overrides (ct3d.tasks[].methods) rerun only the jobs they change."""
    from diffinv.stages.ct3d import keep_task
    from diffinv.tasks_cli import format_settings

    cfg = verb_config(config, "ct3d", "sample", method)
    keep_task(cfg, task)
    return format_settings(cfg)


# Runtime setting: it does not change results, so it is a resource, not a param (params
# changes rerun jobs).
DEVICE = config["device"]
# Jobs that run the network hold `gpu` (the profile allows one per GPU) when they will use a
# GPU; on a CPU-only run they hold none, so they run side by side up to --cores.
GPU = (
    1
    if DEVICE.startswith("cuda") or (DEVICE == "auto" and shutil.which("nvidia-smi"))
    else 0
)
# conda environment of the GPU rules (those with a gpu resource) under --sdm conda, set
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


# Split conformal calibration (docs/uncertainty.md): one method, every acceleration.
MRI_CALIBRATION = MRI["calibration"]
MRI_CALIBRATED = (
    (MRI_CALIBRATION["method"] or MRI_METHODS[0])
    if MRI_CALIBRATION["enabled"]
    else None
)
if MRI_CALIBRATED is not None and MRI_CALIBRATED not in MRI_METHODS:
    raise ValueError(
        f"mri.calibration.method: {MRI_CALIBRATED!r} is not one of mri.sampling.methods "
        f"({', '.join(MRI_METHODS)}) (fix: name one of them, or null for the first)"
    )


def mri_calibration_tables(wildcards):
    """Calibration CSVs that join the MRI summary (none when calibration is off)."""
    if MRI_CALIBRATED is None:
        return []
    return expand(
        "results/mri/{dataset}/{acc}x/{method}/calibration.csv",
        dataset=wildcards.dataset,
        acc=MRI_ACCELERATIONS,
        method=MRI_CALIBRATED,
    )


def mri_summary_options(wildcards, input):
    """--calibration option of the MRI summary."""
    return f"--calibration {' '.join(input.calibration)}" if input.calibration else ""


CT3D = config["ct3d"]
CT3D_DATASET = CT3D["dataset"]
CT3D_TASKS = [t["name"] for t in CT3D["tasks"]]
CT3D_METHODS = [m["name"] for m in CT3D["sampling"]["methods"]]


def ct3d_prior():
    """The CT slice prior: the configured checkpoint, or the one the pipeline trains."""
    return CT3D["prior"]["checkpoint"] or f"results/ct3d/{CT3D_DATASET}/prior"


ATMOS = config["atmos"]
ATMOS_DATASET = ATMOS["dataset"]
ATMOS_METHODS = [m["name"] for m in ATMOS["sampling"]["methods"]]
# Ensemble calibration (docs/atmos.md): one method, at held-out times of the store.
ATMOS_CALIBRATION = ATMOS["calibration"]
ATMOS_CALIBRATED = (
    (ATMOS_CALIBRATION["method"] or ATMOS_METHODS[0])
    if ATMOS_CALIBRATION["enabled"]
    else None
)
if ATMOS_CALIBRATED is not None and ATMOS_CALIBRATED not in ATMOS_METHODS:
    raise ValueError(
        f"atmos.calibration.method: {ATMOS_CALIBRATED!r} is not one of atmos.sampling.methods "
        f"(fix: use one of {', '.join(ATMOS_METHODS)})"
    )
# every atmos store evaluated: each method's, and the calibrated method's as METHOD_calibrated
ATMOS_STORES = ATMOS_METHODS + (
    [f"{ATMOS_CALIBRATED}_calibrated"] if ATMOS_CALIBRATED else []
)


def atmos_prior():
    """The fine-field prior: the configured checkpoint, or the one the pipeline trains."""
    return ATMOS["prior"]["checkpoint"] or f"results/atmos/{ATMOS_DATASET}/prior"


MRI3D = config["mri3d"]
MRI3D_METHODS = [m["name"] for m in MRI3D["sampling"]["methods"]]
MRI3D_ACCELERATIONS = MRI3D["sampling"]["accelerations"]


def all_outputs():
    """Every final output of the workflow."""
    out = [f"results/mri/{MRI_DATASET}/summary.{ext}" for ext in ("csv", "html")]
    out += expand(
        "results/mri/{dataset}/{acc}x/{method}/figures",
        dataset=MRI_DATASET,
        acc=MRI_ACCELERATIONS,
        method=MRI_METHODS,
    )
    if not MRI["prior"]["checkpoint"]:
        out.append(f"results/mri/{MRI_DATASET}/prior/loss.png")
    if MRI_CALIBRATED is not None:
        out += expand(
            "results/mri/{dataset}/{acc}x/{method}/calibration.png",
            dataset=MRI_DATASET,
            acc=MRI_ACCELERATIONS,
            method=MRI_CALIBRATED,
        )
    if config["ads"]["enabled"]:
        out += [f"results/ads/{MRI_DATASET}/summary.{ext}" for ext in ("csv", "html")]
        out += expand(
            "results/ads/{dataset}/{acc}x/figures",
            dataset=MRI_DATASET,
            acc=ADS_ACCELERATIONS,
        )
    if CT3D["enabled"]:
        out += [f"results/ct3d/{CT3D_DATASET}/summary.{ext}" for ext in ("csv", "html")]
        out += expand(
            "results/ct3d/{dataset}/{task}/{ctmethod}/figures",
            dataset=CT3D_DATASET,
            task=CT3D_TASKS,
            ctmethod=CT3D_METHODS,
        )
        if not CT3D["prior"]["checkpoint"]:
            out.append(f"results/ct3d/{CT3D_DATASET}/prior/loss.png")
    if MRI3D["enabled"]:
        out += [f"results/mri3d/{MRI_DATASET}/summary.{ext}" for ext in ("csv", "html")]
        out += expand(
            "results/mri3d/{dataset}/{acc}x/{m3method}/figures",
            dataset=MRI_DATASET,
            acc=MRI3D_ACCELERATIONS,
            m3method=MRI3D_METHODS,
        )
    if ATMOS["enabled"]:
        out += [
            f"results/atmos/{ATMOS_DATASET}/summary.{ext}" for ext in ("csv", "html")
        ]
        out += [f"results/atmos/{ATMOS_DATASET}/{m}/figures" for m in ATMOS_STORES]
        if not ATMOS["prior"]["checkpoint"]:
            out.append(f"results/atmos/{ATMOS_DATASET}/prior/loss.png")
    if config["fwd"]["enabled"]:
        fwd = f"results/fwd/{config['fwd']['dataset']}"
        out += [f"{fwd}/metrics.csv", f"{fwd}/figures", f"{fwd}/model/loss.png"]
    out += [
        f"results/data/{kind}{source}.{ext}"
        for source in ("era5", "igra", "ct")
        if source in config["data"]
        for kind, ext in (("", "zarr"), ("quicklook/", "png"))
    ]
    return out
