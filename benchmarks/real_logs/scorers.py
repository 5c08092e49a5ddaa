"""Can any model beat popularity on a real log's nights? The question behind a replay that never promotes.

The nightly replay (``nightly.py``) promotes only a candidate that conclusively beats popularity. On
the Instacart sample it never did, so its e2e properties held vacuously. This script asks whether
that is the pipeline or the log: for each of the log's last ``--nights`` days it fits the
closed-form teachers the nightly can run (GF-CF and BSPM, ``components.model.models.graph_filter``,
default parameters; GF-CF's linear part r R~^T R~ is a normalized item-item neighbourhood model)
on a window of ``--windows`` days before the night, and evaluates them and the window's popularity
on the night exactly as the gates do (``components.model.metrics.user_metrics``: full ranking,
window items excluded, users with window history and an unseen test item). The nights' users are
pooled, and each scorer's paired relative change in NDCG@20 against the same window's popularity
gets a 90% percentile bootstrap interval over those (night, user) pairs.

    .venv/bin/python benchmarks/real_logs/scorers.py --log instacart --nights 12 --windows 28,90,369

Writes results/scorers-<log>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from components.core.interactions import Interactions, normalized_edges  # noqa: E402
from components.data.sources.public_logs import instacart_events, public_log  # noqa: E402
from components.model.metrics import popularity_scorer, user_metrics  # noqa: E402
from components.model.models.graph_filter import FilterParams, GraphFilter  # noqa: E402
from nightly import _relative_interval  # noqa: E402

SCORERS = ("popularity", "gf_cf", "bspm")


def log_events(name: str) -> pd.DataFrame:
    """user, item, timestamp (epoch s) of a packaged public log."""
    path = public_log(name)
    if name == "instacart":
        return instacart_events(pd.read_csv(path, index_col=0))[["user", "item", "timestamp"]]
    events = pd.read_csv(path, sep="\t")  # RecBole atomic file: user_id:token item_id:token rating timestamp
    events.columns = ["user", "item", "rating", "timestamp"]
    return events[["user", "item", "timestamp"]]


def night_metrics(events: pd.DataFrame, night: pd.Timestamp, window_days: int) -> tuple[dict[str, np.ndarray], int]:
    """NDCG@20 per evaluated user of each scorer on ``night``, trained on the window before it; and
    how many of the night's users were cold (no window history)."""
    window = events[(events.day < night) & (events.day >= night - pd.Timedelta(days=window_days))]
    test = events[events.day == night]
    users = pd.Index(pd.unique(pd.concat([window.user, test.user])))
    items = pd.Index(pd.unique(pd.concat([window.item, test.item])))

    def indexed(frame: pd.DataFrame) -> Interactions:
        keys = np.unique(users.get_indexer(frame.user).astype(np.int64) * len(items)
                         + items.get_indexer(frame.item).astype(np.int64))
        return Interactions(keys // len(items), keys % len(items), np.ones(keys.size, np.float32))

    train, fresh = indexed(window), indexed(test)
    edges = normalized_edges(train, len(users), len(items), weighted=False)
    rank = min(FilterParams.rank, min(len(users), len(items)) - FilterParams.svd_oversample - 1)
    scorers = {"popularity": popularity_scorer(train, len(items))}
    for variant in ("gf_cf", "bspm"):
        fitted = GraphFilter.fit(edges.user, edges.item, edges.strength, edges.norm, len(users), len(items),
                                 FilterParams(variant=variant, rank=rank), "cpu")
        scorers[variant] = fitted.score
    out = {name: user_metrics(scorer, train, fresh, len(items), (20,)) for name, scorer in scorers.items()}
    return {name: m.values["ndcg@20"] for name, m in out.items()}, out["popularity"].counts["cold_users_skipped"]


def run(log: str, nights: int, windows: list[int]) -> dict:
    events = log_events(log)
    events["day"] = pd.to_datetime(events.timestamp, unit="s").dt.floor("D")
    days = sorted(events.day.unique())[-nights:]
    results = []
    for window_days in windows:
        tic = time.perf_counter()
        pooled: dict[str, list[np.ndarray]] = {name: [] for name in SCORERS}
        per_night, cold = [], 0
        for night in days:
            values, night_cold = night_metrics(events, pd.Timestamp(night), window_days)
            cold += night_cold
            per_night.append({"night": str(night)[:10], "users": int(values["popularity"].size),
                              **{name: float(v.mean()) if v.size else None for name, v in values.items()}})
            for name in SCORERS:
                pooled[name].append(values[name])
        vectors = {name: np.concatenate(parts) for name, parts in pooled.items()}
        results.append({
            "window_days": window_days, "seconds": round(time.perf_counter() - tic, 1),
            "users": int(vectors["popularity"].size), "cold_users_skipped": cold,
            "ndcg@20": {name: float(v.mean()) for name, v in vectors.items()},
            "vs_popularity": {name: _relative_interval(vectors[name], vectors["popularity"], 0.90, 2000, 0)
                              for name in SCORERS if name != "popularity"},
            "nights": per_night,
        })
        print(f"window {window_days}: {results[-1]['ndcg@20']} vs popularity "
              f"{ {k: v['verdict'] for k, v in results[-1]['vs_popularity'].items()} }", flush=True)
    return {"log": log, "nights": [str(d)[:10] for d in (days[0], days[-1])], "results": results,
            "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, shared 2-core CPU, no GPU",
            "command": " ".join(sys.argv)}


def markdown(report: dict) -> str:
    lines = [f"# Which scorer beats popularity on {report['log']}'s nights ({report['nights'][0]} .. {report['nights'][1]})",
             "", f"Command: `{report['command']}`  ", f"Machine: {report['machine']}", "",
             "Pooled over the nights' users with window history and an unseen test item; interval: paired 90% "
             "percentile bootstrap of the relative change in NDCG@20 against the same window's popularity.", "",
             "| window (days) | users | popularity | GF-CF | BSPM | GF-CF vs popularity | BSPM vs popularity | s |",
             "|---:|---:|---:|---:|---:|---|---|---:|"]
    for r in report["results"]:
        change = {name: r["vs_popularity"][name] for name in ("gf_cf", "bspm")}
        cells = [f"{c['value']:+.0%} [{c['ci'][0]:+.0%}, {c['ci'][1]:+.0%}] {c['verdict']}" for c in change.values()]
        lines.append(f"| {r['window_days']} | {r['users']} | {r['ndcg@20']['popularity']:.4f} | "
                     f"{r['ndcg@20']['gf_cf']:.4f} | {r['ndcg@20']['bspm']:.4f} | {cells[0]} | {cells[1]} | {r['seconds']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", default="instacart", choices=("instacart", "ml-100k"))
    parser.add_argument("--nights", type=int, default=12)
    parser.add_argument("--windows", default="28,90,369")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    report = run(args.log, args.nights, [int(w) for w in args.windows.split(",")])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"scorers-{args.log}.json").write_text(json.dumps(report, indent=2))
    (out / f"scorers-{args.log}.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
