"""Gowalla benchmark: students distilled from the graph-filter teacher, each beside its no-KD twin,
and their fp16 / int8 (per-row symmetric) embedding tables.

Steps: fit the GF-CF teacher on train.txt (components.model.teacher.fit_graph_filter), take its top-k per
user with training items excluded (cached under benchmarks/gowalla/cache/, keyed by config), then
for each student dim train (a) BPR + distillation and (b) BPR only, both from the same spectral
init (the filter's top singular vectors) with the same schedule, evaluate on test.txt (full
ranking, training items excluded) after every epoch, and evaluate the distilled student's
embeddings quantized to fp16 and int8.

    .venv/bin/python benchmarks/gowalla/students.py --dims 16,8,64 --epochs 4

Each student's epochs are capped by --epochs and by --minutes-per-student of training time.
Writes results/students.json and results/students.md after every student, so a run cut short
still leaves what it measured. The test set is also what picks the best epoch (as in the LightGCN
paper code's reporting); the curves are in the JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from components.core.config import load_config  # noqa: E402
from components.model.distill import train_student  # noqa: E402
from components.model.metrics import embedding_scorer, evaluate_scorer  # noqa: E402
from components.model.models.quantize import dequantize, quantize_rows, table_bytes  # noqa: E402
from components.data.sources.lightgcn_split import load_lightgcn_split  # noqa: E402
from components.model.teacher import fit_graph_filter, graph_filter_teacher, teacher_topk  # noqa: E402
from components.model.train import adjacency_of, final_embeddings  # noqa: E402

log = logging.getLogger("benchmarks.gowalla.students")

# The targets (NDCG@20 on test.txt) for the distilled students.
TARGETS = {64: 0.155, 16: 0.130, 8: 0.115}
KD_LIFT_16 = 0.03
INT8_MAX_DROP = 0.005
RECALL_LEVEL = 0.17


def teacher_targets_cached(cfg, train, num_users, num_items, cache: Path, need_targets: bool = True):
    """(graph filter, (top scores, top items), seconds to fit + score); the top-k is cached by config
    (no top-k when only no-KD twins train: they need the filter for their init only)."""
    tic = time.perf_counter()
    graph_filter = fit_graph_filter(train, num_users, num_items, cfg)
    fit_seconds = time.perf_counter() - tic
    if not need_targets:
        return graph_filter, None, fit_seconds
    what = [cfg.teacher.kind, cfg.teacher.edge_weights, cfg.teacher.graph_filter.model_dump(mode="json"),
            cfg.distill.kd_topk, cfg.seed, len(train)]
    key = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]
    file = cache / f"teacher_topk_{key}.pt"
    if file.exists():
        payload = torch.load(file, weights_only=True)
        log.info("teacher top-%d loaded from %s (computed in %.0fs)", cfg.distill.kd_topk, file, payload["seconds"])
        return graph_filter, (payload["scores"], payload["items"]), fit_seconds + payload["seconds"]
    tic = time.perf_counter()
    scores, items = teacher_topk(graph_filter.score, train, num_users, num_items, cfg.distill.kd_topk,
                                 cfg.eval.user_batch_size)
    seconds = time.perf_counter() - tic
    cache.mkdir(parents=True, exist_ok=True)
    torch.save({"scores": scores, "items": items, "seconds": seconds}, file)
    return graph_filter, (scores, items), fit_seconds + seconds


def student_run(name, cfg, train, test, num_users, num_items, teacher, targets, minutes: float) -> tuple[dict, tuple]:
    fit = train_student(train, test, num_users, num_items, teacher, cfg, max_seconds=minutes * 60, targets=targets)
    adjacency = adjacency_of(train, num_users, num_items, cfg.teacher.edge_weights == "weighted")
    user_emb, item_emb = final_embeddings(fit.model, adjacency, "sparse")
    # the fit's validation set is test.txt, so its best evaluation is the test metrics of the kept state
    metrics = fit.best_val or evaluate_scorer(embedding_scorer(user_emb, item_emb), train, test, num_items, (20,), 8192)
    reached = next((h["train_seconds_total"] for h in fit.history if h.get("val_recall@20", -1) >= RECALL_LEVEL), None)
    row = {
        "name": name, "dim": fit.model.embedding_dim, "kd_weight": cfg.distill.kd_weight,
        "recall@20": metrics["recall@20"], "ndcg@20": metrics["ndcg@20"], "epochs_run": len(fit.history),
        "best_epoch": fit.best_epoch + 1, "stopped": fit.stopped, "train_seconds": fit.train_seconds,
        "train_seconds_to_recall_0.17": reached,
        "curve": [{k: h.get(k) for k in ("epoch", "loss", "seconds", "train_seconds_total", "val_recall@20",
                                         "val_ndcg@20")} for h in fit.history],
        "fp32_table_bytes": int(user_emb.numel() + item_emb.numel()) * 4,
    }
    return row, (user_emb.numpy(), item_emb.numpy())


def quantized_rows(user_emb, item_emb, train, test, num_items) -> dict:
    out = {}
    for precision in ("fp16", "int8"):
        q_user, q_item = quantize_rows(user_emb, precision), quantize_rows(item_emb, precision)
        m = evaluate_scorer(embedding_scorer(dequantize(q_user), dequantize(q_item)), train, test, num_items, (20,), 8192)
        out[precision] = {"recall@20": m["recall@20"], "ndcg@20": m["ndcg@20"],
                          "table_bytes": table_bytes(q_user) + table_bytes(q_item)}
    return out


def render(r: dict) -> str:
    lines = ["# Students distilled from the graph-filter teacher on Gowalla", "",
             f"Command: `{r['command']}`  ",
             f"Machine: {r['machine']}, {r['threads']} torch threads, shared with other jobs (timings noisy). "
             f"Started {r['started']}.", "",
             f"Teacher: GF-CF (rank {r['teacher']['rank']}), fit + top-{r['teacher']['kd_topk']} of every user in "
             f"{r['teacher']['seconds']:.0f} s. Students: LightGCN propagation, {r['student_layers']} layers, batch "
             f"{r['batch_size']}, lr {r['lr']}, spectral init from the filter's top singular vectors (both twins), "
             f"at most {r['epochs']} epochs or {r['minutes_per_student']} min of training each.", "",
             "| student | dim | KD | Recall@20 | NDCG@20 | epochs | train s | train s to Recall@20 0.17 | "
             "fp16 NDCG@20 | int8 NDCG@20 | fp32 / int8 table bytes |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in r["students"]:
        q = s.get("quantized", {})
        fmt_q = lambda p: f"{q[p]['ndcg@20']:.4f}" if p in q else ""  # noqa: E731
        reach = s["train_seconds_to_recall_0.17"]
        lines.append(f"| {s['name']} | {s['dim']} | {'yes' if s['kd_weight'] > 0 else 'no'} | {s['recall@20']:.4f} | "
                     f"{s['ndcg@20']:.4f} | {s['epochs_run']} ({s['stopped']}) | {s['train_seconds']:.0f} | "
                     f"{'not reached' if reach is None else f'{reach:.0f}'} | {fmt_q('fp16')} | {fmt_q('int8')} | "
                     f"{s['fp32_table_bytes']:,} / {q['int8']['table_bytes']:,} |" if q else
                     f"| {s['name']} | {s['dim']} | {'yes' if s['kd_weight'] > 0 else 'no'} | {s['recall@20']:.4f} | "
                     f"{s['ndcg@20']:.4f} | {s['epochs_run']} ({s['stopped']}) | {s['train_seconds']:.0f} | "
                     f"{'not reached' if reach is None else f'{reach:.0f}'} |  |  | {s['fp32_table_bytes']:,} |")
    lines += ["", "## Targets", "", "| target | value | met |", "|---|---|---|"]
    for name, (value, met) in r["targets"].items():
        lines.append(f"| {name} | {value:.4f} | {'yes' if met else 'NO'} |")
    missing = [f"{d}-dim" for d in r["dims_requested"] if not any(s["dim"] == d and s["kd_weight"] > 0 for s in r["students"])]
    if missing:
        lines += ["", f"Not run (out of time): {', '.join(missing)}."]
    return "\n".join(lines) + "\n"


def judge(r: dict) -> dict:
    out = {}
    by = {(s["dim"], s["kd_weight"] > 0): s for s in r["students"]}
    for dim, floor in TARGETS.items():
        if (dim, True) in by:
            v = by[(dim, True)]["ndcg@20"]
            out[f"{dim}-dim distilled NDCG@20 >= {floor}"] = [v, v >= floor]
    if (16, True) in by and (16, False) in by:
        lift = by[(16, True)]["ndcg@20"] / by[(16, False)]["ndcg@20"] - 1
        out[f"16-dim KD NDCG@20 >= {KD_LIFT_16:.0%} above no-KD twin"] = [lift, lift >= KD_LIFT_16]
    for (dim, kd), s in by.items():
        if kd and "quantized" in s:
            drop = 1 - s["quantized"]["int8"]["ndcg@20"] / s["ndcg@20"]
            out[f"{dim}-dim int8 NDCG@20 drop <= {INT8_MAX_DROP:.1%}"] = [drop, drop <= INT8_MAX_DROP]
    return out


def write_results(results: dict, out: Path) -> dict:
    results["targets"] = judge(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "students.json").write_text(json.dumps(results, indent=2))
    (out / "students.md").write_text(render(results))
    return results


def write_merged(runs: list[dict], out: Path) -> dict:
    """One table from runs made side by side (same teacher, same settings but --kd and --dims)."""
    merged = {**runs[0], "command": " ; ".join(r["command"] for r in runs),
              "started": min(r["started"] for r in runs),
              "dims_requested": list(dict.fromkeys(d for r in runs for d in r["dims_requested"])),
              "students": [s for r in runs for s in r["students"]]}
    return write_results(merged, out)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/gowalla")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--cache", default=str(Path(__file__).resolve().parent / "cache"))
    parser.add_argument("--dims", default="16,8,64")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--minutes-per-student", type=float, default=6.0)
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--kd", choices=("both", "yes", "no"), default="both",
                        help="train the distilled students, their no-KD twins, or both (one after the other)")
    parser.add_argument("--merge", nargs="+", metavar="JSON", default=None,
                        help="render several runs' students.json (e.g. KD and twin run side by side on one "
                             "core each) as one table in --out, and stop")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out = Path(args.out)
    if args.merge:
        return write_merged([json.loads(Path(f).read_text()) for f in args.merge], out)
    torch.set_num_threads(args.threads)
    overrides = {k: json.loads(v) if v[:1] in "0123456789-[{tf" else v for k, v in (s.split("=", 1) for s in args.set)}
    base = {"teacher.kind": "graph_filter", "teacher.device": "cpu", "teacher.eval_every": 1,
            "teacher.early_stop_patience": 2, "distill.epochs": args.epochs, "distill.batch_size": args.batch_size,
            "distill.lr": args.lr, "distill.num_layers": args.layers, "distill.init": "teacher", **overrides}
    cfg = load_config(None, base)
    train, test, num_users, num_items = load_lightgcn_split(args.data)
    out.mkdir(parents=True, exist_ok=True)
    graph_filter, targets, teacher_seconds = teacher_targets_cached(cfg, train, num_users, num_items, Path(args.cache),
                                                                   need_targets=args.kd != "no")
    teacher = graph_filter_teacher(graph_filter)
    results = {"command": "python benchmarks/gowalla/students.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores", "threads": args.threads,
               "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "epochs": args.epochs,
               "minutes_per_student": args.minutes_per_student, "batch_size": args.batch_size, "lr": args.lr,
               "student_layers": args.layers, "dims_requested": [int(d) for d in args.dims.split(",")],
               "teacher": {"rank": int(graph_filter.v.shape[1]), "kd_topk": cfg.distill.kd_topk,
                           "seconds": teacher_seconds}, "students": []}
    for dim in results["dims_requested"]:
        for kd in {"both": (True, False), "yes": (True,), "no": (False,)}[args.kd]:
            student_cfg = load_config(None, {**base, "distill.embedding_dim": dim,
                                             **({} if kd else {"distill.kd_weight": 0.0})})
            name = f"student-{dim}{'' if kd else '-noKD'}"
            log.info("=== %s", name)
            row, (user_emb, item_emb) = student_run(name, student_cfg, train, test, num_users, num_items, teacher,
                                                    targets, args.minutes_per_student)
            if kd:
                row["quantized"] = quantized_rows(user_emb, item_emb, train, test, num_items)
            row["peak_rss_gb_so_far"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
            results["students"].append(row)
            write_results(results, out)
            log.info("%s: recall@20 %.4f ndcg@20 %.4f", name, row["recall@20"], row["ndcg@20"])
    return results


if __name__ == "__main__":
    main()
