"""Replay a real public log night by night through the REAL DAG (``airflow dags test``, as the demo
does) and record, per night, what the automated promotion decided and whether it served the best model.

    .venv/bin/python benchmarks/real_logs/nightly.py --log instacart --nights 20 --tag instacart-before

One artifact root. The log's last ``--nights`` days are the nights; the ``graph.window_days`` days
before them are landed and accepted first through the same ingest and validate stage functions
the DAG runs (the models train on that window), so the first night bootstraps and the later ones
are judged against the champion as of their day. Dates move forward by whole weeks into the DAG's
schedule (weekdays kept). The demo's settings (``components.cli.DEMO_OVERRIDES``); the gates are the
e2e small-world gates by default (``--gates production`` for config/gates.yaml): the Instacart
sample has 593 users, so a night evaluates ~50-140 of them, below the production floor of 300
(every night would be INCONCLUSIVE on that alone).

Per night (results/<tag>.json and .md): outcome, users by segment (all / warm / fold-in / cold, and
users without an unseen test item), NDCG@20 of candidate, champion, popularity and teacher with
90% intervals, the paired relative changes candidate vs champion, candidate vs popularity and
champion vs popularity (bootstrap over the night's users, from the run's per_user.npz), and the
failed gates. Summary: promotion rate and nights whose serving champion was conclusively worse
than popularity (the relative change's whole interval below 0).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DAG_START = dt.date(2026, 1, 1)  # dags/gnn_recsys_nightly.py start_date: earlier logical dates run nothing
MODELS = ("candidate", "champion", "popularity", "teacher")
PAIRS = (("candidate", "champion"), ("candidate", "popularity"), ("champion", "popularity"))


def land_public_log(name: str, root: Path, nights: int, history_days: int, work: Path) -> tuple[list[str], list[str]]:
    """Land the log's last ``history_days + nights`` days under ``root/landing`` (moved by whole weeks
    to start on or after the DAG's start date); accept the history days through ingest + validate.
    Returns (history days, nights)."""
    import pandas as pd

    from components.core.config import load_config
    from components.data.ingest import run_ingest
    from components.data.sources.public_logs import replayable_log
    from components.data.sources.replay import read_timestamped, replay
    from components.core.catalog import Layout
    from components.core.refs import DayRef
    from components.data.validate import run_validate
    from components.pipeline import catalog_inputs

    frame = read_timestamped(replayable_log(name, work))
    day = frame["ts"].dt.strftime("%Y-%m-%d")
    keep = sorted(day.unique())[-(history_days + nights):]
    window = frame[day.isin(keep)]
    source = work / f"{name}-window.csv"  # the generic CSV replay reads (epoch seconds)
    pd.DataFrame({"user": window["user_id"], "item": window["item_id"], "timestamp": (window["ts"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1),
                  "rating": window["rating"]}).to_csv(source, index=False)
    first = dt.date.fromisoformat(keep[0])
    weeks = max(0, -(-(DAG_START - first).days // 7))
    layout = Layout.at(root)
    days = list(replay(source, layout.root / "landing", shift_to=first + dt.timedelta(weeks=weeks)).days)
    cfg = load_config(overrides={"root": str(root)})
    for d in days[:-nights]:
        staged = DayRef.of(run_ingest(layout, d, cfg))
        run_validate(layout, d, cfg, staged=staged, **catalog_inputs("validate", d, layout, cfg))
    return days[:-nights], days[-nights:]


def night_repeat_share(layout, day: str) -> float:
    """Share of the night's accepted events whose (user, item) pair occurs on an earlier accepted day."""
    import pandas as pd

    read = lambda d: pd.read_parquet(layout.accepted(d) / "events.parquet", columns=["user_id", "item_id"])  # noqa: E731
    earlier = pd.concat([read(d) for d in layout.accepted_days() if d < day]).drop_duplicates()
    tonight = read(day)
    seen = tonight.merge(earlier.assign(seen=True), on=["user_id", "item_id"], how="left")["seen"].notna()
    return round(float(seen.mean()), 3)


def _interval(values: np.ndarray, level: float, resamples: int, seed: int) -> list[float]:
    draws = np.random.default_rng(seed).integers(0, len(values), size=(resamples, len(values)))
    means = values[draws].mean(axis=1)
    return [float(np.quantile(means, (1 - level) / 2)), float(np.quantile(means, (1 + level) / 2))]


