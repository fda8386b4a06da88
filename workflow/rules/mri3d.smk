# 3D compressed-sensing MRI: volumes of the MRI evaluation store with the MRI stage's 2D prior
# -> metrics per axial/coronal/sagittal view, figures and the summary (targets only when
# mri3d.enabled: see all_outputs in common.smk).


rule sample_mri3d:
    input:
        data="results/mri/{dataset}/data/eval.zarr",
        train="results/mri/{dataset}/data/train.zarr",
        prior=mri_prior(),
    output:
        directory("results/mri3d/{dataset}/{acc}x/{m3method}/posterior.zarr"),
    log:
        "logs/mri3d/{dataset}/{acc}x/{m3method}/sample.log",
    wildcard_constraints:
        m3method=r"[A-Za-z0-9_]+",
    conda:
        GPU_ENV
    threads: config["threads"]
    resources:
        gpu=GPU,
        device=DEVICE,
    params:
        config=lambda wildcards: job_config("mri3d", "sample", wildcards.m3method),
    shell:
        "OMP_NUM_THREADS={threads} python -m diffinv sample mri3d --data {input.data} "
        "--train-data {input.train} --prior {input.prior} --acceleration {wildcards.acc} "
        "--method {wildcards.m3method} -o {output} --config-set {params.config:q} "
        "--device {resources.device} --threads {threads} > {log} 2>&1"


rule evaluate_mri3d:
    input:
        "results/mri3d/{dataset}/{acc}x/{m3method}/posterior.zarr",
    output:
        metrics="results/mri3d/{dataset}/{acc}x/{m3method}/metrics.csv",
        figures=report(
            directory("results/mri3d/{dataset}/{acc}x/{m3method}/figures"),
            patterns=["{name}.png"],
            caption="../report/mri3d_volume.rst",
            category="MRI 3D",
            subcategory="Volumes",
            labels={
                "acceleration": "{acc}x",
                "method": "{m3method}",
                "volume": "{name}",
            },
        ),
    log:
        "logs/mri3d/{dataset}/{acc}x/{m3method}/evaluate.log",
    wildcard_constraints:
        m3method=r"[A-Za-z0-9_]+",
    conda:
        "../../envs/cpu.yaml"
    shell:
        "python -m diffinv mri3d-evaluate {input} --metrics {output.metrics} "
        "--figures {output.figures} > {log} 2>&1"


rule summarise_mri3d:
    input:
        expand(
            "results/mri3d/{{dataset}}/{acc}x/{m3method}/metrics.csv",
            acc=MRI3D_ACCELERATIONS,
            m3method=MRI3D_METHODS,
        ),
    output:
        report(
            "results/mri3d/{dataset}/summary.csv",
            caption="../report/mri3d_summary.rst",
            category="MRI 3D",
            subcategory="Summary",
            labels={"table": "mean metrics (CSV, full precision)"},
        ),
    log:
        "logs/mri3d/{dataset}/summarise.log",
    conda:
        "../../envs/cpu.yaml"
    shell:
        "python -m diffinv mri3d-summarise {input} -o {output} > {log} 2>&1"


rule mri3d_table:
    input:
        "results/mri3d/{dataset}/summary.csv",
    output:
        report(
            "results/mri3d/{dataset}/summary.html",
            caption="../report/mri3d_summary.rst",
            category="MRI 3D",
            subcategory="Summary",
            labels={"table": "mean metrics"},
        ),
    log:
        "logs/mri3d/{dataset}/summary_table.log",
    conda:
        "../../envs/cpu.yaml"
    params:
        title="MRI 3D {dataset}: mean magnitude PSNR/SSIM per acceleration, method, reconstruction and view",
    shell:
        "python -m diffinv report-table {input} -o {output} --title {params.title:q} > {log} 2>&1"
