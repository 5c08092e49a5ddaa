"""Nightly at Gowalla scale: the real DAG (``airflow dags test``, as ``graphdistill demo`` runs it)
on a generated world of ~30k users, 40k items and ~1M interactions in the training window.

    PYTHONPATH=. .venv/bin/python benchmarks/nightly_scale/run.py                  # 30k users, 40k items
    PYTHONPATH=. .venv/bin/python benchmarks/nightly_scale/run.py --set teacher.kind=graph_filter

1. ``graphdistill generate`` writes ``--days`` landing partitions (its own process: wall time and
   peak RSS from the kernel's rusage).
2. The days before the measured night(s) are ingested and validated (the first two stages of their
   own nights, outside Airflow: what the benchmark measures is one night, not the backfill).
3. ``airflow dags test`` runs the last ``--nights`` days, each a complete night (features, graph,
   teacher, distill, prune, export, convert, evaluate, gate, register, promote, report). The first
   measured night bootstraps the champion; a second one is a steady-state night with a champion.
   Per-task wall time comes from Airflow's own task_instance records; peak RSS of the whole process
   tree is sampled every 0.5 s, and the kernel's max RSS of the largest process is read after.

Writes results/<label>.json and results/<label>.md. Not a test: its numbers are quoted, not asserted.
Targets: the whole night <= 15 minutes and <= 8 GB on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import platform
import resource
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

from components.cli import DAG_ID, _overrides, airflow_env, day_summary, run_dag_day  # noqa: E402
from components.pipeline import resolve, run_stage  # noqa: E402
from components.core.catalog import Layout, latest_run, read_json, write_json  # noqa: E402

log = logging.getLogger("benchmarks.nightly_scale")
TARGETS = {"night_minutes": 15.0, "peak_rss_gb": 8.0}
GB = 2**30


class TreeRssSampler:
    """Peak of the summed RSS of this process's descendants, sampled every ``interval`` seconds."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for child in me.children(recursive=True):
                with contextlib.suppress(psutil.Error):  # exited between listing and reading
                    total += child.memory_info().rss
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def __enter__(self) -> "TreeRssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_measured(cmd: list[str], env: dict[str, str] | None = None) -> dict:
    """Run ``cmd``; its wall time and the kernel's peak RSS for it (and its waited children)."""
    tic = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed (rc={proc.returncode}):\n{output[-3000:]}")
    return {"seconds": round(time.perf_counter() - tic, 1), "peak_rss_gb": round(usage.ru_maxrss * 1024 / GB, 3)}


def task_durations(airflow_db: Path, day: str) -> list[dict]:
    """Airflow's own record of each task of the run for ``day`` (logical date = day + 1)."""
    logical = (dt.date.fromisoformat(day) + dt.timedelta(days=1)).isoformat()
    with sqlite3.connect(airflow_db) as db:
        rows = db.execute(
            "SELECT ti.task_id, ti.state, ti.start_date, ti.end_date, ti.duration FROM task_instance ti "
            "JOIN dag_run dr ON ti.dag_id = dr.dag_id AND ti.run_id = dr.run_id "
            "WHERE ti.dag_id = ? AND substr(dr.logical_date, 1, 10) = ? ORDER BY ti.start_date IS NULL, ti.start_date",
            (DAG_ID, logical),
        ).fetchall()
    return [{"task": t, "state": s, "start": a, "end": b, "seconds": round(d, 1) if d is not None else None}
            for t, s, a, b, d in rows]


def night(root: Path, day: str, conf: dict, logs: Path, timeout_s: float | None) -> dict:
    log.info("night %s: airflow dags test (log %s)", day, logs / f"{day}.log")
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    tic = time.perf_counter()
    with TreeRssSampler() as sampler:
        try:
            rc = run_dag_day(root, day, conf, logs / f"{day}.log", timeout_s)
            outcome = "success" if rc == 0 else f"failed (rc={rc})"
        except subprocess.TimeoutExpired:  # the tasks that finished keep their Airflow records
            outcome = f"killed after {timeout_s / 60:.0f} min (--night-timeout-minutes)"
    seconds = time.perf_counter() - tic
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = {
        "day": day,
        "dag_run": outcome,
        "wall_seconds": round(seconds, 1),
        "peak_tree_rss_gb": round(sampler.peak / GB, 3),
        # ru_maxrss of children is a running maximum: only an increase is this night's.
        "peak_process_rss_gb": round(after * 1024 / GB, 3) if after > before else None,
        **recorded(root, day),
    }
    log.info("night %s: %s in %.0f s, peak tree RSS %.2f GB", day, result["dag_run"], seconds, sampler.peak / GB)
    return result


