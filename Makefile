# Two commands do all set-up on a fresh machine:
#   make demo   creates .venv, then runs the nightly DAG end to end over generated days (SQLite, CPU)
#   make test   creates .venv, then runs the test suite (unit, DAG integrity, end-to-end)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU wheel of torch (on disk here); GPU users install their CUDA torch into the venv first.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: venv demo test test-fast benchmark clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test]"
	# MovieLens-100k for the real-log tests: only the data file the RecBole wheel ships is read
	# (components/data/sources/public_logs.py); --no-deps because RecBole's pins conflict with Airflow's.
	$(PY) -m pip install --quiet --no-deps "recbole==1.2.1"
	touch $@

demo: venv
	$(PY) -m components.cli demo

test: venv
	OMP_NUM_THREADS=2 $(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: venv
	$(PY) -m pytest -q -m "not e2e" $(PYTEST_ARGS)

benchmark: venv
	$(PY) benchmarks/gowalla/run.py

clean:
	rm -rf .graphdistill .pytest_cache
