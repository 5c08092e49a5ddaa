"""The same three nights (tests/stack: history only, bootstrap promotion, quarantine), back to back:
in-process under `airflow dags test` (SQLite, a local root) and scheduler-driven on the stack (Postgres,
Celery workers, the root on s3://graphdistill/root). Wall time of the three nights each way and the ratio;
on the stack, per night: its run's wall time, the object store's traffic (SeaweedFS's own counters:
bytes received and sent, PUT/GET/LIST requests; task logs included) and what the root grew by.
Writes results/nights.json and results/nights.md.
Run: OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/stack/nights.py
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from components.cli import run_dag_day  # noqa: E402
from graphdistill_airflow import stack as stack_mod  # noqa: E402
from tests.stack.conftest import NIGHTS, client_env, land_nights, nights_config  # noqa: E402
from tests.stack.test_nights import DAG, _patch  # noqa: E402

RESULTS = Path(__file__).with_name("results")


def dags_test(base: Path) -> dict:
    root = base / "dags_test"
    root.mkdir(parents=True)
    config = nights_config(root)
    land_nights(str(root))
    started = time.monotonic()
    rcs = [run_dag_day(root, day, {"root": str(root), "config_file": str(config)}, root / f"{day}.log")
           for day in NIGHTS]
    return {"wall_s": round(time.monotonic() - started, 1), "exit_codes": rcs}


# SeaweedFS's Prometheus counters of the bucket: bytes written into it and read from it, requests by type.
_COUNTER = re.compile(r'^SeaweedFS_s3_(bucket_traffic_(?:received|sent)_bytes_total|request_total)\{([^}]*)\} (\S+)$')


def store_counters(stack: stack_mod.Stack) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.ports['weed-metrics']}/metrics", timeout=10) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _COUNTER.match(line)
        if m is None or f'bucket="{stack.settings.bucket}"' not in m.group(2):
            continue
        name = m.group(1).split("_total")[0].replace("bucket_traffic_", "")
        if name == "request":
            name = "requests_" + re.search(r'type="(\w+)"', m.group(2)).group(1)
        out[name] = out.get(name, 0) + float(m.group(3))
    return out


def root_bytes(stack: stack_mod.Stack) -> int:
    from components.core.catalog import object_root
    from components.core.remote import connect

    return sum(e.size for e in connect(object_root(stack.root)).entries().values())


def _seconds(run: dict) -> float:
    return round((dt.datetime.fromisoformat(run["end_date"]) - dt.datetime.fromisoformat(run["start_date"]))
                 .total_seconds(), 1)


def on_stack(base: Path) -> dict:
    state = base / "stack"
    state.mkdir(parents=True)
    config = nights_config(state)
    stack = stack_mod.up(state, stack_mod.load_settings(task_retries=0),
                         extra_env={"GRAPHDISTILL_START_DATE": NIGHTS[0], "GRAPHDISTILL_CONFIG": str(config)})
    try:
        os.environ.update(client_env(stack, "benchmark"))
        land_nights(stack.root, client_env(stack, "producer"))
        api = stack.api
        while api.get(f"/api/v2/dags/{DAG}", api.token())[0] != 200:
            time.sleep(1)
        # Sampled when each run ends (2 s polls; max_active_runs=1: the next night starts after it).
        samples = [(store_counters(stack), root_bytes(stack))]
        started = time.monotonic()
        _patch(stack, f"/api/v2/dags/{DAG}", {"is_paused": False}, api.token())
        while True:
            runs = api.get_json(f"/api/v2/dags/{DAG}/dagRuns?order_by=id", api.token())["dag_runs"]
            done = [r for r in runs if r["state"] in ("success", "failed")]
            while len(samples) <= len(done):
                samples.append((store_counters(stack), root_bytes(stack)))
            if len(done) >= len(NIGHTS):
                break
            time.sleep(2)
        wall_s = round(time.monotonic() - started, 1)
        nights = []
        for run, (before, root_before), (after, root_after) in zip(runs, samples, samples[1:]):
            nights.append({"day": run["data_interval_start"][:10], "state": run["state"], "run_wall_s": _seconds(run),
                           **{k: int(after.get(k, 0) - before.get(k, 0)) for k in sorted(after)},
                           "root_grew_bytes": root_after - root_before})
        return {"wall_s": wall_s, "states": [r["state"] for r in runs], "nights": nights,
                "landed_bytes": samples[0][1], "root_bytes_after": samples[-1][1]}
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
    lines = ["# Three nights: `airflow dags test` vs the stack", "",
             "Same landed world and config (tests/stack: history only, bootstrap promotion, quarantine), back to back.",
             "", "| how | wall time of the 3 nights (s) |", "| --- | ---: |",
             f"| `airflow dags test`, in-process, SQLite, local root | {inproc['wall_s']} |",
             f"| stack: scheduler catch-up, Celery workers, Postgres, root on s3://graphdistill/root | {stacked['wall_s']} |",
             f"| ratio stack / dags test | {result['ratio_stack_over_dags_test']} |", "",
             "The stack's time counts from the unpause (stack start-up: startup.md) and includes scheduling and",
             "one process per task on the workers, each task hydrating its worker's copy from the store and",
             "publishing what it wrote.", "",
             "## Per night on the stack (object store: SeaweedFS's counters of the bucket)", "",
             "| night | state | run wall s | bytes written | bytes read | PUT | GET | LIST | root grew by |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {n['day']} | {n['state']} | {n['run_wall_s']} | {n.get('received_bytes', 0):,} | {n.get('sent_bytes', 0):,} "
              f"| {n.get('requests_PUT', 0)} | {n.get('requests_GET', 0)} | {n.get('requests_LIST', 0)} "
              f"| {n['root_grew_bytes']:,} |" for n in stacked["nights"]]
    lines += ["", f"Landed before the nights (by `graphdistill generate` through the store): {stacked['landed_bytes']:,} bytes; "
              f"the root after them: {stacked['root_bytes_after']:,} bytes.",
              "Bytes written/read count every request to the bucket during the night, task logs (s3://graphdistill/logs)",
              "and overwritten mutable records included; \"root grew by\" is the net growth of s3://graphdistill/root.",
              "Each night is sampled when its run ends (2 s polls), so a few seconds of the next night can fall in it.", ""]
    (RESULTS / "nights.md").write_text("\n".join(lines))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