def recorded(root: Path, day: str) -> dict:
    """What the night's run recorded: Airflow's task durations, the day summary, the graph's size and
    the evaluation's segments (all / warm / cold users, each model as served: the cold segment is
    serving's fold-in from the Feast online store for the candidate, popularity for the baseline)."""
    layout = Layout.at(root)
    latest = latest_run(layout, day)
    records = Path(latest["dir"]) if latest else layout.reports(day) / "missing"
    read = lambda name: read_json(records / name) if (records / name).exists() else {}  # noqa: E731
    graph, evaluation = read("stages/graph.json"), read("evaluation.json")
    segments = {model: {seg: {k: m.get(k) for k in ("ndcg@20", "recall@20", "users_evaluated")}
                        for seg, m in by_segment.items()}
                for model, by_segment in (evaluation.get("segments") or {}).items()}
    return {
        "tasks": task_durations(root / "airflow" / "airflow.db", day),
        "summary": day_summary(layout, day),
        "graph": {k: graph.get(k) for k in ("num_users", "num_items", "train_pairs", "holdout")},
        "segments": segments,
        "cold_answer": evaluation.get("cold_answer"),
        "answered_by": evaluation.get("answered_by"),  # model -> users answered by its embeddings / fold-in / popularity
    }


def segment_table(n: dict) -> list[str]:
    if not n.get("segments"):
        return []
    lines = [f"Evaluation on the night's fresh day, every model as served (cold users: {n.get('cold_answer')}), "
             "NDCG@20 / Recall@20 (users):", "",
             "| model | all | warm | cold |", "|---|---|---|---|"]
    for model, by in n["segments"].items():
        cell = lambda m: f"{m['ndcg@20']:.4f} / {m['recall@20']:.4f} ({m['users_evaluated']})" if m else ""  # noqa: E731
        lines.append(f"| {model} | {cell(by.get('all'))} | {cell(by.get('warm'))} | {cell(by.get('cold'))} |")
    answered = n.get("answered_by") or {}
    lines += ["", "Users answered by each model's embeddings / serving's fold-in / popularity: " + "; ".join(
        f"{model} {a.get('model', 0)} / {a.get('fold_in', 0)} / {a.get('popularity', 0)}" for model, a in answered.items())]
    return lines + [""]


