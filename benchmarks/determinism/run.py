"""Issue 20: what deterministic training gathers cost. Plain indexing (``final[index]``, before) and
``gather_rows`` (after, components/model/models/lightgcn.py) alternate in one process: the median
time of one ``train_step`` (whole-graph propagation, BPR + L2 + KD top-20 on a batch of 2048) per
world, the median time of the pruning stage's computation (``prune_model``: 2 structured steps, 2
fine-tune epochs each, KD), and how many distinct embedding byte strings repeated prunings give.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/determinism/run.py --threads 2

Writes results/threads<N>.json and results/README.md (all thread counts run so far). Not a test.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import components.model.distill as distill_module  # noqa: E402
import components.model.train as train_module  # noqa: E402
from components.core.config import load_config  # noqa: E402
from components.core.interactions import Interactions  # noqa: E402
from components.model.distill import make_kd_loss  # noqa: E402
from components.model.models.lightgcn import LightGCN, gather_rows  # noqa: E402
from components.model.models.sampling import sample_epoch  # noqa: E402
from components.model.prune import prune_model  # noqa: E402
from components.model.train import adjacency_of, split_validation, train_step  # noqa: E402

GATHERS = {"indexing (before)": lambda table, index: table[index], "gather_rows (after)": gather_rows}
# (users, items, pairs per user, student dim): the stack test's world, and a larger one at two widths
WORLDS = {"150 users x 100 items, d=16": (150, 100, 9, 16),
          "30k users x 10k items, 400k pairs, d=16": (30000, 10000, 14, 16),
          "30k users x 10k items, 400k pairs, d=64": (30000, 10000, 14, 64)}


def use(name: str) -> None:
    train_module.gather_rows = distill_module.gather_rows = GATHERS[name]


def world(num_users: int, num_items: int, per_user: int, dim: int, cfg):
    rng = np.random.default_rng(0)
    user = np.repeat(np.arange(num_users), per_user)
    keys = np.unique(user * num_items + rng.integers(0, num_items, user.size))
    pairs = Interactions(keys // num_items, keys % num_items, np.ones(keys.size, np.float32))
    torch.manual_seed(0)
    model = LightGCN(num_users, num_items, dim, cfg.distill.num_layers)
    k = cfg.distill.kd_topk
    targets = (torch.sort(torch.rand(num_users, k), 1, descending=True).values,
               torch.from_numpy(rng.integers(0, num_items, (num_users, k))))
    return pairs, model, targets


def time_steps(spec, cfg, repeats: int) -> dict[str, float]:
    pairs, model, targets = world(*spec, cfg)
    kd = make_kd_loss(*targets, cfg, torch.device("cpu"))
    adjacency = adjacency_of(pairs, model.num_users, model.num_items, False)
    u, p, q = (torch.from_numpy(a[:cfg.distill.batch_size]) for a in sample_epoch(pairs.user, pairs.item, model.num_items, 1, 0))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.distill.lr, fused=True)
    seconds = {name: [] for name in GATHERS}
    for _ in range(repeats):
        for name in GATHERS:
            use(name)
            tic = time.perf_counter()
            train_step(model, adjacency, "sparse", optimizer, u, p, q, cfg.distill.l2, kd)
            seconds[name].append(time.perf_counter() - tic)
    return {name: round(statistics.median(s) * 1e3, 3) for name, s in seconds.items()}


def time_pruning(cfg, repeats: int) -> dict[str, dict]:
    pairs, student, targets = world(*WORLDS["150 users x 100 items, d=16"], cfg)
    train, val = split_validation(pairs, cfg.teacher.val_fraction, cfg.seed)
    seconds, embeddings = {name: [] for name in GATHERS}, {name: set() for name in GATHERS}
    for _ in range(repeats):
        for name in GATHERS:
            use(name)
            tic = time.perf_counter()
            pruned, _ = prune_model(copy.deepcopy(student), train, val, None, cfg, 0.5, targets=targets)
            seconds[name].append(time.perf_counter() - tic)
            embeddings[name].add(pruned.user_embedding.weight.detach().numpy().tobytes())
    return {name: {"median_s": round(statistics.median(seconds[name]), 4), "runs": repeats,
                   "distinct_embeddings": len(embeddings[name])} for name in GATHERS}


def render(results: list[dict]) -> str:
    lines = ["# Deterministic training gathers (issue 20): cost", "",
             "Plain indexing vs `gather_rows`, alternated in one process (`benchmarks/determinism/run.py`).", "",
             "| threads | what | indexing (before) | gather_rows (after) |", "|---|---|---|---|"]
    for result in results:
        for label, times in result["train_step_ms"].items():
            lines.append(f"| {result['threads']} | train_step ms, {label} | {' | '.join(str(v) for v in times.values())} |")
        prune = result["prune_model"]
        lines.append(f"| {result['threads']} | prune_model s (150x100, d=16) | "
                     + " | ".join(f"{v['median_s']} ({v['distinct_embeddings']} distinct of {v['runs']})" for v in prune.values()) + " |")
    lines += ["", "Host: " + results[-1]["host"] + "; load average at start: " + results[-1]["load"], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=31)
    parser.add_argument("--prunings", type=int, default=7)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(None, {"teacher.device": "cpu", "prune.finetune_epochs": 2})
    result = {"threads": args.threads, "torch": torch.__version__, "host": f"{platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPUs", "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
              "train_step_ms": {label: time_steps(spec, cfg, args.steps) for label, spec in WORLDS.items()},
              "prune_model": time_pruning(cfg, args.prunings)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"threads{args.threads}.json").write_text(json.dumps(result, indent=2))
    results = [json.loads(p.read_text()) for p in sorted(out.glob("threads*.json"))]
    (out / "README.md").write_text(render(results))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
