"""Stack start-up time and resident memory per service (graphdistill_airflow/stack.py).

Starts the stack in a fresh state folder (cold: initdb, Airflow DB migration), waits 60 s so the
dag-processor has parsed the DAGs and the workers have settled, records each service's RSS (the process
and its children), stops it. Writes results/startup.json and results/startup.md.
Run: OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/stack/run.py
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from graphdistill_airflow import stack as stack_mod  # noqa: E402

RESULTS = Path(__file__).with_name("results")
SETTLE_S = 60


def main() -> int:
    state = Path(tempfile.mkdtemp(prefix="graphdistill-stack-bench-"))
    try:
        started = time.monotonic()
        stack = stack_mod.up(state, stack_mod.load_settings())
        startup_s = round(time.monotonic() - started, 1)
        time.sleep(SETTLE_S)
        rss = {service: stack_mod.rss_mib(pid) for service, pid in stack.pids.items()}
        by_step = json.loads((state / "startup.json").read_text())
    finally:
        stack_mod.down(state, quiet=True)
        shutil.rmtree(state, ignore_errors=True)
    result = {"startup_s": startup_s, "startup_by_step_s": by_step,
              "rss_mib_after_settle": rss, "rss_mib_total": round(sum(rss.values()), 1), "settle_s": SETTLE_S,
              "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores"}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "startup.json").write_text(json.dumps(result, indent=1))
    lines = ["# Stack start-up and memory", "", f"Cold start (initdb, migration, every health check): "
             f"**{startup_s} s** on {result['machine']}; RSS {SETTLE_S} s after start-up (process + children).",
             "", "| service | RSS MiB |", "| --- | ---: |"]
    lines += [f"| {s} | {v} |" for s, v in rss.items()] + [f"| **total** | **{result['rss_mib_total']}** |", ""]
    (RESULTS / "startup.md").write_text("\n".join(lines))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
