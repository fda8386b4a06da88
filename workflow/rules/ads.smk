# ADS stage: active k-space line selection with the MRI prior, against fixed masks.


rule ads_mri:
    input:
        data="results/mri/{dataset}/data/eval.zarr",
        train="results/mri/{dataset}/data/train.zarr",
        prior=mri_prior(),
    output:
        directory("results/ads/{dataset}/{acc}x/ads.zarr"),
    log:
        "logs/ads/{dataset}/{acc}x/ads.log",
    priority: 50
    conda:
        GPU_ENV
    threads: config["threads"]
    resources:
        gpu=GPU,
        device=DEVICE,
    params:
        config=job_config("ads", "sample"),
    shell:
        "OMP_NUM_THREADS={threads} python -m diffinv sample ads --data {input.data} "
        "--train {input.train} --prior {input.prior} --acceleration {wildcards.acc} "
        "-o {output} --config-set {params.config:q} "
        "--device {resources.device} --threads {threads} > {log} 2>&1"


rule ads_evaluate:
    input:
        "results/ads/{dataset}/{acc}x/ads.zarr",
    output:
        metrics="results/ads/{dataset}/{acc}x/metrics.csv",
        figures=report(
            directory("results/ads/{dataset}/{acc}x/figures"),
            patterns=["{name}.png"],
            caption="../report/ads.rst",
            category="ADS",
            subcategory="Cases",
            labels={"acceleration": "{acc}x", "slice": "{name}"},
        ),
    log:
        "logs/ads/{dataset}/{acc}x/evaluate.log",
    conda:
        "../../envs/cpu.yaml"
    shell:
        "python -m diffinv ads-evaluate {input} --metrics {output.metrics} "
        "--figures {output.figures} > {log} 2>&1"


rule ads_summary:
    input:
        expand("results/ads/{{dataset}}/{acc}x/metrics.csv", acc=ADS_ACCELERATIONS),
    output:
        report(
            "results/ads/{dataset}/summary.csv",
            caption="../report/ads_summary.rst",
            category="ADS",
            subcategory="Summary",
            labels={"table": "mean metrics (CSV, full precision)"},
        ),
    log:
        "logs/ads/{dataset}/summary.log",
    conda:
        "../../envs/cpu.yaml"
    shell:
        "python -m diffinv ads-summarise {input} -o {output} > {log} 2>&1"


rule ads_table:
    input:
        "results/ads/{dataset}/summary.csv",
    output:
        report(
            "results/ads/{dataset}/summary.html",
            caption="../report/ads_summary.rst",
            category="ADS",
            subcategory="Summary",
            labels={"table": "mean metrics"},
        ),
    log:
        "logs/ads/{dataset}/summary_table.log",
    conda:
        "../../envs/cpu.yaml"
    params:
        title="ADS {dataset}: mean metrics per acceleration and sampling strategy",
    shell:
        "python -m diffinv report-table {input} -o {output} --title {params.title:q} > {log} 2>&1"