def markdown(results: dict) -> str:
    lines = [
        f"# Nightly at scale: {results['label']}",
        "",
        f"Machine: {results['machine']['cpus']} CPUs, {results['machine']['memory_gb']} GB RAM, "
        f"load average at start {results['machine']['load_at_start']}.  ",
        f"Command: `{results['command']}`  ",
        f"World: {results['world']['users']} users, {results['world']['items']} items, "
        f"{results['world']['days']} days; overrides: `{json.dumps(results['overrides'])}`",
        "",
        f"Generate ({results['world']['days']} days): {results['generate']['seconds']} s, "
        f"peak RSS {results['generate']['peak_rss_gb']} GB.  ",
        f"Prepare (ingest + validate of {len(results['prepare']['days'])} earlier days, outside Airflow): "
        f"{results['prepare']['seconds']} s.",
        "",
    ]
    for n in results["nights"]:
        graph = n["graph"]
        lines += [
            f"## Night {n['day']}: {n['dag_run']}, {n['wall_seconds'] / 60:.1f} min, "
            f"peak RSS {n['peak_tree_rss_gb']} GB (process tree)",
            "",
            f"Graph: {graph.get('num_users')} users, {graph.get('num_items')} items, "
            f"{graph.get('train_pairs')} training pairs. Gate verdict: {n['summary'].get('verdict')} "
            f"({n['summary'].get('users_evaluated')} users); {n['summary'].get('outcome')}.",
            "",
            "| task | state | seconds |",
            "|---|---|---:|",
            *[f"| {t['task']} | {t['state']} | {t['seconds']} |" for t in n["tasks"]],
            "",
            *segment_table(n),
            f"Target: night <= {TARGETS['night_minutes']} min: "
            f"{'met' if n['wall_seconds'] <= 60 * TARGETS['night_minutes'] else 'NOT met'}; "
            f"peak RSS <= {TARGETS['peak_rss_gb']} GB: "
            f"{'met' if n['peak_tree_rss_gb'] <= TARGETS['peak_rss_gb'] else 'NOT met'}.",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=30000)
    parser.add_argument("--items", type=int, default=40000)
    parser.add_argument("--days", type=int, default=29, help="landing days; the last --nights run through Airflow")
    parser.add_argument("--nights", type=int, default=1)
    parser.add_argument("--start", default="2026-01-01")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", default=str(REPO / ".graphdistill" / "nightly_scale"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    parser.add_argument("--night-timeout-minutes", type=float, default=None,
                        help="kill a night that runs longer (its finished tasks are still reported)")
    parser.add_argument("--label", default=None, help="results file name (default: <users>u-<items>i)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--collect", metavar="JSON", default=None,
                        help="re-read the finished nights of a results JSON from its --root (records, segments) "
                             "and re-render it; runs nothing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.collect:
        results = read_json(args.collect)
        for n in results["nights"]:
            n.update(recorded(Path(args.root).resolve(), n["day"]))
        write_json(Path(args.collect), results)
        Path(args.collect).with_suffix(".md").write_text(markdown(results))
        print(markdown(results))
        return 0
    if not 1 <= args.nights < args.days:
        parser.error("--nights must be at least 1 and fewer than --days (earlier days form the window)")

    root = Path(args.root).resolve()
    # The run starts from an empty root: a second run on the same root would delete the first's files.
    root.parent.mkdir(parents=True, exist_ok=True)
    lock = open(root.parent / f".{root.name}.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        parser.error(f"another nightly_scale run is using {root}; pass another --root")
    shutil.rmtree(root, ignore_errors=True)
    overrides = _overrides(args.set)
    cfg = resolve(str(root), None, overrides)
    first = dt.date.fromisoformat(args.start)
    days = [(first + dt.timedelta(days=i)).isoformat() for i in range(args.days)]
    label = args.label or f"{args.users}u-{args.items}i"
    out = Path(args.out)
    results = {
        "label": label,
        "command": " ".join(["benchmarks/nightly_scale/run.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": {"cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / GB, 1),
                    "load_at_start": [round(x, 2) for x in os.getloadavg()], "platform": platform.platform()},
        "world": {"users": args.users, "items": args.items, "days": args.days, "seed": args.seed},
        "overrides": overrides,
        "targets": TARGETS,
        "nights": [],
    }

    log.info("generate %d days of %d users x %d items into %s", args.days, args.users, args.items, root)
    results["generate"] = run_measured([
        sys.executable, "-m", "components.cli", "generate", "--root", str(root), "--start", args.start,
        "--days", str(args.days), "--users", str(args.users), "--items", str(args.items), "--seed", str(args.seed),
    ], env={**os.environ, "PYTHONPATH": str(REPO)})
    log.info("generate: %s", results["generate"])

    earlier = days[: -args.nights]
    tic = time.perf_counter()
    for i, day in enumerate(earlier, 1):
        run_stage("validate", day, cfg, inputs={"staged": run_stage("ingest", day, cfg)})
        log.info("prepare: %s ingested and validated (%d/%d)", day, i, len(earlier))
    results["prepare"] = {"days": earlier, "seconds": round(time.perf_counter() - tic, 1)}

    conf = {"root": str(root), "overrides": overrides}
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = airflow_env(root)
    subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"], env=env, check=True,
                   capture_output=True)  # outside the measured night, as on a running deployment
    for day in days[-args.nights:]:
        timeout_s = 60 * args.night_timeout_minutes if args.night_timeout_minutes else None
        results["nights"].append(night(root, day, conf, logs, timeout_s))
        write_json(out / f"{label}.json", results)  # after each night: a run cut short keeps its numbers
        (out / f"{label}.md").write_text(markdown(results))
    print(markdown(results))
    return 0 if all(n["dag_run"] == "success" for n in results["nights"]) else 1


if __name__ == "__main__":
    sys.exit(main())
