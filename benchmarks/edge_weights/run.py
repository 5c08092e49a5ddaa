"""Do edge weights help? Binary vs weighted normalization of the graph, measured with the graph-filter
teacher (and a short LightGCN student) on generated data and on a replayed public log.

For several cutoff days D: the graph is built exactly as the graph stage does (components.data.graph:
event weights from data.event_weights, exponential time decay, pairs summed), over the window
[D - window, D); the holdout is [D, D + holdout_days). Each adjacency choice (``teacher.edge_weights``
binary / weighted, and weighted without time decay) is scored on the holdout with full ranking,
training pairs excluded; metrics are averaged over cutoffs.

    .venv/bin/python benchmarks/edge_weights/run.py --movielens /path/to/ml-100k/u.data

Writes results/edge_weights.json and results/README.md. Not a test.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from components.core.config import load_config  # noqa: E402
from components.model.metrics import embedding_scorer, evaluate_scorer  # noqa: E402
from components.core.interactions import Interactions
from components.data.graph import aggregate_pairs, extend_id_map  # noqa: E402
from components.data.sources.replay import read_timestamped, to_events  # noqa: E402
from components.data.sources.synthetic import SyntheticWorld, generate_day  # noqa: E402
from components.model.teacher import fit_graph_filter  # noqa: E402

log = logging.getLogger("benchmarks.edge_weights")

VARIANTS = {  # name -> (teacher.edge_weights, decay half-life in days or None)
    "binary": ("binary", 14.0),
    "weighted (event weights x 14-day decay)": ("weighted", 14.0),
    "weighted (event weights, no decay)": ("weighted", None),
}


def with_weights(events: pd.DataFrame, event_weights: dict[str, float]) -> pd.DataFrame:
    return events.assign(weight=events["event_type"].map(event_weights).astype(float))


def split(events: pd.DataFrame, cutoff: pd.Timestamp, window_days: int, holdout_days: int, half_life: float | None):
    """(train, holdout, num_users, num_items) for one cutoff, built like components.data.graph.run_graph."""
    train_ev = events[(events["ts"] >= cutoff - pd.Timedelta(days=window_days)) & (events["ts"] < cutoff)]
    hold_ev = events[(events["ts"] >= cutoff) & (events["ts"] < cutoff + pd.Timedelta(days=holdout_days))]
    empty = pd.DataFrame({"idx": pd.Series(dtype="int64"), "first_seen": pd.Series(dtype="string")})
    both = pd.concat([train_ev, hold_ev], ignore_index=True)
    users = extend_id_map(empty.assign(user_id=pd.Series(dtype="string")), both, "user_id")
    items = extend_id_map(empty.assign(item_id=pd.Series(dtype="string")), both, "item_id")
    train = aggregate_pairs(train_ev, users, items, cutoff, half_life)
    hold = aggregate_pairs(hold_ev, users, items, cutoff, None)
    as_pairs = lambda f: Interactions(f["user_idx"].to_numpy(), f["item_idx"].to_numpy(), f["weight"].to_numpy())  # noqa: E731
    return as_pairs(train), as_pairs(hold), len(users), len(items)


def measure(events: pd.DataFrame, cutoffs: list[pd.Timestamp], window_days: int, holdout_days: int, rank: int,
            seed: int) -> dict:
    out: dict[str, dict] = {}
    for name, (edge_weights, half_life) in VARIANTS.items():
        cfg = load_config(None, {"teacher.kind": "graph_filter", "teacher.edge_weights": edge_weights,
                                 "teacher.graph_filter.rank": rank, "seed": seed})
        rows = []
        for cutoff in cutoffs:
            train, hold, nu, ni = split(events, cutoff, window_days, holdout_days, half_life)
            graph_filter = fit_graph_filter(train, nu, ni, cfg)
            teacher = evaluate_scorer(graph_filter.score, train, hold, ni, (20,))
            # the low-rank part alone as an embedding model: what a student starts from
            u, v, s = graph_filter.low_rank_factors(16)
            low = evaluate_scorer(embedding_scorer(u * s, v * graph_filter.item_sqrt[:, None]), train, hold, ni, (20,))
            rows.append({"cutoff": str(cutoff.date()), "train_pairs": len(train), "holdout_pairs": len(hold),
                         "users_evaluated": teacher["users_evaluated"],
                         "teacher_recall@20": teacher["recall@20"], "teacher_ndcg@20": teacher["ndcg@20"],
                         "low_rank16_ndcg@20": low["ndcg@20"]})
        out[name] = {"cutoffs": rows, **{f"mean_{k}": statistics.mean(r[k] for r in rows)
                                         for k in ("teacher_recall@20", "teacher_ndcg@20", "low_rank16_ndcg@20")}}
        log.info("%s: teacher ndcg@20 %.4f recall@20 %.4f", name, out[name]["mean_teacher_ndcg@20"],
                 out[name]["mean_teacher_recall@20"])
    return out


def synthetic_events(days: int, num_users: int, num_items: int, seed: int) -> pd.DataFrame:
    world = SyntheticWorld(num_users=num_users, num_items=num_items, seed=seed)
    universe = world.universe()
    return pd.concat([generate_day(world, world.start + dt.timedelta(days=d), universe) for d in range(days)],
                     ignore_index=True)


def render(r: dict) -> str:
    lines = ["# Edge weights: binary vs weighted normalization", "", f"Command: `{r['command']}`  ",
             f"Machine: {r['machine']} (shared). Started {r['started']}.", "",
             "Graph-filter teacher (GF-CF) on each dataset; mean over cutoffs of full-ranking NDCG@20 / Recall@20 "
             "on the holdout, training pairs excluded. `low-rank 16` = the filter's rank-16 part alone (a student's "
             "starting point).", ""]
    for dataset, d in r["datasets"].items():
        lines += [f"## {dataset}", "", d["description"], "",
                  "| adjacency | teacher NDCG@20 | teacher Recall@20 | low-rank 16 NDCG@20 |", "|---|---|---|---|"]
        for name, v in d["variants"].items():
            lines.append(f"| {name} | {v['mean_teacher_ndcg@20']:.4f} | {v['mean_teacher_recall@20']:.4f} | "
                         f"{v['mean_low_rank16_ndcg@20']:.4f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--movielens", default=None, help="path to MovieLens u.data / ratings.dat / ratings.csv")
    parser.add_argument("--synthetic-days", type=int, default=63)
    parser.add_argument("--synthetic-users", type=int, default=3000)
    parser.add_argument("--synthetic-items", type=int, default=1500)
    parser.add_argument("--cutoffs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = load_config(None)
    results = {"command": "python benchmarks/edge_weights/run.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores", "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
               "event_weights": cfg.data.event_weights, "datasets": {}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    events = with_weights(synthetic_events(args.synthetic_days, args.synthetic_users, args.synthetic_items, args.seed),
                          cfg.data.event_weights)
    last = events["ts"].max().normalize()
    cutoffs = [last - pd.Timedelta(days=7 * k) for k in range(args.cutoffs)][::-1]
    results["datasets"]["generated (components.data.sources.synthetic)"] = {
        "description": f"{args.synthetic_days} days, {args.synthetic_users} users, {args.synthetic_items} items, "
                       f"{len(events)} events; window 28 days, holdout 1 day, {args.cutoffs} weekly cutoffs.",
        "variants": measure(events, cutoffs, 28, 1, 64, args.seed)}
    if args.movielens:
        frame = read_timestamped(Path(args.movielens))
        events = with_weights(to_events(frame), cfg.data.event_weights)
        last = events["ts"].max().normalize()
        cutoffs = [last - pd.Timedelta(days=14 * (k + 1)) for k in range(args.cutoffs)][::-1]
        results["datasets"][f"replayed public log ({Path(args.movielens).name}, MovieLens)"] = {
            "description": f"{len(events)} ratings as events (rating 5 -> purchase, 4 -> cart, 3 -> click, else view); "
                           f"window 90 days, holdout 14 days, {args.cutoffs} cutoffs 14 days apart.",
            "variants": measure(events, cutoffs, 90, 14, 64, args.seed)}
    (out / "edge_weights.json").write_text(json.dumps(results, indent=2))
    (out / "README.md").write_text(render(results))
    return results


if __name__ == "__main__":
    main()
