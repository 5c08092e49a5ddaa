"""Ingest + validate of one landed day at 1 M, 5 M and 20 M rows: rows/s and peak RSS (issue 20:
"a 1.2 GB day (19.8 M rows) is OOM-killed at 8 GB in validate").

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python benchmarks/validate_scale/run.py \
        --sizes 1000000 5000000 20000000 --repeats 3 --baseline c50903c --baseline-sizes 1000000

1. The day is landed once per size by a streaming writer: part files of at most ``--part-rows``
   rows (as producers deliver big days), or with ``--files 1`` one file holding every part (a day
   landed whole: ingest reads it in chunks of ``validation.landing_chunk_rows``), as ``--format``
   parquet or csv; each part a day of the synthetic world (components/data/sources/synthetic.py)
   moved onto the measured day, plus 0.5% redelivered rows (at-least-once delivery, so
   deduplication works at scale); generating is not measured.
2. Each measurement is its own process (``measure``): ``run_ingest`` then ``run_validate`` on a
   fresh root, peak RSS from the kernel (``ru_maxrss`` of that process) and sampled every 0.5 s by
   the parent, which kills it past ``--kill-gb`` (recorded as such, not as a number).
3. ``--baseline <commit>`` runs the same measurement with that commit's components/ and config/
   (``git archive``), at ``--baseline-sizes``: the code before streaming, in the same run.
The first size is measured ``--repeats`` times (median reported), the larger ones once: the machine
has 2 cores shared with other jobs, so single runs are noisy (the results say so).
Writes results/<label>.json and .md. Not a test: its numbers are quoted, not asserted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results"
DAY = dt.date(2026, 3, 2)
TARGET_GB = 8.0


def land(landing: Path, rows: int, part_rows: int, files: int = 0, fmt: str = "parquet") -> None:
    """Write ``rows`` rows of ``DAY`` in bounded memory (one part of ``part_rows`` rows at a time): a
    file per part (``files`` 0, as producers deliver big days) or one file holding every part
    (``files`` 1: the day a producer lands whole, which ingest must read in chunks), as ``fmt``."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from components.data.sources.synthetic import SyntheticWorld, generate_day, write_log

    # ~2.45 events per user per day: a world whose day is about one part.
    world = SyntheticWorld(num_users=max(1000, int(part_rows / 2.4)), num_items=200_000, num_communities=16,
                           start=DAY - dt.timedelta(days=60), seed=11)
    universe = world.universe()
    landing.mkdir(parents=True)
    written, part, single = 0, 0, None
    try:
        while written < rows:
            source_day = DAY - dt.timedelta(days=part)
            frame = generate_day(world, source_day, universe).iloc[: min(part_rows, rows - written)]
            frame = frame.assign(ts=frame["ts"] + pd.Timedelta(days=part))  # moved onto the measured day
            redelivered = frame.sample(frac=0.005, random_state=part)  # the same events again
            frame = pd.concat([frame.iloc[: len(frame) - len(redelivered)], redelivered], ignore_index=True)
            if not files:
                write_log(frame, landing / f"part-{part:05d}.{fmt}")
            elif fmt == "parquet":
                table = pa.Table.from_pandas(frame, preserve_index=False)
                single = single or pq.ParquetWriter(landing / "day.parquet", table.schema)
                single.write_table(table.cast(single.schema))
            else:  # csv: the header once, then each part appended (as write_log writes it)
                with open(landing / "day.csv", "a") as out:
                    frame.to_csv(out, index=False, header=part == 0, date_format="%Y-%m-%dT%H:%M:%SZ")
            written += len(frame)
            part += 1
            del frame
    finally:
        if single is not None:
            single.close()
    assert written == rows, (written, rows)


