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
    conda:
        GPU_ENV
    threads: config["threads"]
    resources:
        gpu=1,
        device=DEVICE,
    params:
        cli=DIFFINV,
        config=job_config("ads", "sample"),
    shell:
        "OMP_NUM_THREADS={threads} {params.cli} sample ads --data {input.data} "
        "--train {input.train} --prior {input.prior} --acceleration {wildcards.acc} "
        "-o {output} --config-json {params.config} "
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
            category="Active subsampling",
            subcategory="{acc}x",
        ),
    log:
        "logs/ads/{dataset}/{acc}x/evaluate.log",
    conda:
        "../../envs/cpu.yaml"
    params:
        cli=DIFFINV,
    shell:
        "{params.cli} ads-evaluate {input} --metrics {output.metrics} "
        "--figures {output.figures} > {log} 2>&1"


rule ads_summary:
    input:
        expand("results/ads/{{dataset}}/{acc}x/metrics.csv", acc=ADS_ACCELERATIONS),
    output:
        report(
            "results/ads/{dataset}/summary.csv",
            caption="../report/ads_summary.rst",
            category="Active subsampling",
        ),
    log:
        "logs/ads/{dataset}/summary.log",
    conda:
        "../../envs/cpu.yaml"
    params:
        cli=DIFFINV,
    shell:
        "{params.cli} ads-summarise {input} -o {output} > {log} 2>&1"
