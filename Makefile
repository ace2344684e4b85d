# One-command set-up: `make demo` runs the workflow on the embedded demo world; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= all
STAMP := $(VENV)/.installed

.PHONY: env demo test test-fast lint bench bench-small report rehearsal rehearsal-small clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# Everything in one pip command, at the exact versions of constraints.txt (torch and torchvision together).
	$(BIN)/pip install -c constraints.txt -e '.[dev]'
	touch $(STAMP)

env: $(STAMP)

demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --profile profiles/default all

report: demo
	$(BIN)/snakemake --cores $(CORES) --profile profiles/default --report report.html

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow and not slurm"

lint: $(STAMP)
	$(BIN)/ruff check src tests bench workflow_scripts
	$(BIN)/ruff format --check src tests bench workflow_scripts
	$(BIN)/mypy
	$(BIN)/snakefmt --check Snakefile rules
	$(BIN)/snakemake --lint --cores 1

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

bench-small: $(STAMP)
	$(BIN)/python bench/run_all.py --small

# The real-data path at full size on synthetic inputs in the real layouts (docs/rehearsal.md).
rehearsal: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m geoens.demo.rehearsal rehearsal --run

rehearsal-small: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m geoens.demo.rehearsal rehearsal-small --scale 20 --geotags 20000 --run

clean:
	rm -rf results logs benchmarks .snakemake report.html
