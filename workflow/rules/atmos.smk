# Atmospheric super-resolution: the ingested ERA5 store -> fine-field prior -> ensembles per
# method (coarse field + stations; bicubic and conservative baselines in each store) -> metrics,
# distance/spectra/rank tables and figures -> the summary over methods.


rule train_prior_atmos:
    input:
        "results/data/era5.zarr",
    output:
        prior=directory("results/atmos/{dataset}/prior"),
        loss=report(
            "results/atmos/{dataset}/prior/loss.png",
            caption="../report/loss.rst",
            category="Prior",
            subcategory="Atmosphere",
            labels={"dataset": "{dataset}", "figure": "training loss"},
        ),
    log:
        "logs/atmos/{dataset}/train_prior.log",
    conda:
        GPU_ENV
    threads: config["threads"]
    resources:
        gpu=GPU,
        device=DEVICE,
    params:
        config=job_config("atmos", "train"),
    shell:
        "OMP_NUM_THREADS={threads} python -m diffinv train atmos --data {input} "
        "-o {output.prior} --quiet --config-set {params.config:q} "
        "--device {resources.device} --threads {threads} > {log} 2>&1"


rule sample_atmos:
    input:
        data="results/data/era5.zarr",
        prior=atmos_prior(),
    output:
        directory("results/atmos/{dataset}/{atmethod}/posterior.zarr"),
    log:
        "logs/atmos/{dataset}/{atmethod}/sample.log",
    conda:
        GPU_ENV
    threads: config["threads"]
    resources:
        gpu=GPU,
        device=DEVICE,
    params:
        config=lambda wildcards: job_config("atmos", "sample", wildcards.atmethod),
    shell:
        "OMP_NUM_THREADS={threads} python -m diffinv sample atmos --data {input.data} "
        "--prior {input.prior} --method {wildcards.atmethod} -o {output} "
        "--config-set {params.config:q} --device {resources.device} --threads {threads} > {log} 2>&1"


rule evaluate_atmos:
    input:
        "results/atmos/{dataset}/{atmethod}/posterior.zarr",
    output:
        metrics="results/atmos/{dataset}/{atmethod}/metrics.csv",
        figures=directory("results/atmos/{dataset}/{atmethod}/figures"),
    log:
        "logs/atmos/{dataset}/{atmethod}/evaluate.log",
    conda:
        "../../envs/cpu.yaml"
    shell:
        "python -m diffinv atmos-evaluate {input} --metrics {output.metrics} "
        "--figures {output.figures} > {log} 2>&1"


rule summarise_atmos:
    input:
        expand(
            "results/atmos/{{dataset}}/{atmethod}/metrics.csv", atmethod=ATMOS_METHODS
        ),
    output:
        "results/atmos/{dataset}/summary.csv",
    log:
        "logs/atmos/{dataset}/summarise.log",
    conda:
        "../../envs/cpu.yaml"
    shell:
        "python -m diffinv atmos-summarise {input} -o {output} > {log} 2>&1"
