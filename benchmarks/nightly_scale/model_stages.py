"""How the model stages this issue moved onto blocks grow with the world (issue 19, scale table):
the graph-filter teacher's fit, its scoring (what distillation targets and evaluation pay per user)
and a full-ranking evaluation, at 30k / 100k / 300k users, items and interactions growing with them.

Each size runs in its own child process (its peak RSS is its own) on a generated bipartite graph
(items = 4/3 users, ~34 interactions per user as Gowalla, item popularity skewed), with
compute.block_bytes as configured: DGL normalization, randomized SVD, then the teacher's top-k and
a full-ranking evaluation of a fixed ``--sample`` of users. Per-user costs are measured on the
sample and projected to every user (GF-CF's scoring is O(users x nnz): it grows quadratically
with the world, which is what distill.teacher_target_users bounds).

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python benchmarks/nightly_scale/model_stages.py

Writes results/model_stages.json and results/model_stages.md. Not a test: numbers are quoted. The
whole nightly (Airflow, every task) is run.py's table; this one isolates the stages it touches.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def world(users: int, seed: int):
    """(train, test, num_users, num_items): a skewed random bipartite graph, 10% of pairs held out."""
    import numpy as np

    from components.data.graph import Interactions

    rng = np.random.default_rng(seed)
    items = users * 4 // 3
    n = users * 34
    user = rng.integers(0, users, n)
    item = np.minimum((items * rng.random(n) ** 2).astype(np.int64), items - 1)  # popular low indices
    keys = np.unique(user * items + item)
    user, item = keys // items, keys % items
    test = rng.random(keys.size) < 0.1
    pick = lambda m: Interactions(user[m], item[m], np.ones(int(m.sum()), np.float32))  # noqa: E731
    return pick(~test), pick(test), users, items


def one_size(users: int, sample: int, threads: int, seed: int) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from components.core.config import load_config
    from components.model.metrics import embedding_scorer, evaluate_scorer
    from components.data.graph import Interactions
    from components.model.teacher import fit_graph_filter, teacher_topk

    cfg = load_config(None, {"teacher.device": "cpu"})
    tic = time.perf_counter()
    train, test, num_users, num_items = world(users, seed)
    generate_s = time.perf_counter() - tic
    tic = time.perf_counter()
    graph_filter = fit_graph_filter(train, num_users, num_items, cfg)
    fit_s = time.perf_counter() - tic
    chosen = np.sort(np.random.default_rng(seed).choice(num_users, min(sample, num_users), replace=False))
    tic = time.perf_counter()
    teacher_topk(graph_filter.score, train, num_users, num_items, cfg.distill.kd_topk, cfg.eval.user_batch_size,
                 chosen, cfg.compute.block_bytes)
    score_s = time.perf_counter() - tic
    in_sample = np.isin(test.user, chosen)
    sample_test = Interactions(test.user[in_sample], test.item[in_sample], test.weight[in_sample])
    u, v, s = graph_filter.low_rank_factors(64)
    metrics = evaluate_scorer(embedding_scorer(u * s, v * graph_filter.item_sqrt[:, None]), train, sample_test,
                              num_items, (20,), cfg.eval.user_batch_size, cfg.compute.block_bytes)
    evaluated = metrics["users_evaluated"]
    return {"users": num_users, "items": num_items, "train_pairs": len(train), "sample_users": int(chosen.size),
            "generate_seconds": generate_s, "filter_fit_seconds": fit_s, "filter_block_users": graph_filter.block_users,
            "teacher_topk_sample_seconds": score_s,
            "teacher_topk_all_users_projected_seconds": score_s / chosen.size * num_users,
            "eval_sample_users": evaluated, "eval_sample_seconds": metrics["eval_seconds"],
            "eval_all_users_projected_seconds": metrics["eval_seconds"] / max(evaluated, 1) * num_users,
            "block_bytes": cfg.compute.block_bytes,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}


def _child(queue, *args) -> None:
    queue.put(one_size(*args))


def render(r: dict) -> str:
    lines = ["# Model stages at scale (graph-filter teacher, targets, evaluation) on the CPU", "",
             f"Command: `{r['command']}`  ", f"{r['threads']} torch thread(s) on a 2-core machine shared with other "
             f"jobs; compute.block_bytes {r['rows'][0]['block_bytes'] / 2 ** 30:.0f} GiB; per-user costs measured on "
             f"{r['sample']} users and projected to all users. CPU only (no GPU lent to this run).", "",
             "| users | items | train pairs | filter fit s (DGL + SVD) | filter block users | teacher top-k s / 1k users | "
             "projected all users s | eval s / 1k users (64-dim) | projected all users s | peak RSS GB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        lines.append(f"| {x['users']} | {x['items']} | {x['train_pairs']} | {x['filter_fit_seconds']:.1f} | "
                     f"{x['filter_block_users']} | {x['teacher_topk_sample_seconds'] / x['sample_users'] * 1000:.1f} | "
                     f"{x['teacher_topk_all_users_projected_seconds']:.0f} | "
                     f"{x['eval_sample_seconds'] / max(x['eval_sample_users'], 1) * 1000:.2f} | "
                     f"{x['eval_all_users_projected_seconds']:.0f} | {x['peak_rss_gb']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", default="30000,100000,300000")
    parser.add_argument("--sample", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args(argv)
    rows = []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for users in (int(x) for x in args.users.split(",")):
        queue = mp.get_context("spawn").Queue()
        child = mp.get_context("spawn").Process(target=_child, args=(queue, users, args.sample, args.threads, args.seed))
        child.start()
        rows.append(queue.get())
        child.join()
        results = {"command": " ".join(["benchmarks/nightly_scale/model_stages.py"] + sys.argv[1:]),
                   "threads": args.threads, "sample": args.sample, "rows": rows}
        (out / "model_stages.json").write_text(json.dumps(results, indent=1))
        (out / "model_stages.md").write_text(render(results))
        print(render(results), flush=True)
    return results


if __name__ == "__main__":
    main()
