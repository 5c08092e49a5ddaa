"""CPU before/after of issue 19's device change on Gowalla, in one process: the code of a baseline
commit (default 3618e66, before the device path) against the working tree's, on the same data.

1. Full-ranking evaluation of every Gowalla test user (a 64-dim embedding scorer: the GF-CF filter's
   rank-64 low-pass part), ``--repeats`` passes each, alternating baseline / current so that the
   neighbours' load falls on both alike; medians reported.
2. The GF-CF teacher (SVD + scoring + evaluation of every test user) by each code, once each:
   wall time and Recall/NDCG@20 (must agree within +-0.0005; the CPU path is the same operations).

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python benchmarks/gpu/cpu_compare.py --repeats 5

Writes results/cpu-gowalla.json and results/cpu-gowalla.md. Not a test: numbers are quoted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks.gpu.run import default_data, machine  # noqa: E402
from components import evaluate as current_evaluate  # noqa: E402
from components.core.interactions import normalized_edges  # noqa: E402
from components.model.models import graph_filter as current_filter  # noqa: E402
from components.data.sources.lightgcn_split import load_lightgcn_split  # noqa: E402

log = logging.getLogger("benchmarks.gpu.cpu_compare")


def baseline_module(commit: str, path: str, name: str) -> types.ModuleType:
    """``path`` as it was at ``commit``, imported under ``name`` (its own imports resolve to today's)."""
    source = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=REPO, check=True, capture_output=True,
                            text=True).stdout
    module = types.ModuleType(name)
    module.__file__ = f"{commit}:{path}"
    sys.modules[name] = module  # dataclasses look their module up
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


def teacher_run(filter_module, evaluate_module, edges, train, test, num_users, num_items) -> dict:
    tic = time.perf_counter()
    graph_filter = filter_module.GraphFilter.fit(edges.user, edges.item, edges.strength, edges.norm, num_users,
                                                 num_items, filter_module.FilterParams())
    fit_s = time.perf_counter() - tic
    metrics = evaluate_module.evaluate_scorer(graph_filter.score, train, test, num_items, (20,), 4096)
    return {"recall@20": metrics["recall@20"], "ndcg@20": metrics["ndcg@20"], "fit_seconds": fit_s,
            "eval_seconds": metrics["eval_seconds"], "wall_seconds": time.perf_counter() - tic}, graph_filter


def render(r: dict) -> str:
    e, t = r["evaluation"], r["teacher"]
    lines = ["# Issue 19 on the CPU: before (baseline commit) vs after (device path), Gowalla", "",
             f"Command: `{r['command']}`  ", f"Machine: {r['machine']['platform']}, {r['machine']['cpu_count']} CPUs "
             f"shared with other jobs, torch threads {r['threads']}, no GPU. Baseline: {r['baseline']}. Started "
             f"{r['started']}.", "", "## Full-ranking evaluation of every Gowalla test user", "",
             f"{e['users_evaluated']} users x {r['num_items']} items, 64-dim embedding scorer, {e['repeats']} passes each "
             "(alternating):", "", "| code | median s | passes s | Recall@20 | NDCG@20 |", "|---|---|---|---|---|"]
    for name in ("baseline", "current"):
        row = e[name]
        lines.append(f"| {name} | {row['median_seconds']:.2f} | {', '.join(f'{s:.2f}' for s in row['seconds'])} | "
                     f"{row['recall@20']:.6f} | {row['ndcg@20']:.6f} |")
    lines += ["", f"Current / baseline median: {e['current']['median_seconds'] / e['baseline']['median_seconds']:.3f}.",
              "", "## GF-CF teacher (SVD + scoring + evaluation of every test user), one run each", "",
              "| code | Recall@20 | NDCG@20 | SVD s | evaluation s | wall s |", "|---|---|---|---|---|---|"]
    for name in ("baseline", "current"):
        row = t[name]
        lines.append(f"| {name} | {row['recall@20']:.6f} | {row['ndcg@20']:.6f} | {row['fit_seconds']:.1f} | "
                     f"{row['eval_seconds']:.1f} | {row['wall_seconds']:.1f} |")
    lines += ["", f"Metric differences (current - baseline): Recall@20 {t['recall_diff']:+.2e}, NDCG@20 "
              f"{t['ndcg_diff']:+.2e} (tolerance +-0.0005); top-K of the embedding scorer identical: "
              f"{e['identical_metrics']}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--baseline", default="3618e66")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    old_evaluate = baseline_module(args.baseline, "components/evaluate.py", "baseline_evaluate")
    old_filter = baseline_module(args.baseline, "components/models/graph_filter.py", "baseline_graph_filter")
    train, test, num_users, num_items = load_lightgcn_split(args.data or default_data())
    edges = normalized_edges(train, num_users, num_items, False)
    results = {"command": " ".join(["benchmarks/gpu/cpu_compare.py"] + sys.argv[1:]), "baseline": args.baseline,
               "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "machine": machine(torch.device("cpu")), "threads": args.threads, "num_items": num_items}

    teacher = {}
    teacher["baseline"], _ = teacher_run(old_filter, old_evaluate, edges, train, test, num_users, num_items)
    teacher["current"], graph_filter = teacher_run(current_filter, current_evaluate, edges, train, test, num_users,
                                                   num_items)
    teacher["recall_diff"] = teacher["current"]["recall@20"] - teacher["baseline"]["recall@20"]
    teacher["ndcg_diff"] = teacher["current"]["ndcg@20"] - teacher["baseline"]["ndcg@20"]
    results["teacher"] = teacher

    u, v, s = graph_filter.low_rank_factors(64)
    user_emb, item_emb = u * s, v * graph_filter.item_sqrt[:, None]
    runs = {"baseline": [], "current": []}
    for _ in range(args.repeats):
        for name, module in (("baseline", old_evaluate), ("current", current_evaluate)):
            metrics = module.evaluate_scorer(module.embedding_scorer(user_emb, item_emb), train, test, num_items,
                                             (20,), 4096)
            runs[name].append(metrics)
    evaluation = {"repeats": args.repeats, "users_evaluated": runs["current"][0]["users_evaluated"]}
    for name, measured in runs.items():
        times = [m["eval_seconds"] for m in measured]
        evaluation[name] = {"seconds": times, "median_seconds": statistics.median(times),
                            "recall@20": measured[0]["recall@20"], "ndcg@20": measured[0]["ndcg@20"]}
    strip = lambda m: {k: v for k, v in m.items() if k != "eval_seconds"}  # noqa: E731
    evaluation["identical_metrics"] = strip(runs["baseline"][0]) == strip(runs["current"][0])
    results["evaluation"] = evaluation
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cpu-gowalla.json").write_text(json.dumps(results, indent=1))
    (out / "cpu-gowalla.md").write_text(render(results))
    log.info("wrote %s/cpu-gowalla.json|md", out)
    return results


if __name__ == "__main__":
    main()
