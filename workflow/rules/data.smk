# Data: demo inputs in the real file formats, and ingestion of ERA5, IGRA v2 and CT
# projections into analysis-ready zarr stores (results/data/{era5,igra,ct}.zarr).
# Config keys: data.seed, data.<source>.inputs (empty: the demo files),
# data.<source>.options (reader options), data.<source>.demo (generator options);
# see config/data_sources.example.yaml and docs/ingest.md.
import json
import shlex

# Reader and generator options of each source as repeated `--set key=value` CLI arguments
# (values as JSON, which the CLI reads as YAML), and the user's inputs (None: the demo).
DATA = config.get("data", {})
DATA_SEED = DATA.get("seed", 0)
DATA_SET = {
    (source, part): " ".join(
        shlex.quote(f"--set={key}={json.dumps(value)}")
        for key, value in (DATA.get(source, {}).get(part) or {}).items()
    )
    for source in ("era5", "igra", "ct")
    for part in ("options", "demo")
}
DATA_INPUTS = {
    source: DATA.get(source, {}).get("inputs") for source in ("era5", "igra", "ct")
}
# Stores ingested from the demo files say so in their `comment` attribute.
SYNTHETIC = "--comment 'SYNTHETIC demo data written by diffinv demo-data, not real measurements'"
DATA_NOTE = {source: "" if DATA_INPUTS[source] else SYNTHETIC for source in DATA_INPUTS}


rule demo_era5:
    output:
        directory("resources/demo/era5"),
    log:
        "logs/data/demo_era5.log",
    conda:
        "../../envs/cpu.yaml"
    params:
        seed=DATA_SEED,
        opts=DATA_SET["era5", "demo"],
    shell:
        "python -m diffinv demo-data era5 -o {output} --seed {params.seed} {params.opts} > {log} 2>&1"


rule demo_igra:
    input:
        era5=rules.demo_era5.output,
    output:
        directory("resources/demo/igra"),
    log:
        "logs/data/demo_igra.log",
    conda:
        "../../envs/cpu.yaml"
    params:
        seed=DATA_SEED,
        opts=DATA_SET["igra", "demo"],
    shell:
        "python -m diffinv demo-data igra -o {output} --seed {params.seed} --set era5={input.era5}"
        " {params.opts} > {log} 2>&1"


rule demo_ct:
    output:
        directory("resources/demo/ct"),
    log:
        "logs/data/demo_ct.log",
    priority: 100  # the priors wait on it
    conda:
        "../../envs/cpu.yaml"
    params:
        seed=DATA_SEED,
        opts=DATA_SET["ct", "demo"],
    shell:
        "python -m diffinv demo-data ct -o {output} --seed {params.seed} {params.opts} > {log} 2>&1"


rule ingest_era5:
    input:
        DATA_INPUTS["era5"] or rules.demo_era5.output,
    output:
        directory("results/data/era5.zarr"),
    log:
        "logs/data/ingest_era5.log",
    conda:
        "../../envs/cpu.yaml"
    params:
        opts=DATA_SET["era5", "options"],
        note=DATA_NOTE["era5"],
    shell:
        "python -m diffinv ingest era5 {input} -o {output} {params.opts} {params.note} > {log} 2>&1"


rule ingest_igra:
    input:
        DATA_INPUTS["igra"] or rules.demo_igra.output,
    output:
        directory("results/data/igra.zarr"),
    log:
        "logs/data/ingest_igra.log",
    conda:
        "../../envs/cpu.yaml"
    params:
        opts=DATA_SET["igra", "options"],
        note=DATA_NOTE["igra"],
    shell:
        "python -m diffinv ingest igra {input} -o {output} {params.opts} {params.note} > {log} 2>&1"


rule ingest_ct:
    input:
        DATA_INPUTS["ct"] or rules.demo_ct.output,
    output:
        directory("results/data/ct.zarr"),
    log:
        "logs/data/ingest_ct.log",
    priority: 100  # the priors wait on it
    conda:
        "../../envs/cpu.yaml"
    params:
        opts=DATA_SET["ct", "options"],
        note=DATA_NOTE["ct"],
    shell:
        "python -m diffinv ingest ct {input} -o {output} {params.opts} {params.note} > {log} 2>&1"


# Quick-look figures of the ingested stores, for the report (category Data).
QUICKLOOK_NAMES = {"era5": "ERA5", "igra": "IGRA", "ct": "CT"}


rule quicklook_data:
    input:
        "results/data/{source}.zarr",
    output:
        report(
            "results/data/quicklook/{source}.png",
            caption="../report/quicklook.rst",
            category="Data",
            subcategory=lambda wildcards: QUICKLOOK_NAMES[wildcards.source],
            labels={"source": "{source}", "figure": "quick look"},
        ),
    log:
        "logs/data/quicklook_{source}.log",
    wildcard_constraints:
        source="era5|igra|ct",
    conda:
        "../../envs/cpu.yaml"
    shell:
        "python -m diffinv quicklook {wildcards.source} {input} -o {output} > {log} 2>&1"
