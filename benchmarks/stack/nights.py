"""The same three nights (tests/stack: history only, bootstrap promotion, quarantine), back to back:
in-process under `airflow dags test` (SQLite) and scheduler-driven on the stack (Postgres, Celery
workers). Wall time of the three nights each way and the ratio.
Writes results/nights.json and results/nights.md.
Run: OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/stack/nights.py
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from components.cli import run_dag_day  # noqa: E402
from graphdistill_airflow import stack as stack_mod  # noqa: E402
from tests.stack.conftest import NIGHTS, land_nights  # noqa: E402
from tests.stack.test_nights import DAG, _patch  # noqa: E402

RESULTS = Path(__file__).with_name("results")


def dags_test(base: Path) -> dict:
    root = base / "dags_test"
    config = land_nights(root)
    started = time.monotonic()
    rcs = [run_dag_day(root, day, {"root": str(root), "config_file": str(config)}, root / f"{day}.log")
           for day in NIGHTS]
    return {"wall_s": round(time.monotonic() - started, 1), "exit_codes": rcs}


def on_stack(base: Path) -> dict:
    state = base / "stack"
    config = land_nights(state / "root")
    stack = stack_mod.up(state, stack_mod.load_settings(task_retries=0),
                         extra_env={"GRAPHDISTILL_START_DATE": NIGHTS[0], "GRAPHDISTILL_CONFIG": str(config)})
    try:
        api = stack.api
        while api.get(f"/api/v2/dags/{DAG}", api.token())[0] != 200:
            time.sleep(1)
        started = time.monotonic()
        _patch(stack, f"/api/v2/dags/{DAG}", {"is_paused": False}, api.token())
        while True:
            runs = api.get_json(f"/api/v2/dags/{DAG}/dagRuns?order_by=id", api.token())["dag_runs"]
            if len(runs) >= len(NIGHTS) and all(r["state"] in ("success", "failed") for r in runs):
                break
            time.sleep(2)
        return {"wall_s": round(time.monotonic() - started, 1), "states": [r["state"] for r in runs]}
    finally:
        stack_mod.down(state, quiet=True)


def main() -> int:
    base = Path(tempfile.mkdtemp(prefix="graphdistill-nights-bench-"))
    try:
        inproc = dags_test(base)
        stacked = on_stack(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    result = {"nights": NIGHTS, "dags_test": inproc, "stack": stacked,
              "ratio_stack_over_dags_test": round(stacked["wall_s"] / inproc["wall_s"], 2)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "nights.json").write_text(json.dumps(result, indent=1))
    (RESULTS / "nights.md").write_text("\n".join([
        "# Three nights: `airflow dags test` vs the stack", "",
        "Same landed world and config (tests/stack: history only, bootstrap promotion, quarantine), back to back.", "",
        "| how | wall time of the 3 nights (s) |", "| --- | ---: |",
        f"| `airflow dags test`, in-process, SQLite | {inproc['wall_s']} |",
        f"| stack: scheduler catch-up, Celery workers, Postgres | {stacked['wall_s']} |",
        f"| ratio stack / dags test | {result['ratio_stack_over_dags_test']} |", "",
        "The stack's time counts from the unpause (stack start-up: startup.md) and includes scheduling and",
        "one process per task on the workers. Object-store bytes per night: 0 until the artifact root moves",
        "onto s3:// (not wired yet).", ""]))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
