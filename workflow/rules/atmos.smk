# Atmospheric super-resolution: the ingested ERA5 store -> fine-field prior -> ensembles per
# method (coarse field + stations; bicubic and conservative baselines in each store) -> metrics,
# distance/spectra/rank tables and figures -> the summary over methods. With
# atmos.calibration, one method is also sampled at held-out times and its calibrated store
# (METHOD_calibrated) is evaluated like the others.


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
    wildcard_constraints:
        atmethod="|".join(ATMOS_METHODS),
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


rule calibrate_atmos:
    input:
        data="results/data/era5.zarr",
        prior=atmos_prior(),
        evaluation="results/atmos/{dataset}/{atmethod}/posterior.zarr",
    output:
        samples=directory("results/atmos/{dataset}/{atmethod}/calibration_samples.zarr"),
        store=directory("results/atmos/{dataset}/{atmethod}_calibrated/posterior.zarr"),
        table="results/atmos/{dataset}/{atmethod}_calibrated/calibration.csv",
    log:
        "logs/atmos/{dataset}/{atmethod}/calibrate.log",
    wildcard_constraints:
        atmethod="|".join(ATMOS_METHODS),
    conda:
        GPU_ENV
    threads: config["threads"]
    resources:
        gpu=GPU,
        device=DEVICE,
    params:
        config=lambda wildcards: job_config("atmos", "calibrate", wildcards.atmethod),
    shell:
        "OMP_NUM_THREADS={threads} python -m diffinv calibrate atmos --data {input.data} "
        "--prior {input.prior} --method {wildcards.atmethod} --evaluation {input.evaluation} "
        "--samples {output.samples} -o {output.store} --table {output.table} "
        "--config-set {params.config:q} --device {resources.device} --threads {threads} > {log} 2>&1"


rule evaluate_atmos:
    input:
        "results/atmos/{dataset}/{atmethod}/posterior.zarr",
    output:
        metrics="results/atmos/{dataset}/{atmethod}/metrics.csv",
        figures=report(
            directory("results/atmos/{dataset}/{atmethod}/figures"),
            patterns=["{name}.png"],
            caption="../report/atmos_figure.rst",
            category="Atmosphere",
            subcategory="Figures",
            labels={"method": "{atmethod}", "figure": "{name}"},
        ),
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
            "results/atmos/{{dataset}}/{atmethod}/metrics.csv", atmethod=ATMOS_STORES
        ),
    output:
        report(
            "results/atmos/{dataset}/summary.csv",
            caption="../report/atmos_summary.rst",
            category="Atmosphere",
            subcategory="Summary",
            labels={"table": "metrics per method and channel (CSV)"},
        ),
    log:
        "logs/atmos/{dataset}/summarise.log",
    conda:
        "../../envs/cpu.yaml"
    shell:
        "python -m diffinv atmos-summarise {input} -o {output} > {log} 2>&1"


rule atmos_table:
    input:
        "results/atmos/{dataset}/summary.csv",
    output:
        report(
            "results/atmos/{dataset}/summary.html",
            caption="../report/atmos_summary.rst",
            category="Atmosphere",
            subcategory="Summary",
            labels={"table": "metrics per method and channel"},
        ),
    log:
        "logs/atmos/{dataset}/summary_table.log",
    conda:
        "../../envs/cpu.yaml"
    params:
        title="Atmosphere {dataset}: RMSE, CRPS, spread-skill and coverage per method, channel and estimate",
    shell:
        "python -m diffinv report-table {input} -o {output} --title {params.title:q} > {log} 2>&1"
