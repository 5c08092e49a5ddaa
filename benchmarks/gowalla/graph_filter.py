"""Gowalla benchmark of the closed-form graph-filter teacher (GF-CF, BSPM) on the LightGCN paper split.

Each variant runs in its own child process (so its peak RSS is its own): load the split, normalize
R with DGL (components.core.interactions.normalized_edges), randomized SVD, then full-ranking evaluation over
all users with training items excluded (the paper code's definitions, components.model.metrics). Wall
time counts everything after loading: normalization, SVD, scoring, top-K. Also reports the ideal
low-pass part alone as an embedding model at ranks 64/16/8 (what a student starts from).

    .venv/bin/python benchmarks/gowalla/graph_filter.py --variants gf_cf,bspm --repeats 1

Writes results/graph_filter.json and results/graph_filter.md. Not a test: numbers are quoted.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

# The issue's targets for the graph-filter teacher on this split.
TARGETS = {
    "gf_cf": {"recall@20": 0.186, "ndcg@20": 0.153, "wall_s": 300.0, "peak_rss_gb": 8.0},
    "bspm": {"recall@20": 0.190, "ndcg@20": 0.157, "wall_s": 300.0, "peak_rss_gb": 8.0},
}
OFFICIAL_LIGHTGCN_SECONDS_PER_EPOCH = 235.0
RECALL_LEVEL = 0.17


def run_variant(data: str, variant: str, overrides: dict, threads: int) -> dict:
    """One variant, start to end, in this (child) process."""
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from components.core.config import load_config
    from components.model.metrics import embedding_scorer, evaluate_scorer
    from components.data.sources.lightgcn_split import load_lightgcn_split
    from components.model.teacher import fit_graph_filter

    cfg = load_config(None, {"teacher.kind": "graph_filter", "teacher.graph_filter.variant": variant, **overrides})
    train, test, num_users, num_items = load_lightgcn_split(data)
    tic = time.perf_counter()
    graph_filter = fit_graph_filter(train, num_users, num_items, cfg)
    fit_s = time.perf_counter() - tic
    metrics = evaluate_scorer(graph_filter.score, train, test, num_items, (20, 50), cfg.eval.user_batch_size)
    wall = time.perf_counter() - tic
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    low_pass = {}
    for dim in (64, 16, 8):
        # the ideal low-pass part alone: user r D_i^-1/2 V_k (= d_u^1/2 U_k S_k), item D_i^1/2 V_k
        u, v, s = graph_filter.low_rank_factors(dim)
        m = evaluate_scorer(embedding_scorer(u * s, v * graph_filter.item_sqrt[:, None]), train, test, num_items,
                            (20,), 8192)
        low_pass[str(dim)] = {"recall@20": m["recall@20"], "ndcg@20": m["ndcg@20"]}
    return {
        "variant": variant, "params": cfg.teacher.graph_filter.model_dump(), "edge_weights": cfg.teacher.edge_weights,
        "recall@20": metrics["recall@20"], "ndcg@20": metrics["ndcg@20"], "recall@50": metrics["recall@50"],
        "ndcg@50": metrics["ndcg@50"], "users_evaluated": metrics["users_evaluated"],
        "fit_seconds": fit_s, "eval_seconds": metrics["eval_seconds"], "wall_seconds": wall,
        # CPU seconds of the whole child (loading included): on a shared machine wall time depends on the
        # neighbours, CPU time much less; CPU / threads is what a quiet machine's wall would be near
        "cpu_seconds": cpu.ru_utime + cpu.ru_stime, "load_average_at_end": os.getloadavg()[0],
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2,
        "low_pass_embedding": low_pass,
    }


def _child(queue, *args) -> None:
    queue.put(run_variant(*args))


def judge(variant: str, runs: list[dict]) -> dict:
    best = runs[0]
    t = TARGETS.get(variant, {})
    wall = statistics.median(r["wall_seconds"] for r in runs)
    rss = max(r["peak_rss_gb"] for r in runs)
    out = {
        f"recall@20 >= {t['recall@20']}": [best["recall@20"], best["recall@20"] >= t["recall@20"]],
        f"ndcg@20 >= {t['ndcg@20']}": [best["ndcg@20"], best["ndcg@20"] >= t["ndcg@20"]],
        f"wall <= {t['wall_s']:.0f} s (median)": [wall, wall <= t["wall_s"]],
        f"peak RSS <= {t['peak_rss_gb']} GB": [rss, rss <= t["peak_rss_gb"]],
    }
    return out


def render(results: dict) -> str:
    lines = [
        "# Graph-filter teacher on Gowalla", "",
        f"Command: `{results['command']}`  ",
        f"Machine: {results['machine']}, {results['threads']} torch threads, shared with other jobs (timings noisy). "
        f"Started {results['started']}.", "",
        "Full ranking over all 40,981 items, training items excluded (LightGCN paper code definitions). Wall = DGL "
        "normalization + randomized SVD + scoring/top-K of all 29,858 users, after loading the split. "
        "Peak RSS of the variant's own process.", "",
        "| variant | Recall@20 | NDCG@20 | Recall@50 | NDCG@50 | fit (s) | wall (s, median) | CPU (s) | load avg | "
        f"peak RSS (GB) | time to Recall@20 {RECALL_LEVEL} (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for variant, v in results["variants"].items():
        runs = v["runs"]
        wall = statistics.median(r["wall_seconds"] for r in runs)
        first = runs[0]
        reach = f"{wall:.0f}" if first["recall@20"] >= RECALL_LEVEL else "not reached"
        lines.append(f"| {variant} | {first['recall@20']:.4f} | {first['ndcg@20']:.4f} | {first['recall@50']:.4f} | "
                     f"{first['ndcg@50']:.4f} | {statistics.median(r['fit_seconds'] for r in runs):.1f} | {wall:.1f} "
                     f"({len(runs)} run{'s' if len(runs) > 1 else ''}) | "
                     f"{statistics.median(r['cpu_seconds'] for r in runs):.0f} | "
                     f"{statistics.median(r['load_average_at_end'] for r in runs):.1f} | "
                     f"{max(r['peak_rss_gb'] for r in runs):.2f} | "
                     f"{reach} |")
    lines += ["", f"For scale: the official LightGCN-PyTorch code takes {OFFICIAL_LIGHTGCN_SECONDS_PER_EPOCH:.0f} s per "
              "epoch on this CPU; our trained LightGCN reached 0.1451 / 0.1251 after 45 epochs (49 min) and never "
              f"Recall@20 {RECALL_LEVEL}.", "", "## Targets", "", "| variant | target | value | met |", "|---|---|---|---|"]
    for variant, v in results["variants"].items():
        for name, (value, met) in v["targets"].items():
            lines.append(f"| {variant} | {name} | {value:.4f} | {'yes' if met else 'NO'} |")
    lines += ["", "## Ideal low-pass part alone as an embedding model (user = r D_i^-1/2 V_k, item = D_i^1/2 V_k)", "",
              "| variant | rank | Recall@20 | NDCG@20 |", "|---|---|---|---|"]
    for variant, v in results["variants"].items():
        for dim, m in v["runs"][0]["low_pass_embedding"].items():
            lines.append(f"| {variant} | {dim} | {m['recall@20']:.4f} | {m['ndcg@20']:.4f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/gowalla")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--variants", default="gf_cf,bspm")
    parser.add_argument("--repeats", type=int, default=1, help="runs per variant (wall = median)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. teacher.graph_filter.rank=448")
    args = parser.parse_args(argv)
    overrides = {k: json.loads(v) if v[:1] in "0123456789-[{tf" else v for k, v in (s.split("=", 1) for s in args.set)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"command": "python benchmarks/gowalla/graph_filter.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores", "threads": args.threads,
               "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "variants": {}}
    context = mp.get_context("spawn")
    for variant in args.variants.split(","):
        runs = []
        for _ in range(args.repeats):
            queue = context.Queue()
            child = context.Process(target=_child, args=(queue, args.data, variant, overrides, args.threads))
            child.start()
            runs.append(queue.get())
            child.join()
            print(json.dumps(runs[-1]), flush=True)
        results["variants"][variant] = {"runs": runs, "targets": judge(variant, runs)}
        (out / "graph_filter.json").write_text(json.dumps(results, indent=2))
        (out / "graph_filter.md").write_text(render(results))
    return results


if __name__ == "__main__":
    main()
