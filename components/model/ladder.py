"""The size ladder: the shipped model's size chosen by measurement, not fixed.

A rung is (prune ratio of the distilled student, embedding-table precision). The prune stage
builds one model per ratio (0 = the student as distilled; > 0 = pruned with fine-tuning,
components/model/prune.py), and every model is measured at every precision: validation NDCG@20 of its
quantized tables (fit split's embeddings, validation pairs, fit pairs excluded: the teacher's
validation protocol), retention = that / the teacher's validation NDCG@20, table bytes, and the
PyTorch serving graph's latency. :func:`choose_rung` is a pure function of those measurements
and ``ladder`` config; the record (every rung, the choice and its reason) is the model
artifact's ladder.json, which the export stage reads for the precision it ships.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from components.core.config import LadderConfig, PipelineConfig
from components.model.metrics import embedding_scorer, evaluate_scorer
from components.core.interactions import Interactions
from components.model.models.quantize import dequantize
from components.model.models.serving_graph import SeenItems, ServingGraph, parity_users

log = logging.getLogger(__name__)

LADDER_FILE = "ladder.json"  # in a pruned model artifact: the rungs measured and the one chosen

@dataclass(frozen=True)
class Rung:
    """One measured candidate size."""

    prune_ratio: float
    embedding_dim: int
    precision: str
    num_params_nonzero: int
    table_bytes: int  # both embedding tables at this precision, scales included
    latency_p95_ms: float  # PyTorch serving graph, largest export batch size
    val_ndcg_at_20: float | None  # None: no validation split
    retention: float | None  # val_ndcg_at_20 / the teacher's; None when either is missing


def within_budgets(rung: Rung, cfg: LadderConfig) -> bool:
    return rung.table_bytes <= cfg.max_table_bytes and rung.latency_p95_ms <= cfg.max_latency_ms


def qualifies(rung: Rung, cfg: LadderConfig) -> bool:
    return within_budgets(rung, cfg) and rung.retention is not None and rung.retention >= cfg.min_retention


def choose_rung(rungs: list[Rung], cfg: LadderConfig) -> tuple[int, str]:
    """(index of the rung to ship, why): the smallest (table bytes) rung within the budgets that keeps
    ``min_retention``; else the best-retaining rung within the budgets (retentions within
    ``tie_tolerance`` of the best count as equal, the smallest wins); else the smallest rung."""
    if not rungs:
        raise ValueError("the size ladder has no rungs")
    retention = lambda i: rungs[i].retention if rungs[i].retention is not None else -np.inf  # noqa: E731
    smallest = lambda indices: min(indices, key=lambda i: (rungs[i].table_bytes, -retention(i)))  # noqa: E731
    passing = [i for i, r in enumerate(rungs) if qualifies(r, cfg)]
    if passing:
        i = smallest(passing)
        return i, (f"smallest rung within the budgets keeping >= {cfg.min_retention:.0%} of the teacher's validation "
                   f"NDCG@20 ({len(passing)} of {len(rungs)} rungs did; this one keeps {rungs[i].retention:.1%})")
    fitting = [i for i, r in enumerate(rungs) if within_budgets(r, cfg)]
    if fitting:
        best = max(retention(i) for i in fitting)
        i = smallest([j for j in fitting if retention(j) >= best - cfg.tie_tolerance])
        kept = f"{rungs[i].retention:.1%}" if rungs[i].retention is not None else "unmeasured (no validation split)"
        return i, (f"no rung kept {cfg.min_retention:.0%} of the teacher's validation NDCG@20: shipping the "
                   f"best-retaining rung within the budgets (keeps {kept}; smallest within "
                   f"{cfg.tie_tolerance:g} of the best)")
    i = smallest(range(len(rungs)))
    return i, (f"no rung within the budgets (table bytes <= {cfg.max_table_bytes}, p95 latency <= "
               f"{cfg.max_latency_ms} ms): shipping the smallest rung; the engine gates will judge it")


def serving_latency_ms(module: ServingGraph, users: np.ndarray, calls: int) -> float:
    """p95 wall-clock milliseconds of ``calls`` forward passes on ``users`` (after one warm-up)."""
    batch = torch.from_numpy(users)
    times = []
    with torch.no_grad():
        module(batch)
        for _ in range(calls):
            tic = time.perf_counter()
            module(batch)
            times.append((time.perf_counter() - tic) * 1000)
    return float(np.percentile(times, 95))


def measure_rungs(prune_ratio: float, user_emb: torch.Tensor, item_emb: torch.Tensor, num_params_nonzero: int,
                  fit: Interactions, val: Interactions | None, seen_items: SeenItems | None,
                  teacher_val_ndcg: float | None, cfg: PipelineConfig) -> list[Rung]:
    """One rung per ladder precision for a model with final embeddings ``user_emb``/``item_emb`` over
    the fit split (what validation scores); ``seen_items`` is the served exclusion table (latency)."""
    num_users, num_items = user_emb.shape[0], item_emb.shape[0]
    batch = parity_users(num_users, cfg.seed, max(cfg.export.batch_sizes))
    rungs = []
    for precision in cfg.ladder.precisions:
        module = ServingGraph(user_emb.numpy(), item_emb.numpy(), cfg.export.top_k, seen_items, precision)
        val_ndcg = None
        if val is not None and len(val):
            scorer = embedding_scorer(dequantize(module.tables["user"]), dequantize(module.tables["item"]))
            val_ndcg = evaluate_scorer(scorer, fit, val, num_items, (20,), cfg.eval.user_batch_size,
                                       cfg.compute.block_bytes).get("ndcg@20")
        rungs.append(Rung(
            prune_ratio=prune_ratio, embedding_dim=int(user_emb.shape[1]), precision=precision,
            num_params_nonzero=num_params_nonzero, table_bytes=module.table_bytes,
            latency_p95_ms=serving_latency_ms(module, batch, cfg.ladder.latency_calls), val_ndcg_at_20=val_ndcg,
            retention=val_ndcg / teacher_val_ndcg if val_ndcg is not None and teacher_val_ndcg else None))
        log.info("ladder rung: prune %.2f, dim %d, %s: %d table bytes, p95 %.2f ms, val ndcg@20 %s (retention %s)",
                 prune_ratio, rungs[-1].embedding_dim, precision, rungs[-1].table_bytes, rungs[-1].latency_p95_ms,
                 f"{val_ndcg:.4f}" if val_ndcg is not None else "n/a",
                 f"{rungs[-1].retention:.3f}" if rungs[-1].retention is not None else "n/a")
    return rungs


def ladder_record(rungs: list[Rung], teacher_val_ndcg: float | None, cfg: LadderConfig, seconds: float) -> dict:
    """ladder.json: every rung with its verdicts, the choice and why, the target and budgets."""
    chosen, reason = choose_rung(rungs, cfg)
    return {
        "teacher_val_ndcg@20": teacher_val_ndcg,
        "min_retention": cfg.min_retention, "tie_tolerance": cfg.tie_tolerance,
        "budgets": {"max_table_bytes": cfg.max_table_bytes, "max_latency_ms": cfg.max_latency_ms,
                    "latency_calls": cfg.latency_calls},
        "rungs": [{**asdict(r), "within_budgets": within_budgets(r, cfg), "qualifies": qualifies(r, cfg)}
                  for r in rungs],
        "chosen": chosen, "chosen_rung": asdict(rungs[chosen]), "reason": reason,
        "target_met": qualifies(rungs[chosen], cfg), "seconds": seconds,
    }
