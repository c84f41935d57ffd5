# `make run` and `make test` set everything up on a fresh machine (idempotent: a second call installs nothing).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Tests and benchmarks read the offline copies of Gowalla/Yelp2018 beside the repo.
export MMLEXP_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: install run test test-slow test-postgres test-slurm lint docs docs-serve import-graph format bench ui dashboard clean \
	reproduce-table2 reproduce-table3 reproduce-fig3 reproduce-quick reproduce reproduce-status reproduce-queue reproduce-queue-status need-dataset report notebooks bench-variants dist

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# The documentation site's tools (the `docs` extra), on top of the dev install.
DOCS_STAMP := $(VENV)/.installed-docs
$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,docs]'
	@touch $(DOCS_STAMP)

run: install  ## train MF + MML on the embedded sample dataset and print its metrics
	$(PY) -m mmlexp $(ARGS)

test: install  ## the test suite (real-data checks marked slow are left to `make test-slow`)
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: install  ## real-data checks on Gowalla (minutes)
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

lint: install  ## ruff (lint rules, then formatting) and mypy on src/mmlexp, as CI and the pre-commit hooks run them
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy src/mmlexp
	$(VENV)/bin/lint-imports

docs: install $(DOCS_STAMP)  ## the site (mkdocs build --strict into site/): results and config pages generated from results/ and conf/
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

docs-serve: install $(DOCS_STAMP)  ## the site with live reload on http://127.0.0.1:8000 (loopback only)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve --strict --dev-addr 127.0.0.1:$${PORT:-8000}

import-graph: install  ## docs/import-graph.svg: what imports what between mmlexp's modules (docs/architecture.md)
	$(PY) scripts/import_graph.py

format: install  ## rewrite the tree as `make lint` wants it: ruff format, then ruff's safe fixes (imports, ...)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install  ## speed benchmarks on Gowalla, side by side with a plain PyTorch loop
	$(PY) benchmarks/bench_training.py --batch 256 1024 --variants shared sparse_adam bf16
	$(PY) benchmarks/bench_evaluation.py

bench-variants: install  ## accuracy of the named fast variants against the default path (3 Gowalla epochs each)
	$(PY) benchmarks/bench_variants.py

notebooks: install  ## execute both notebooks into reports/notebooks/ (after syncing each .ipynb with its .py)
	$(PY) notebooks/execute.py --sync
	$(PY) notebooks/execute.py

ui: install  ## MLflow UI on http://127.0.0.1:5000 (loopback only)
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port $${PORT:-5000}

