"""The popularity fallback: popularity as a registry version that serving answers with like any champion.

When the champion as served conclusively loses to popularity on the day and the candidate does not
qualify (the blessing's ``fallback == "popularity"``, config ``champion_health.fallback``), the
register stage also registers this version and the promote stage moves the champion to it through
the registry's compare-and-swap (``decide_promotion``), judged against the same champion.

The model is the gates' popularity baseline (``components.model.metrics.popularity_scorer``:
training events per item in the candidate graph's window, ties to the lower index), in the files
every version has: a one-dimensional embedding model whose user tower is 1 for every user and whose
item score is ``num_items - rank``. So the ONNX serving graph's top-K (seen items excluded) is that
ranking exactly, fold-in (a positive multiple of the item scores) keeps it, and cold users get the
same ranking from ``popularity.npy`` (the counts): every user gets popularity minus what they saw.
Scores are ranks, not counts, because counts tie and runtimes break top-K ties differently.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from components.core.catalog import Layout, code_version, read_json, staging_dir
from components.core.config import PipelineConfig
from components.core.refs import Blessing
from components.data.graph import GraphArtifact

log = logging.getLogger(__name__)

KIND = "popularity"
POPULARITY = "popularity"  # Blessing.fallback value (config champion_health.fallback)


def popularity_embeddings(train_item: np.ndarray, num_users: int, num_items: int
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user [num_users, 1] all ones, item [num_items, 1] = num_items - rank, counts [num_items]):
    rank 0 is the most-trained item, ties to the lower index (the popularity baseline's order)."""
    counts = np.bincount(train_item, minlength=num_items).astype(np.float32)
    order = np.argsort(-counts.astype(np.float64), kind="stable")
    score = np.empty(num_items, np.float32)
    score[order] = num_items - np.arange(num_items, dtype=np.float32)
    return np.ones((num_users, 1), np.float32), score[:, None], counts


def popularity_version_id(blessing: Blessing, cfg: PipelineConfig) -> str:
    """``<day>-popularity-<hash>`` of the graph it counts, the champion it replaces and the serving settings."""
    graph = blessing.candidate_refs["graph"]["version"]
    blob = json.dumps({"day": blessing.day, "kind": KIND, "graph": graph, "baseline": blessing.champion_version,
                       "export": cfg.config_hash("export")}, sort_keys=True).encode()
    return f"{blessing.day}-{KIND}-{hashlib.sha256(blob).hexdigest()[:10]}"


def fallback_reason(blessing: Blessing) -> str:
    """Why popularity serves: the champion's loss and the candidate's verdict, with the numbers."""
    return (f"fallback: champion {blessing.champion_version} worse than popularity "
            f"({blessing.champion_health.describe()}); candidate {blessing.candidate_version} {blessing.verdict}")


def register_popularity_fallback(layout: Layout, day: str, cfg: PipelineConfig, blessing: Blessing, *,
                                 run_key: str) -> tuple[str, bool]:
    """Register the popularity version of the blessing's night (status blessed: its blessing is the
    champion-health comparison; lineage kind ``popularity`` with the day and training window).
    Idempotent; returns (version, newly registered)."""
    from components.core.refs import GraphRef
    from components.decide.registry import STATUS_BLESSED, register_candidate, seen_csr, version_dir
    from components.ship.export import (INPUT_NAME, ONNX_FILE, OUTPUT_NAMES, export_onnx, onnxruntime_session, parity,
                                        serving_io, torch_outputs)
    from components.model.models.serving_graph import ServingGraph, parity_users, seen_items_table

    if blessing.fallback != POPULARITY or blessing.day != day:
        raise ValueError(f"register popularity {day}: the blessing of {blessing.day} does not fall back to "
                         f"popularity (fallback={blessing.fallback!r})")
    version = popularity_version_id(blessing, cfg)
    if (version_dir(layout, version) / "manifest.json").exists():
        return version, False
    graph_ref = layout.artifact(GraphRef.from_dict(blessing.candidate_refs["graph"]))
    graph = GraphArtifact.load(graph_ref)
    train = graph.train_interactions()
    user_emb, item_emb, counts = popularity_embeddings(train.item, graph.num_users, graph.num_items)
    seen = seen_items_table(train, graph.num_users) if cfg.export.exclude_seen else None
    module = ServingGraph(user_emb, item_emb, cfg.export.top_k, seen, "fp32")
    stats = read_json(graph.path / "stats.json")
    train_days = stats.get("train_days") or []
    indptr, indices = seen_csr(train.user, train.item, graph.num_users)
    with staging_dir(layout.registry()) as tmp:  # the ONNX model, written here, copied into the version
        export_onnx(module, tmp / ONNX_FILE, cfg.export.opset)
        users = parity_users(graph.num_users, cfg.seed)
        max_abs_diff, overlap = parity(*torch_outputs(module, users),
                                       *onnxruntime_session(tmp / ONNX_FILE).run(list(OUTPUT_NAMES), {INPUT_NAME: users}))
        if overlap != 1.0:  # a ranking has no near-ties to forgive: ONNX Runtime must reproduce it exactly
            raise ValueError(f"popularity version {version}: ONNX Runtime top-{module.top_k} overlap {overlap:.4f} "
                             f"with PyTorch over {users.size} users, expected 1.0")
        np.savez(tmp / "embeddings.npz", user=user_emb, item=item_emb)
        files = {name: tmp / name for name in (ONNX_FILE, "embeddings.npz")}
        files.update({name: graph.path / name for name in ("users.parquet", "items.parquet")})
        evaluation = read_json(Path(blessing.evaluation_path))
        documents: dict[str, Any] = {
            "blessing.json": asdict(replace(
                blessing, blessed=True, verdict="blessed", candidate_version=version,
                candidate_refs={"graph": blessing.candidate_refs["graph"]}, gates=(), failed=(), inconclusive=(),
                overridden=(), wins=(), conclusive_win=False, reason=fallback_reason(blessing), path="")),
            "metrics.json": {"kind": KIND, "evaluation": evaluation, "popularity": evaluation.get("popularity"),
                             "champion_health": asdict(blessing.champion_health),
                             "onnx_bytes": (tmp / ONNX_FILE).stat().st_size, "parity_users": int(users.size),
                             "parity_max_abs_diff": max_abs_diff, "parity_topk_overlap": overlap},
            "lineage.json": {"kind": KIND, "day": day, "candidate_id": version,
                             "judged_against": blessing.champion_version, "fallback_for": blessing.candidate_version,
                             "window": {"train_days": [train_days[0], train_days[-1]] if train_days else None,
                                        "window_days": stats.get("window_days")},
                             "data": {"graph": blessing.candidate_refs["graph"]},
                             "models": {KIND: f"training events per item of graph {graph_ref.version}"},
                             "config_hash": cfg.config_hash(), "code_version": code_version(),
                             "registered_by_run": run_key},
            "serving.json": {"top_k": module.top_k, "max_batch": max(cfg.export.batch_sizes),
                             "batch_sizes": list(cfg.export.batch_sizes), "io": serving_io(module.top_k),
                             "runtime": "onnxruntime", "tensorrt_status": "skipped: popularity version (ONNX only)"},
        }
        arrays = {"seen.npz": {"indptr": indptr, "indices": indices}, "popularity.npy": {"array": counts}}
        _, created = register_candidate(layout, version, day, files, arrays, documents, STATUS_BLESSED)
    log.warning("register %s run %s: popularity fallback %s %s (graph %s, %d items; %s)", day, run_key, version,
                "registered" if created else "already registered", graph_ref.version, graph.num_items,
                fallback_reason(blessing))
    return version, created
