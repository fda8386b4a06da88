# 3D CT stage: the ingested projection store -> slice prior -> volumes per task and method
# -> metrics per axial/coronal/sagittal view, figures and the summary.


rule train_prior_ct3d:
    input:
        "results/data/ct.zarr",
    output:
        prior=directory("results/ct3d/{dataset}/prior"),
        loss=report(
            "results/ct3d/{dataset}/prior/loss.png",
            caption="../report/loss.rst",
            category="Prior",
            subcategory="CT 3D",
            labels={"dataset": "{dataset}", "figure": "training loss"},
        ),
    log:
        "logs/ct3d/{dataset}/train_prior.log",
    priority: 100
    conda:
        GPU_ENV
    threads: config["threads"]
    resources:
        gpu=GPU,
        device=DEVICE,
    params:
        config=job_config("ct3d", "train"),
    shell:
        "OMP_NUM_THREADS={threads} python -m diffinv train ct3d --data {input} "
        "-o {output.prior} --config-set {params.config:q} "
        "--device {resources.device} --threads {threads} > {log} 2>&1"


rule sample_ct3d:
    input:
        data="results/data/ct.zarr",
        prior=ct3d_prior(),
    output:
        directory("results/ct3d/{dataset}/{task}/{ctmethod}/posterior.zarr"),
    log:
        "logs/ct3d/{dataset}/{task}/{ctmethod}/sample.log",
    priority: 40
    conda:
        GPU_ENV
    threads: config["threads"]
    resources:
        gpu=GPU,
        device=DEVICE,
    params:
        config=lambda wildcards: ct3d_sample_config(wildcards.task, wildcards.ctmethod),
    shell:
        "OMP_NUM_THREADS={threads} python -m diffinv sample ct3d --data {input.data} "
        "--prior {input.prior} --task {wildcards.task} --method {wildcards.ctmethod} "
        "-o {output} --config-set {params.config:q} "
        "--device {resources.device} --threads {threads} > {log} 2>&1"


rule evaluate_ct3d:
    input:
        "results/ct3d/{dataset}/{task}/{ctmethod}/posterior.zarr",
    output:
        metrics="results/ct3d/{dataset}/{task}/{ctmethod}/metrics.csv",
        figures=report(
            directory("results/ct3d/{dataset}/{task}/{ctmethod}/figures"),
            patterns=["{name}.png"],
            caption="../report/ct3d_volume.rst",
            category="CT 3D",
            subcategory="Volumes",
            labels={"task": "{task}", "method": "{ctmethod}", "volume": "{name}"},
        ),
    log:
        "logs/ct3d/{dataset}/{task}/{ctmethod}/evaluate.log",
    conda:
        "../../envs/cpu.yaml"
    shell:
        "python -m diffinv ct3d-evaluate {input} --metrics {output.metrics} "
        "--figures {output.figures} > {log} 2>&1"


rule summarise_ct3d:
    input:
        expand(
            "results/ct3d/{{dataset}}/{task}/{ctmethod}/metrics.csv",
            task=CT3D_TASKS,
            ctmethod=CT3D_METHODS,
        ),
    output:
        report(
            "results/ct3d/{dataset}/summary.csv",
            caption="../report/ct3d_summary.rst",
            category="CT 3D",
            subcategory="Summary",
            labels={"table": "mean metrics (CSV, full precision)"},
        ),
    log:
        "logs/ct3d/{dataset}/summarise.log",
    conda:
        "../../envs/cpu.yaml"
    shell:
        "python -m diffinv ct3d-summarise {input} -o {output} > {log} 2>&1"


rule ct3d_table:
    input:
        "results/ct3d/{dataset}/summary.csv",
    output:
        report(
            "results/ct3d/{dataset}/summary.html",
            caption="../report/ct3d_summary.rst",
            category="CT 3D",
            subcategory="Summary",
            labels={"table": "mean metrics"},
        ),
    log:
        "logs/ct3d/{dataset}/summary_table.log",
    conda:
        "../../envs/cpu.yaml"
    params:
        title="CT 3D {dataset}: mean PSNR/SSIM per task, method, reconstruction and view",
    shell:
        "python -m diffinv report-table {input} -o {output} --title {params.title:q} > {log} 2>&1"
