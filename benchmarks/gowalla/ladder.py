"""Gowalla benchmark: the size ladder the nightly ships from, measured on the paper's split.

The nightly's protocol on Gowalla's train.txt: a seeded validation split (``teacher.val_fraction``,
scored on ``teacher.val_users`` of its users; results/ladder.* predate that setting: whole split),
the GF-CF teacher of the fit split (its validation NDCG@20 is what retention divides by), a student
distilled from it on the fit split (``distill.*``, capped at ``--minutes`` of training), then the
prune stage's ladder itself (``components.model.prune.build_ladder``: every ``ladder.prune_ratios``
model at every ``ladder.precisions``, retention on the validation split, table bytes, serving
latency, and ``choose_rung``'s choice and reason). Each rung is also scored on test.txt (final
embeddings over all of train.txt, tables quantized as shipped), beside the whole-train teacher.

    .venv/bin/python benchmarks/gowalla/ladder.py --minutes 20 --set distill.batch_size=8192 --set distill.lr=5e-3

Writes results/ladder.json and results/ladder.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

import torch  # noqa: E402

from components.core.config import load_config  # noqa: E402
from components.data.sources.lightgcn_split import load_lightgcn_split  # noqa: E402
from components.model.distill import known_pairs, teacher_targets, train_student  # noqa: E402
from components.model.metrics import embedding_scorer, evaluate_scorer  # noqa: E402
from components.model.models.quantize import dequantize, quantize_rows  # noqa: E402
from components.model.prune import build_ladder, needs_targets  # noqa: E402
from components.model.teacher import fit_graph_filter, graph_filter_teacher  # noqa: E402
from components.model.train import adjacency_of, final_embeddings, split_validation, validation_sample  # noqa: E402


def test_ndcg(model, train, test, num_users, num_items, precision, cfg) -> float:
    """test.txt NDCG@20 of ``model``'s final embeddings over all of train.txt at ``precision``."""
    user_emb, item_emb = final_embeddings(model, adjacency_of(train, num_users, num_items, False), "sparse")
    user_q, item_q = (dequantize(quantize_rows(t.numpy(), precision)) for t in (user_emb, item_emb))
    return evaluate_scorer(embedding_scorer(user_q, item_q), train, test, num_items, (20,),
                           cfg.eval.user_batch_size, cfg.compute.block_bytes)["ndcg@20"]


def render(r: dict) -> str:
    lad = r["ladder"]
    lines = ["# The size ladder on Gowalla", "", f"Command: `{r['command']}`  ",
             f"Machine: {r['machine']}; started {r['started']}; {r['seconds']:.0f} s in all.", "",
             f"Teacher GF-CF: validation NDCG@20 {lad['teacher_val_ndcg@20']:.4f} (fit split), test NDCG@20 "
             f"{r['teacher_test_ndcg@20']:.4f} (all of train.txt). Student: {r['student']['dim']} dims, "
             f"{r['student']['epochs_run']} epochs ({r['student']['stopped']}), {r['student']['train_seconds']:.0f} s "
             f"of training. Ladder: min retention {lad['min_retention']:.0%}, budgets {lad['budgets']}.", "",
             "| rung | prune ratio | dim | precision | table bytes | p95 ms | val NDCG@20 | retention (val) | "
             "test NDCG@20 | retention (test) | qualifies |", "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for i, (rung, test) in enumerate(zip(lad["rungs"], r["test_ndcg@20"])):
        mark = " **shipped**" if i == lad["chosen"] else ""
        lines.append(f"| {i}{mark} | {rung['prune_ratio']} | {rung['embedding_dim']} | {rung['precision']} | "
                     f"{rung['table_bytes']:,} | {rung['latency_p95_ms']:.2f} | {rung['val_ndcg_at_20']:.4f} | "
                     f"{rung['retention']:.3f} | {test:.4f} | {test / r['teacher_test_ndcg@20']:.3f} | "
                     f"{'yes' if rung['qualifies'] else 'no'} |")
    lines += ["", f"Choice: rung {lad['chosen']}: {lad['reason']}."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(HERE.parent.parent.parent / "shared" / "data" / "gowalla"))
    parser.add_argument("--minutes", type=float, default=20.0, help="student training budget")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    overrides = {k: json.loads(v) if v[:1] in "[{0123456789-tf" else v for k, v in (s.split("=", 1) for s in args.set)}
    cfg = load_config(overrides=overrides)
    started, tic = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), time.perf_counter()
    train_all, test, num_users, num_items = load_lightgcn_split(args.data)
    train, val_all = split_validation(train_all, cfg.teacher.val_fraction, cfg.seed)
    val = validation_sample(val_all, cfg.teacher.val_users, cfg.seed)  # what every nightly validation scores
    teacher = graph_filter_teacher(fit_graph_filter(train, num_users, num_items, cfg))
    teacher_val = evaluate_scorer(teacher.scorer, train, val, num_items, (20,), cfg.eval.user_batch_size,
                                  cfg.compute.block_bytes)["ndcg@20"]
    whole = fit_graph_filter(train_all, num_users, num_items, cfg)
    teacher_test = evaluate_scorer(whole.score, train_all, test, num_items, (20,), cfg.eval.user_batch_size,
                                   cfg.compute.block_bytes)["ndcg@20"]
    targets = teacher_targets(teacher, known_pairs(train, val_all), cfg)  # the window's pairs excluded
    fit = train_student(train, val, num_users, num_items, teacher, cfg, max_seconds=args.minutes * 60, targets=targets)
    ladder, rung_models = build_ladder(fit.model, train, val, train_all, teacher, teacher_val, cfg,
                                       targets if needs_targets(cfg) else None)
    tests = [test_ndcg(model, train_all, test, num_users, num_items, rung["precision"], cfg)
             for rung, (model, _) in zip(ladder["rungs"], rung_models)]
    report = {"command": " ".join(sys.argv), "started": started, "seconds": time.perf_counter() - tic,
              "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (shared), {args.threads} torch threads, no GPU",
              "overrides": overrides, "teacher_test_ndcg@20": teacher_test, "test_ndcg@20": tests, "ladder": ladder,
              "student": {"dim": fit.model.embedding_dim, "epochs_run": len(fit.history), "stopped": fit.stopped,
                          "train_seconds": fit.train_seconds, "best_val": fit.best_val}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ladder.json").write_text(json.dumps(report, indent=2, default=float))
    (out / "ladder.md").write_text(render(report))
    print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