def _relative_interval(a: np.ndarray, b: np.ndarray, level: float, resamples: int, seed: int) -> dict[str, Any]:
    """Paired percentile bootstrap of mean(a) / mean(b) - 1 over users (the gates' statistic)."""
    draws = np.random.default_rng(seed).integers(0, len(a), size=(resamples, len(a)))
    base = b[draws].mean(axis=1)
    change = a[draws].mean(axis=1) / np.where(base > 0, base, np.nan) - 1
    change = change[np.isfinite(change)]
    if b.mean() <= 0 or change.size == 0:
        return {"value": None, "ci": None, "verdict": "undefined"}
    ci = [float(np.quantile(change, (1 - level) / 2)), float(np.quantile(change, (1 + level) / 2))]
    verdict = "better" if ci[0] > 0 else "worse" if ci[1] < 0 else "inconclusive"
    return {"value": float(a.mean() / b.mean() - 1), "ci": ci, "verdict": verdict}


def night_record(run_dir: Path, level: float = 0.90, resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """What one night decided and measured, read back from its run folder's artifacts."""
    read = lambda name: json.loads((run_dir / name).read_text()) if (run_dir / name).exists() else None  # noqa: E731
    outcome, evaluation, blessing = read("outcome.json"), read("evaluation.json"), read("blessing.json")
    record: dict[str, Any] = {"outcome": outcome["kind"] if outcome else "missing",
                              "reason": outcome.get("reason") if outcome else None,
                              "candidate": outcome.get("candidate") if outcome else None,
                              "champion_before": outcome.get("champion_before") if outcome else None,
                              "champion_after": outcome.get("champion_after") if outcome else None}
    if blessing:
        record["failed_gates"] = list(blessing.get("failed", []))
        record["inconclusive_gates"] = list(blessing.get("inconclusive", []))
    if not evaluation or not (run_dir / "per_user.npz").exists():
        return record
    answered = evaluation.get("answered_by", {}).get("candidate", {})
    record["users"] = {"all": evaluation.get("users_evaluated"), "warm": evaluation.get("warm_users_evaluated"),
                       "fold_in": answered.get("fold_in"), "cold": evaluation.get("cold_users_evaluated"),
                       "without_unseen_test_items": evaluation.get("users_without_unseen_test_items")}
    per_user = np.load(run_dir / "per_user.npz")
    ndcg = {m: per_user[f"{m}__ndcg@20"].astype(float) for m in MODELS if f"{m}__ndcg@20" in per_user.files}
    record["ndcg@20"] = {m: {"mean": float(v.mean()), "ci": _interval(v, level, resamples, seed)} for m, v in ndcg.items()}
    record["relative_change"] = {f"{a}_vs_{b}": _relative_interval(ndcg[a], ndcg[b], level, resamples, seed)
                                 for a, b in PAIRS if a in ndcg and b in ndcg}
    return record


def judge_nights(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's two properties, per night: the serving champion conclusively worse than popularity,
    and a candidate that conclusively beats popularity and the champion (or there is none) promoted."""
    change = lambda r, key: r.get("relative_change", {}).get(key, {}).get("verdict")  # noqa: E731
    below = [change(r, "champion_vs_popularity") == "worse" for r in records]
    qualifies = [change(r, "candidate_vs_popularity") == "better"
                 and (change(r, "candidate_vs_champion") == "better" or "champion" not in r.get("ndcg@20", {}))
                 for r in records]
    longest, run = 0, 0
    for flag in below:
        run = run + 1 if flag else 0
        longest = max(longest, run)
    return {"champion_below_popularity": below, "qualifying_candidate": qualifies,
            "qualifying_not_promoted": [q and r["outcome"] != "promoted" for q, r in zip(qualifies, records)],
            "longest_champion_below_popularity_streak": longest}


def replay_nights(log: str, root: Path, nights: int, overrides: dict[str, Any], gates_file: Path | None,
                  logs: Path, history_days: int | None = None, timeout_s: float | None = None) -> list[dict[str, Any]]:
    """Land ``log`` and run the real DAG (``airflow dags test``) once per night; one record per night."""
    from components.cli import day_summary, run_dag_day
    from components.core.config import load_config
    from components.core.catalog import Layout, latest_run

    window = history_days or load_config(overrides={"root": str(root), **overrides}).graph.window_days
    work = Path(tempfile.mkdtemp(prefix="real-log-"))
    history, night_days = land_public_log(log, root, nights, window, work)
    conf = {"root": str(root), "overrides": {**overrides, **({"gates_file": str(gates_file)} if gates_file else {})}}
    layout, records = Layout.at(root), []
    logs.mkdir(parents=True, exist_ok=True)
    for day in night_days:
        started = time.perf_counter()
        rc = run_dag_day(root, day, conf, logs / f"{day}.log", timeout_s=timeout_s)
        latest = latest_run(layout, day)
        record = {"day": day, "dag_run_rc": rc, "seconds": round(time.perf_counter() - started, 1),
                  "accepted_rows": day_summary(layout, day)["accepted_rows"], "repeat_share": night_repeat_share(layout, day),
                  **(night_record(Path(latest["dir"])) if latest else {"outcome": "missing"})}
        records.append(record)
        print(json.dumps({k: record.get(k) for k in ("day", "outcome", "seconds", "repeat_share", "users", "failed_gates")}), flush=True)
    return records


def _fmt(stat: dict[str, Any] | None) -> str:
    if not stat:
        return "-"
    if "mean" in stat:
        return f"{stat['mean']:.4f} [{stat['ci'][0]:.4f}, {stat['ci'][1]:.4f}]"
    if stat.get("ci") is None:
        return "-"
    return f"{stat['value']:+.0%} [{stat['ci'][0]:+.0%}, {stat['ci'][1]:+.0%}] {stat['verdict']}"


def markdown(summary: dict[str, Any], records: list[dict[str, Any]]) -> str:
    lines = [f"# {summary['log']}: {summary['nights']} nights through the real DAG ({summary['first_night']} .. "
             f"{summary['last_night']}), tag {summary['tag']}", "",
             f"- outcomes: {summary['outcomes']}",
             f"- promotion rate: {summary['promoted']}/{summary['nights']} ({summary['promotion_rate']:.0%})",
             f"- nights whose serving champion was conclusively worse than popularity (relative change's 90% "
             f"interval entirely below 0): {summary['champion_below_popularity_nights']} "
             f"(longest streak {summary['longest_champion_below_popularity_streak']})",
             f"- nights with a candidate conclusively better than popularity and the champion: "
             f"{summary['qualifying_nights']}, of which not promoted: {summary['qualifying_not_promoted']}",
             f"- gates: {summary['gates']}; overrides {summary['overrides']}; {summary['seconds']:.0f} s on a {summary['machine']}",
             "", "| night | outcome | rows (repeat share) | users all/warm/fold-in/cold (no unseen) | candidate "
             "| champion | popularity | teacher | cand vs champ | cand vs pop | champ vs pop | failed gates |",
             "|" + "---|" * 12]
    for r in records:
        u = r.get("users") or {}
        users = f"{u['all']}/{u['warm']}/{u['fold_in']}/{u['cold']} ({u['without_unseen_test_items']})" if u else "-"
        nd, rc = r.get("ndcg@20", {}), r.get("relative_change", {})
        cells = [r["day"], r["outcome"], f"{r.get('accepted_rows')} ({r.get('repeat_share', 0):.0%})", users,
                 *(_fmt(nd.get(m)) for m in MODELS), *(_fmt(rc.get(f"{a}_vs_{b}")) for a, b in PAIRS),
                 ", ".join(r.get("failed_gates", [])) or "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", default="instacart")
    parser.add_argument("--nights", type=int, default=20)
    parser.add_argument("--gates", choices=("small", "production"), default="small")
    parser.add_argument("--root", default=None, help="artifact root (default: a fresh temporary folder)")
    parser.add_argument("--tag", default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))
    from components.cli import DEMO_OVERRIDES, _overrides
    from tests.e2e.small_world import write_small_world_gates

    root = Path(args.root or tempfile.mkdtemp(prefix="real-log-nights-")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    overrides = {**_overrides(DEMO_OVERRIDES), **_overrides(args.set)}
    gates_file = write_small_world_gates(root) if args.gates == "small" else None
    started = time.perf_counter()
    records = replay_nights(args.log, root, args.nights, overrides, gates_file, root / "logs")
    verdicts = judge_nights(records)
    outcomes: dict[str, int] = {}
    for r in records:
        outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
    for r, below, qualifies in zip(records, verdicts["champion_below_popularity"], verdicts["qualifying_candidate"]):
        r["champion_below_popularity"], r["qualifying_candidate"] = below, qualifies
    tag = args.tag or f"{args.log}-{args.nights}n"
    summary = {
        "log": args.log, "tag": tag, "nights": len(records), "first_night": records[0]["day"], "last_night": records[-1]["day"],
        "outcomes": outcomes, "promoted": outcomes.get("promoted", 0),
        "promotion_rate": round(outcomes.get("promoted", 0) / len(records), 3),
        "champion_below_popularity_nights": sum(verdicts["champion_below_popularity"]),
        "longest_champion_below_popularity_streak": verdicts["longest_champion_below_popularity_streak"],
        "qualifying_nights": sum(verdicts["qualifying_candidate"]),
        "qualifying_not_promoted": sum(verdicts["qualifying_not_promoted"]),
        "gates": "tests/e2e/small_world.py SMALL_WORLD_GATES" if gates_file else "config/gates.yaml",
        "overrides": overrides, "root": str(root), "seconds": round(time.perf_counter() - started, 1),
        "machine": "2-core CPU shared with other jobs, no GPU",
    }
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / f"{tag}.json").write_text(json.dumps({"summary": summary, "nights": records}, indent=1, default=str) + "\n")
    (out / f"{tag}.md").write_text(markdown(summary, records))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
