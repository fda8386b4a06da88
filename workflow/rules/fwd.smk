# Diffusion with forward models (issue 14): the ingested CT projection store -> a signal network
# trained on the training volumes' sinograms only -> posterior slices of the evaluation volumes
# from sparse context views -> metrics against the truth of demo data and figures.


rule train_fwd:
    input:
        "results/data/ct.zarr",
    output:
        model=directory("results/fwd/{dataset}/model"),
        loss=report(
            "results/fwd/{dataset}/model/loss.png",
            caption="../report/loss.rst",
            category="Prior",
            subcategory="Forward models",
            labels={"dataset": "{dataset}", "figure": "training loss"},
        ),
    log:
        "logs/fwd/{dataset}/train.log",
    conda:
        GPU_ENV
    threads: config["threads"]
    resources:
        gpu=GPU,
        device=DEVICE,
    params:
        config=job_config("fwd", "train"),
    shell:
        "OMP_NUM_THREADS={threads} python -m diffinv train fwd --data {input} "
        "-o {output.model} --config-set {params.config:q} "
        "--device {resources.device} --threads {threads} > {log} 2>&1"


rule sample_fwd:
    input:
        data="results/data/ct.zarr",
        model="results/fwd/{dataset}/model",
    output:
        directory("results/fwd/{dataset}/posterior.zarr"),
    log:
        "logs/fwd/{dataset}/sample.log",
    conda:
        GPU_ENV
    threads: config["threads"]
    resources:
        gpu=GPU,
        device=DEVICE,
    params:
        config=job_config("fwd", "sample"),
    shell:
        "OMP_NUM_THREADS={threads} python -m diffinv sample fwd --data {input.data} "
        "--model {input.model} -o {output} --config-set {params.config:q} "
        "--device {resources.device} --threads {threads} > {log} 2>&1"


rule evaluate_fwd:
    input:
        "results/fwd/{dataset}/posterior.zarr",
    output:
        metrics="results/fwd/{dataset}/metrics.csv",
        figures=report(
            directory("results/fwd/{dataset}/figures"),
            patterns=["{name}.png"],
            caption="../report/ct3d_volume.rst",
            category="Forward models",
            subcategory="Volumes",
            labels={"dataset": "{dataset}", "volume": "{name}"},
        ),
    log:
        "logs/fwd/{dataset}/evaluate.log",
    conda:
        "../../envs/cpu.yaml"
    shell:
        "python -m diffinv fwd-evaluate {input} --metrics {output.metrics} "
        "--figures {output.figures} > {log} 2>&1"
