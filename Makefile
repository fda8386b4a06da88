# Quickstart targets. Each installs what it needs into .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= all
# The CPU build on this machine; GPU users: make TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu126"
TORCH_SPEC ?= torch==2.13.0
CONFIG ?= config/config.yaml
export OMP_NUM_THREADS ?= 2

.PHONY: install demo test lint report clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test,grib]"
	$(BIN)/python -m pip install -q --no-deps fastmri==0.3.0
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

demo: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores $(CORES) --workflow-profile workflow/profiles/default --configfile $(CONFIG)

report: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores 1 --workflow-profile workflow/profiles/default --configfile $(CONFIG) --report results/report.zip

test: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/snakemake --lint --configfile $(CONFIG)
	$(BIN)/snakefmt --check Snakefile workflow/rules

clean:
	rm -rf results logs .snakemake