def measure(root: Path, landing: Path, chunk_rows: int | None) -> dict:
    """In this process: ingest + validate of DAY from ``landing`` under ``root``."""
    from components.core.catalog import Layout
    from components.core.config import load_config
    from components.data.ingest import run_ingest
    from components.core.refs import DayRef, ValidationHistory
    from components.data.validate import run_validate

    overrides = {"root": str(root)}
    if chunk_rows:
        overrides["validation.chunk_rows"] = chunk_rows
    cfg = load_config(overrides=overrides)
    layout = Layout.at(root)

    def cpu_s() -> float:  # this process's CPU seconds: comparable across loads, unlike wall time
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    started, started_cpu = time.perf_counter(), cpu_s()
    ingest = run_ingest(layout, DAY.isoformat(), cfg, landing=str(landing))
    ingested, ingested_cpu = time.perf_counter(), cpu_s()
    # a fresh root: no earlier day to judge against
    result = run_validate(layout, DAY.isoformat(), cfg, staged=DayRef.of(ingest), history=ValidationHistory())
    done, done_cpu = time.perf_counter(), cpu_s()
    return {"rows": ingest.rows, "accepted_rows": result.accepted_rows, "duplicate_rows": result.duplicate_rows,
            "success": result.success, "ingest_s": round(ingested - started, 1), "validate_s": round(done - ingested, 1),
            "ingest_cpu_s": round(ingested_cpu - started_cpu, 1), "validate_cpu_s": round(done_cpu - ingested_cpu, 1),
            "max_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def run_child(code: Path, landing: Path, chunk_rows: int | None, kill_gb: float) -> dict:
    import psutil

    with tempfile.TemporaryDirectory(prefix="validate_scale_") as root:
        command = [sys.executable, str(Path(__file__).resolve()), "measure", "--root", root, "--landing", str(landing)]
        if chunk_rows:
            command += ["--chunk-rows", str(chunk_rows)]
        env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}
        started = time.perf_counter()
        child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=code)
        sampled, killed = 0, False
        process = psutil.Process(child.pid)
        while child.poll() is None:
            try:
                sampled = max(sampled, process.memory_info().rss)
            except psutil.NoSuchProcess:
                break
            if sampled > kill_gb * 2**30:
                child.kill()
                killed = True
            time.sleep(0.5)
        out, err = child.communicate()
        wall = time.perf_counter() - started
    if killed:
        return {"killed_over_gb": kill_gb, "wall_s": round(wall, 1), "sampled_rss_gb": round(sampled / 2**30, 2)}
    if child.returncode != 0:
        return {"error": err.strip().splitlines()[-1] if err.strip() else f"exit {child.returncode}", "wall_s": round(wall, 1)}
    record = json.loads(out.strip().splitlines()[-1])
    record["wall_s"] = round(wall, 1)
    record["rows_per_s"] = round(record["rows"] / (record["ingest_s"] + record["validate_s"]))
    return record