dashboard: install  ## optuna-dashboard on http://127.0.0.1:8080 for the studies in STORAGE (loopback only)
	$(VENV)/bin/optuna-dashboard $${STORAGE:-sqlite:///optuna.db} --host 127.0.0.1 --port $${PORT:-8080}

test-postgres: install  ## a two-worker Optuna sweep against a throwaway PostgreSQL server + MLflow server
	$(PY) scripts/test_postgres.py

test-slurm: install  ## a grid, an Optuna search and a requeued job on a throwaway single-node SLURM cluster (root)
	$(PY) scripts/test_slurm.py

# Reproduce the MML paper: tracked Hydra sweeps defined in conf/experiment/ (MLflow experiment `reproduce`),
# each printing its estimated run time first, then `make report`. SEEDS=1,2,3 for several seeds per cell;
# ARGS= extra overrides (device=cuda, 'hydra.sweeper.params.loss="mml,ccl"', hydra/launcher=joblib, ...).
SEEDS ?= 1
ESTIMATE := $(PY) scripts/estimate_runtime.py
SWEEP := $(PY) -m mmlexp -m
REPORT_EXPERIMENT ?= reproduce
REPORT_NAME ?= paper

reproduce-table2: install  ## Table 2: {MF, SimpleX} x {CCL, MML} x early stop Y/N, 100 negatives, 100 epochs, both datasets
	$(ESTIMATE) +experiment=table2 seed=$(SEEDS) $(ARGS)
	$(SWEEP) +experiment=table2 seed=$(SEEDS) $(ARGS)
	$(MAKE) --no-print-directory report

reproduce-table3: install  ## Table 3: 7 losses with MF, 100 negatives, 100 epochs, both datasets
	$(ESTIMATE) +experiment=table3 seed=$(SEEDS) $(ARGS)
	$(SWEEP) +experiment=table3 seed=$(SEEDS) $(ARGS)
	$(MAKE) --no-print-directory report

reproduce-fig3: install  ## Figure 3: MML / CCL / BSL with MF at 10 ... 800 negatives, 100 epochs, both datasets
	$(ESTIMATE) +experiment=fig3 seed=$(SEEDS) $(ARGS)
	$(SWEEP) +experiment=fig3 seed=$(SEEDS) $(ARGS)
	$(MAKE) --no-print-directory report

# A dataset's reproduction plan (conf/reproduce/$(DATASET).yaml: gowalla, yelp2018): the runs in priority order.
# Stores in RUNS (default: $$MMLEXP_RUNS_DIR, else the user data dir; never in the checkout's history).
DATASET ?=
RUNS ?=
PLAN_ARGS = $(DATASET) $(if $(RUNS),--runs $(RUNS),) --threads $${THREADS:-2}
need-dataset:
	@test -n "$(DATASET)" || { echo "make: give a plan: DATASET=gowalla or DATASET=yelp2018 (conf/reproduce/)" >&2; exit 2; }

reproduce: install need-dataset  ## DATASET=...: print the plan's estimate, then run every missing run, one at a time (re-run to resume)
	$(PY) -m mmlexp.reproduce run $(PLAN_ARGS)

reproduce-status: install need-dataset  ## DATASET=...: each run of the plan (done / running epoch k/n / pending) and the time left
	$(PY) -m mmlexp.reproduce status $(PLAN_ARGS)

reproduce-queue: install  ## both plans' missing runs in conf/reproduce/queue.yaml's order, one at a time (re-run to resume)
	$(PY) -m mmlexp.reproduce run queue $(if $(RUNS),--runs $(RUNS),) --threads $${THREADS:-2}

reproduce-queue-status: install  ## each entry of the queue (done / running / pending) and the time left for all of it
	$(PY) -m mmlexp.reproduce status queue $(if $(RUNS),--runs $(RUNS),)

# The paper in miniature (conf/reproduce/quick.yaml): a few full Gowalla epochs per run, one at a time, resumable.
reproduce-quick: install  ## MML / CCL / BSL at 10 and 100 negatives, a few full Gowalla epochs each: reports/quick/ (10-25 min on 2 cores)
	$(PY) -m mmlexp.reproduce run quick $(if $(RUNS),--runs $(RUNS),) --threads $${THREADS:-2}
	$(PY) -m mmlexp.reproduce report quick $(if $(RUNS),--runs $(RUNS),) --results reports

report: install  ## DATASET=...: results/<dataset>/ (+ README table); without: reports/$(REPORT_NAME)/ from REPORT_EXPERIMENT
ifneq ($(DATASET),)
	$(PY) -m mmlexp.reproduce report $(PLAN_ARGS)
	$(PY) -m mmlexp.report.readme --results results/gowalla results/yelp2018 --readme README.md
	$(PY) -m mmlexp.report.overview --results results
	$(PY) scripts/docs_results.py --readme README.md
else
	$(PY) -m mmlexp.report --experiment $(REPORT_EXPERIMENT) --name $(REPORT_NAME) $(REPORT_ARGS)
endif

dist: install  ## dist/: sdist and wheel (the configs inside: src/mmlexp/conf links to conf/)
	rm -rf dist build
	$(PY) -m build --outdir dist .

clean:
	rm -rf outputs .pytest_cache .benchmarks .mypy_cache .ruff_cache build dist
