# MRI stage: demo data -> ingest -> prior -> posterior sampling -> metrics and figures.


rule demo_mri:
    output:
        train=directory("resources/demo/mri/train"),
        val=directory("resources/demo/mri/val"),
    log:
        "logs/demo_mri.log",
    priority: 100  # the priors wait on it
    conda:
        "../../envs/cpu.yaml"
    params:
        seed=config["seed"],
        options=mri_demo_options,
    shell:
        "python -m diffinv demo-data mri -o resources/demo/mri --seed {params.seed} "
        "{params.options} > {log} 2>&1"


rule ingest_mri:
    input:
        mri_inputs,
    output:
        directory("results/mri/{dataset}/data/{split}.zarr"),
    log:
        "logs/mri/{dataset}/ingest_{split}.log",
    priority: 100  # the priors wait on it
    conda:
        "../../envs/cpu.yaml"
    params:
        options=mri_ingest_options,
        note=SYNTHETIC if MRI["data"]["demo"] else "",
    shell:
        "python -m diffinv ingest fastmri {input} -o {output} {params.options} {params.note} > {log} 2>&1"


rule train_prior_mri:
    input:
        "results/mri/{dataset}/data/train.zarr",
    output:
        prior=directory("results/mri/{dataset}/prior"),
        loss=report(
            "results/mri/{dataset}/prior/loss.png",
            caption="../report/loss.rst",
            category="Prior",
            subcategory="MRI",
            labels={"dataset": "{dataset}", "figure": "training loss"},
        ),
    log:
        "logs/mri/{dataset}/train_prior.log",
    priority: 100
    conda:
        GPU_ENV
    threads: config["threads"]
    resources:
        gpu=GPU,
        device=DEVICE,
    params:
        config=job_config("mri", "train"),
    shell:
        "OMP_NUM_THREADS={threads} python -m diffinv train mri --data {input} "
        "-o {output.prior} --config-set {params.config:q} "
        "--device {resources.device} --threads {threads} > {log} 2>&1"


rule sample_mri:
    input:
        data="results/mri/{dataset}/data/eval.zarr",
        train="results/mri/{dataset}/data/train.zarr",
        prior=mri_prior(),
    output:
        directory("results/mri/{dataset}/{acc}x/{method}/posterior.zarr"),
    log:
        "logs/mri/{dataset}/{acc}x/{method}/sample.log",
    conda:
        GPU_ENV
    threads: config["threads"]
    resources:
        gpu=GPU,
        device=DEVICE,
    params:
        config=lambda wildcards: job_config("mri", "sample", wildcards.method),
    shell:
        "OMP_NUM_THREADS={threads} python -m diffinv sample mri --data {input.data} "
        "--train-data {input.train} --prior {input.prior} --acceleration {wildcards.acc} "
        "--method {wildcards.method} -o {output} --config-set {params.config:q} "
        "--device {resources.device} --threads {threads} > {log} 2>&1"


rule sample_calibration_mri:
    input:
        data="results/mri/{dataset}/data/eval.zarr",
        train="results/mri/{dataset}/data/train.zarr",
        prior=mri_prior(),
    output:
        directory("results/mri/{dataset}/{acc}x/{method}/calibration_samples.zarr"),
    log:
        "logs/mri/{dataset}/{acc}x/{method}/sample_calibration.log",
    conda:
        GPU_ENV
    threads: config["threads"]
    resources:
        gpu=GPU,
        device=DEVICE,
    params:
        config=lambda wildcards: job_config("mri", "sample", wildcards.method),
        cases=" ".join(str(c) for c in MRI_CALIBRATION["cases"]),
    shell:
        "OMP_NUM_THREADS={threads} python -m diffinv sample mri --data {input.data} "
        "--train-data {input.train} --prior {input.prior} --acceleration {wildcards.acc} "
        "--method {wildcards.method} --cases {params.cases} -o {output} "
        "--config-set {params.config:q} --device {resources.device} --threads {threads} "
        "> {log} 2>&1"


rule calibrate_mri:
    input:
        calibration="results/mri/{dataset}/{acc}x/{method}/calibration_samples.zarr",
        evaluation="results/mri/{dataset}/{acc}x/{method}/posterior.zarr",
    output:
        store=directory("results/mri/{dataset}/{acc}x/{method}/calibrated.zarr"),
        table="results/mri/{dataset}/{acc}x/{method}/calibration.csv",
        figure=report(
            "results/mri/{dataset}/{acc}x/{method}/calibration.png",
            caption="../report/calibration.rst",
            category="MRI",
            subcategory="Calibration",
            labels={
                "method": "{method}",
                "acceleration": "{acc}x",
                "figure": "calibration",
            },
        ),
    log:
        "logs/mri/{dataset}/{acc}x/{method}/calibrate.log",
    conda:
        "../../envs/cpu.yaml"
    params:
        config=job_config("mri", "calibrate"),
    shell:
        "python -m diffinv calibrate mri --calibration {input.calibration} "
        "--evaluation {input.evaluation} -o {output.store} --table {output.table} "
        "--figure {output.figure} --config-set {params.config:q} --device cpu --threads 1 "
        "> {log} 2>&1"


rule evaluate_mri:
    input:
        "results/mri/{dataset}/{acc}x/{method}/posterior.zarr",
    output:
        metrics="results/mri/{dataset}/{acc}x/{method}/metrics.csv",
        figures=report(
            directory("results/mri/{dataset}/{acc}x/{method}/figures"),
            patterns=["{name}.png"],
            caption="../report/case.rst",
            category="MRI",
            subcategory="Reconstructions {acc}x",
            labels={"method": "{method}", "acceleration": "{acc}x", "slice": "{name}"},
        ),
    log:
        "logs/mri/{dataset}/{acc}x/{method}/evaluate.log",
    conda:
        "../../envs/cpu.yaml"
    shell:
        "python -m diffinv evaluate {input} --metrics {output.metrics} "
        "--figures {output.figures} > {log} 2>&1"


rule summarise_mri:
    input:
        metrics=expand(
            "results/mri/{{dataset}}/{acc}x/{method}/metrics.csv",
            acc=MRI_ACCELERATIONS,
            method=MRI_METHODS,
        ),
        calibration=mri_calibration_tables,
    output:
        report(
            "results/mri/{dataset}/summary.csv",
            caption="../report/summary.rst",
            category="MRI",
            subcategory="Summary",
            labels={"table": "mean metrics (CSV, full precision)"},
        ),
    log:
        "logs/mri/{dataset}/summarise.log",
    conda:
        "../../envs/cpu.yaml"
    params:
        options=mri_summary_options,
    shell:
        "python -m diffinv summarise {input.metrics} {params.options} -o {output} > {log} 2>&1"


rule table_mri:
    input:
        "results/mri/{dataset}/summary.csv",
    output:
        report(
            "results/mri/{dataset}/summary.html",
            caption="../report/summary.rst",
            category="MRI",
            subcategory="Summary",
            labels={"table": "mean metrics"},
        ),
    log:
        "logs/mri/{dataset}/summary_table.log",
    conda:
        "../../envs/cpu.yaml"
    params:
        title="MRI {dataset}: mean metrics per method, acceleration and reconstruction",
    shell:
        "python -m diffinv report-table {input} -o {output} --title {params.title:q} > {log} 2>&1"
