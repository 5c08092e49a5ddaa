#!/usr/bin/env bash
# The GPU benchmark in one prepared script (issue 19): the CUDA unit tests, then benchmarks/gpu/run.py
# (teachers, evaluation pass, students, ONNX + engine on the device), within 8 minutes on one GPU.
#   benchmarks/gpu/run.sh            # full run (on a GPU machine)
#   benchmarks/gpu/run.sh --smoke    # reduced sizes, anywhere: proves it runs end to end
# Results: benchmarks/gpu/results/<label>.json|md (+ device-tests.txt).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
mkdir -p benchmarks/gpu/results
# the device tests skip with their reason where CUDA is absent; on a GPU they must pass
"$PY" -m pytest -q -rs tests/unit/model/test_device_and_memory.py -k "cuda or bit_for_bit" 2>&1 | tee benchmarks/gpu/results/device-tests.txt
exec timeout --signal=INT "${GPU_BENCH_TIMEOUT_S:-480}" "$PY" benchmarks/gpu/run.py "$@"
