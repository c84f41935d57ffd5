# `make run` and `make test` set everything up on a fresh machine (idempotent: a second call installs nothing).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Tests and benchmarks read the offline copies of Gowalla/Yelp2018 beside the repo.
export MMLEXP_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: install run test test-slow test-postgres bench ui dashboard clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

run: install  ## train MF + MML on the embedded sample dataset and print its metrics
	$(PY) -m mmlexp $(ARGS)

test: install  ## the test suite (real-data checks marked slow are left to `make test-slow`)
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: install  ## real-data checks on Gowalla (minutes)
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

bench: install  ## speed benchmarks on Gowalla, side by side with a plain PyTorch loop
	$(PY) benchmarks/bench_training.py
	$(PY) benchmarks/bench_evaluation.py

ui: install  ## MLflow UI on http://127.0.0.1:5000 (loopback only)
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port $${PORT:-5000}

dashboard: install  ## optuna-dashboard on http://127.0.0.1:8080 for the studies in STORAGE (loopback only)
	$(VENV)/bin/optuna-dashboard $${STORAGE:-sqlite:///optuna.db} --host 127.0.0.1 --port $${PORT:-8080}

test-postgres: install  ## a two-worker Optuna sweep against a throwaway PostgreSQL server + MLflow server
	$(PY) scripts/test_postgres.py

clean:
	rm -rf outputs .pytest_cache .benchmarks
