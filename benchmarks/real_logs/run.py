"""Replay a real public log day by day through ingest -> validate -> graph; record how often days
are quarantined or warned, and why.

    .venv/bin/python benchmarks/real_logs/run.py --days 30                      # ml-100k, first 30 days
    .venv/bin/python benchmarks/real_logs/run.py --days 30 --corrupt 15:wrong_day  # one bad day mid-replay
    .venv/bin/python benchmarks/real_logs/run.py --days 30 --code-root /path/to/older/checkout --tag before

Writes results/<tag>.json (every day: verdict, failed rules, warnings with value and band, graph
checks) and results/<tag>.md. ``--code-root`` runs another checkout's components (same stage
functions), which is how the "before" numbers were taken.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", default="ml-100k")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--corrupt", default=None, help="INDEX:KIND, e.g. 15:wrong_day (synthetic.corrupt_landing kinds)")
    parser.add_argument("--no-graph", action="store_true")
    parser.add_argument("--code-root", default=str(HERE.parent.parent))
    parser.add_argument("--tag", default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    import pandas as pd
    import yaml

    work = Path(tempfile.mkdtemp(prefix="real-logs-"))
    sys.path.insert(0, str(HERE.parent.parent))
    from components.data.sources.public_logs import public_log
    from components.data.sources.replay import read_timestamped

    # As u.data (the oldest format every checkout reads), so older code replays the same rows.
    frame = read_timestamped(public_log(args.log))
    udata = work / "u.data"
    pd.DataFrame({"u": frame["user_id"], "i": frame["item_id"], "r": frame["rating"],
                  "t": (frame["ts"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)}).to_csv(udata, sep="\t", header=False, index=False)
    # Then the stages of the checkout under test (``--code-root``).
    for name in [m for m in sys.modules if m == "components" or m.startswith("components.")]:
        del sys.modules[name]
    sys.path.insert(0, args.code_root)
    from components.core.config import load_config
    from components.data.graph import run_graph
    from components.data.ingest import run_ingest
    from components.data.sources.replay import replay
    from components.data.sources.synthetic import corrupt_landing
    from components.core.catalog import Layout
    from components.core.refs import AcceptedRef, DayRef
    from components.data.validate import run_validate
    from components.data.validation_result import DataValidationError
    from components.pipeline import catalog_inputs

    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    cfg = load_config(overrides={"root": str(work / "root"), **overrides})
    layout = Layout.at(cfg.root)
    days = replay(udata, layout.root / "landing", max_days=args.days).days
    corrupt_index, corrupt_kind = (int(args.corrupt.split(":")[0]), args.corrupt.split(":")[1]) if args.corrupt else (None, None)
    if corrupt_index is not None:
        corrupt_landing(layout.landing(days[corrupt_index]), corrupt_kind)

    records, started = [], time.perf_counter()
    for index, day in enumerate(days):
        record = {"day": day, "corrupted": index == corrupt_index}
        staged = run_ingest(layout, day, cfg)
        rows = record["rows"] = staged.rows
        try:
            result = run_validate(layout, day, cfg, staged=DayRef.of(staged),
                                  **catalog_inputs("validate", day, layout, cfg))
        except DataValidationError:
            attempt = sorted(layout.quarantine(day).iterdir())[-1]
            rules = json.loads((attempt / "validation.json").read_text())["result"]["rules"]
            record.update(verdict="quarantined",
                          failed=[_describe(r) for r in rules if _is_failure(r)],
                          warnings=[_describe(r) for r in rules if r.get("severity") == "warn" and not r["success"]])
        else:
            warnings = getattr(result, "warnings", ())
            record.update(verdict="warned" if warnings else "passed", failed=[],
                          warnings=[_describe(r.__dict__) for r in warnings])
            if not args.no_graph and index > 0:
                graph = run_graph(layout, day, cfg, accepted=AcceptedRef.of(result),
                                  **catalog_inputs("graph", day, layout, cfg))
                stats = json.loads((Path(graph.path) / "stats.json").read_text())
                record["graph_checks"] = {c["check"]: [c["value"], c["verdict"]] for c in stats.get("checks", [])}
        records.append(record)
        print(f"{day} {record['verdict']:11s} rows {rows:5d} "
              + "; ".join(record["failed"] + record["warnings"])[:300], flush=True)
    elapsed = time.perf_counter() - started

    quarantined = [r for r in records if r["verdict"] == "quarantined"]
    warned = [r for r in records if r["verdict"] == "warned"]
    why = collections.Counter(line.split(":")[0] for r in records for line in r["failed"] + r["warnings"])
    summary = {
        "log": args.log, "days": len(days), "first_day": days[0], "last_day": days[-1], "corrupt": args.corrupt,
        "code_root": args.code_root, "overrides": overrides,
        "quarantined_days": len(quarantined), "quarantine_rate": round(len(quarantined) / len(days), 3),
        "warned_days": len(warned), "warning_rate": round(len(warned) / len(days), 3),
        "rule_counts": dict(why.most_common()), "seconds": round(elapsed, 1),
        "machine": "2-core CPU shared with other jobs, no GPU",
    }
    tag = args.tag or f"{args.log}_{len(days)}d" + (f"_corrupt{corrupt_index}" if args.corrupt else "")
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / f"{tag}.json").write_text(json.dumps({"summary": summary, "days": records}, indent=1, default=str) + "\n")
    lines = [f"# {args.log}: {len(days)} replayed days ({days[0]} .. {days[-1]}), tag {tag}", "",
             f"quarantined {len(quarantined)} ({summary['quarantine_rate']:.0%}), warned {len(warned)} "
             f"({summary['warning_rate']:.0%}); {elapsed:.0f} s on a {summary['machine']}", "",
             "| rule | days |", "|---|---|"] + [f"| {k} | {v} |" for k, v in why.most_common()]
    lines += ["", "| day | verdict | rows | failed / warnings |", "|---|---|---|---|"]
    lines += [f"| {r['day']}{' (corrupted)' if r['corrupted'] else ''} | {r['verdict']} | {r['rows']} | "
              f"{'<br>'.join(r['failed'] + r['warnings'])} |" for r in records]
    (out / f"{tag}.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


def _is_failure(rule: dict) -> bool:
    return not rule["success"] and rule.get("severity", "quarantine") == "quarantine" and not rule.get("skipped")


def _describe(rule: dict) -> str:
    name = f"{rule['rule']}({rule['column']})" if rule.get("column") else rule["rule"]
    band = rule.get("band")
    text = f"{name}: observed {rule.get('observed')}"
    if band:
        text += f", band {'<= ' + str(band[1]) if band[0] is None else list(band)}"
    elif rule.get("expected"):
        text += f", expected {rule['expected'][:80]}"
    return text


if __name__ == "__main__":
    raise SystemExit(main())
