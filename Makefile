# The two commands of the README: `make demo` and `make test`. Both create the virtual
# environment on first use (idempotent: re-run only when pyproject.toml or the C code changes:
# the editable install builds mint/data/_lzw.c and _resample.c in place, setup.py).
VENV ?= .venv
CORES ?= 2
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
# Keep numeric libraries to the cores Snakemake gives each job.
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1

.PHONY: env demo test lint format dag clean

env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py mint/data/_lzw.c mint/data/_resample.c
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: env
	$(BIN)/snakemake --cores $(CORES) --configfile config/demo.yaml --printshellcmds
	@echo "Report: results/report/index.html"

test: env
	$(BIN)/python -m pytest -q

lint: env
	$(BIN)/ruff check mint tests benchmarks setup.py
	$(BIN)/ruff format --check mint tests benchmarks setup.py
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint --configfile config/demo.yaml

format: env
	$(BIN)/ruff check --fix mint tests benchmarks setup.py
	$(BIN)/ruff format mint tests benchmarks setup.py
	$(BIN)/snakefmt Snakefile workflow/rules

dag: env
	$(BIN)/snakemake --configfile config/demo.yaml --rulegraph dot > workflow/rulegraph.dot
	dot -Tpng workflow/rulegraph.dot -o workflow/rulegraph.png

clean:
	rm -rf resources results logs .snakemake benchmarks/out