def baseline_code(commit: str, into: Path) -> Path:
    """That commit's components/ and config/ (read only from git, the worktree untouched)."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "components", "config"],
                             check=True, capture_output=True).stdout
    into.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def summarize(runs: list[dict]) -> dict:
    ok = [r for r in runs if "rows_per_s" in r]
    if len(ok) != len(runs) or not ok:
        return {"runs": runs}
    middle = sorted(ok, key=lambda r: r["ingest_s"] + r["validate_s"])[len(ok) // 2]
    return {"runs": runs, "median": middle, "max_rss_gb_max": max(r["max_rss_gb"] for r in ok),
            "rows_per_s_median": statistics.median(r["rows_per_s"] for r in ok)}


def markdown(doc: dict) -> str:
    lines = [f"# Ingest + validate at scale ({doc['label']})", "",
             f"Command: `{doc['command']}`", "",
             f"Machine: {doc['machine']}; {doc['note']}", "",
             "| code | rows | runs | ingest s | validate s | rows/s | CPU s (ingest + validate) | peak RSS GB (ru_maxrss) "
             "| accepted | within 8 GB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for entry in doc["results"]:
        summary = entry["summary"]
        if "median" not in summary:
            run = summary["runs"][0]
            what = (f"killed at {run['killed_over_gb']} GB after {run['wall_s']} s" if "killed_over_gb" in run
                    else f"error: {run.get('error')}")
            lines.append(f"| {entry['code']} | {entry['rows']:,} | {len(summary['runs'])} | | | | | {what} | | no |")
            continue
        m = summary["median"]
        cpu = f"{m['ingest_cpu_s']} + {m['validate_cpu_s']}" if "ingest_cpu_s" in m else "not recorded"
        lines.append(f"| {entry['code']} | {entry['rows']:,} | {len(summary['runs'])} | {m['ingest_s']} | {m['validate_s']} "
                     f"| {summary['rows_per_s_median']:,.0f} | {cpu} | {summary['max_rss_gb_max']} | {m['accepted_rows']:,} "
                     f"| {'yes' if summary['max_rss_gb_max'] <= TARGET_GB else 'no'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode")
    child = sub.add_parser("measure")
    child.add_argument("--root", type=Path, required=True)
    child.add_argument("--landing", type=Path, required=True)
    child.add_argument("--chunk-rows", type=int)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000, 20_000_000])
    parser.add_argument("--repeats", type=int, default=3, help="runs of the first size (median reported)")
    parser.add_argument("--part-rows", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, choices=[0, 1], default=0,
                        help="0: a file per part; 1: the whole day in one file (read by ingest in chunks)")
    parser.add_argument("--format", choices=["parquet", "csv"], default="parquet", help="landed files' format")
    parser.add_argument("--chunk-rows", type=int, help="validation.chunk_rows (default: config's)")
    parser.add_argument("--baseline", help="a commit to compare with (its components/ and config/)")
    parser.add_argument("--baseline-sizes", type=int, nargs="*", default=[1_000_000])
    parser.add_argument("--kill-gb", type=float, default=12.0)
    parser.add_argument("--label", default="ingest_validate")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "validate_scale")
    args = parser.parse_args()
    if args.mode == "measure":
        print(json.dumps(measure(args.root, args.landing, args.chunk_rows)))
        return
    sys.path.insert(0, str(REPO))
    shutil.rmtree(args.work, ignore_errors=True)
    base = baseline_code(args.baseline, args.work / "baseline") if args.baseline else None
    results = []
    for size in dict.fromkeys([*args.sizes, *(args.baseline_sizes if base else [])]):  # in the order given
        landing = args.work / f"landing-{size}"
        land(landing, size, args.part_rows, args.files, args.format)
        repeats = args.repeats if size == args.sizes[0] else 1
        plans = ([("this branch", REPO, args.chunk_rows)] if size in args.sizes else []) + \
                ([(f"baseline {args.baseline}", base, None)] if base and size in args.baseline_sizes else [])
        for code_name, code, chunk_rows in plans:
            runs = []
            for _ in range(repeats):
                runs.append(run_child(code, landing, chunk_rows, args.kill_gb))
                print(code_name, size, runs[-1], flush=True)
            results.append({"code": code_name, "rows": size, "summary": summarize(runs)})
            write_results(args, results)  # after each size: a long run interrupted keeps what it measured
        shutil.rmtree(landing)


def landing_form(args: argparse.Namespace) -> str:
    if args.files:
        return f"one {args.format} file (written {args.part_rows:,} rows at a time)"
    return f"{args.format} parts of {args.part_rows:,} rows"


def write_results(args: argparse.Namespace, results: list[dict]) -> None:
    doc = {"label": args.label, "command": " ".join(["benchmarks/validate_scale/run.py", *sys.argv[1:]]),
           "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                      f"{round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GB RAM",
           "note": (f"first size given: median of {args.repeats} runs, the others 1 run each; the 2 cores are shared "
                    f"with other jobs (load varies), so times are indicative; peak RSS is the kernel's ru_maxrss of "
                    f"the measuring process; landed as {landing_form(args)} with 0.5% redeliveries"),
           "landed": {"files": "one" if args.files else "a file per part", "format": args.format,
                      "part_rows": args.part_rows},
           "target": {"rows": 20_000_000, "peak_rss_gb": TARGET_GB}, "results": results}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.label}.json").write_text(json.dumps(doc, indent=2) + "\n")
    (RESULTS / f"{args.label}.md").write_text(markdown(doc))


if __name__ == "__main__":
    main()
