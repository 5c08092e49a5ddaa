"""The popularity fallback: popularity as a registry version that serving answers with like any champion.

When the champion as served conclusively loses to popularity on the day, or there is no champion
yet, and the candidate does not qualify (the blessing's ``fallback == "popularity"``, config
``champion_health.fallback`` / ``champion_health.no_champion``), the
register stage also registers this version (``registry.register_popularity_fallback``) and the
promote stage moves the champion to it through the registry's compare-and-swap
(``decide_promotion``), judged against the same champion.

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
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from components.core.catalog import code_version, read_json
from components.core.config import PipelineConfig
from components.core.interactions import Interactions
from components.core.refs import Blessing
from components.data.graph import GraphArtifact

KIND = "popularity"  # the version's lineage kind, and Blessing.fallback's value (config champion_health.fallback)


def popularity_embeddings(train_item: np.ndarray, num_users: int, num_items: int) -> tuple[np.ndarray, np.ndarray]:
    """(user [num_users, 1] all ones, item [num_items, 1] = num_items - rank): rank 0 is the
    most-trained item, ties to the lower index (the popularity baseline's order)."""
    counts = np.bincount(train_item, minlength=num_items).astype(np.float32)
    order = np.argsort(-counts.astype(np.float64), kind="stable")
    score = np.empty(num_items, np.float32)
    score[order] = num_items - np.arange(num_items, dtype=np.float32)
    return np.ones((num_users, 1), np.float32), score[:, None]


def popularity_version_id(blessing: Blessing, cfg: PipelineConfig) -> str:
    """``<day>-popularity-<hash>`` of the graph it counts, the champion it replaces and the serving settings."""
    graph = blessing.candidate_refs["graph"]["version"]
    blob = json.dumps({"day": blessing.day, "kind": KIND, "graph": graph, "baseline": blessing.champion_version,
                       "export": cfg.config_hash("export")}, sort_keys=True).encode()
    return f"{blessing.day}-{KIND}-{hashlib.sha256(blob).hexdigest()[:10]}"


def fallback_reason(blessing: Blessing) -> str:
    """Why popularity serves: the champion's loss (or that there is none yet) and the candidate's verdict."""
    if blessing.champion_version is None:
        return (f"fallback: no champion yet; candidate {blessing.candidate_version} {blessing.verdict}: popularity "
                f"serves until a candidate qualifies")
    return (f"fallback: champion {blessing.champion_version} worse than popularity "
            f"({blessing.champion_health.describe()}); candidate {blessing.candidate_version} {blessing.verdict}")


def popularity_version_files(graph: GraphArtifact, train: Interactions, cfg: PipelineConfig, blessing: Blessing,
                             version: str, run_key: str, scratch: Path) -> tuple[dict[str, Path], dict[str, Any]]:
    """(files to copy, JSON documents) of the popularity version ``version`` of ``blessing``'s night
    over ``graph`` (its ``train`` interactions): the ONNX serving graph and embeddings, written to
    ``scratch``; the ID maps; a blessing (the champion-health comparison), metrics, lineage (kind
    ``popularity``, day, training window) and serving settings. The registry adds seen.npz and
    popularity.npy as for any version and registers it (``registry.register_popularity_fallback``)."""
    from components.ship.export import (INPUT_NAME, ONNX_FILE, OUTPUT_NAMES, export_onnx, onnxruntime_session, parity,
                                        serving_io, torch_outputs)
    from components.model.models.serving_graph import ServingGraph, parity_users, seen_items_csr

    if blessing.fallback != KIND:
        raise ValueError(f"popularity version {version}: the blessing of {blessing.day} (run {blessing.run_key}) does "
                         f"not fall back to popularity (fallback={blessing.fallback!r})")
    user_emb, item_emb = popularity_embeddings(train.item, graph.num_users, graph.num_items)
    seen = seen_items_csr(train, graph.num_users) if cfg.export.exclude_seen else None
    module = ServingGraph(user_emb, item_emb, cfg.export.top_k, seen, "fp32")
    export_onnx(module, scratch / ONNX_FILE, cfg.export.opset)
    users = parity_users(graph.num_users, cfg.seed)
    max_abs_diff, overlap = parity(*torch_outputs(module, users),
                                   *onnxruntime_session(scratch / ONNX_FILE).run(list(OUTPUT_NAMES), {INPUT_NAME: users}))
    if overlap != 1.0:  # a ranking has no near-ties to forgive: ONNX Runtime must reproduce it exactly
        raise ValueError(f"popularity version {version}: ONNX Runtime top-{module.top_k} overlap {overlap:.4f} "
                         f"with PyTorch over {users.size} users, expected 1.0")
    np.savez(scratch / "embeddings.npz", user=user_emb, item=item_emb)
    files = {name: scratch / name for name in (ONNX_FILE, "embeddings.npz")}
    files.update({name: graph.path / name for name in ("users.parquet", "items.parquet")})
    stats = read_json(graph.path / "stats.json")
    train_days = stats.get("train_days") or []
    evaluation = read_json(Path(blessing.evaluation_path))
    documents = {
        "blessing.json": asdict(replace(
            blessing, blessed=True, verdict="blessed", candidate_version=version,
            candidate_refs={"graph": blessing.candidate_refs["graph"]}, gates=(), failed=(), inconclusive=(),
            overridden=(), wins=(), conclusive_win=False, reason=fallback_reason(blessing), path="")),
        "metrics.json": {"kind": KIND, "evaluation": evaluation, "popularity": evaluation.get("popularity"),
                         "champion_health": asdict(blessing.champion_health) if blessing.champion_health else None,
                         "onnx_bytes": (scratch / ONNX_FILE).stat().st_size, "parity_users": int(users.size),
                         "parity_max_abs_diff": max_abs_diff, "parity_topk_overlap": overlap},
        "lineage.json": {"kind": KIND, "day": blessing.day, "candidate_id": version,
                         "judged_against": blessing.champion_version, "fallback_for": blessing.candidate_version,
                         "window": {"train_days": [train_days[0], train_days[-1]] if train_days else None,
                                    "window_days": stats.get("window_days")},
                         "data": {"graph": blessing.candidate_refs["graph"]},
                         "models": {KIND: f"training events per item of graph {graph.ref.version}"},
                         "config_hash": cfg.config_hash(), "code_version": code_version(),
                         "registered_by_run": run_key},
        "serving.json": {"top_k": module.top_k, "max_batch": max(cfg.export.batch_sizes),
                         "batch_sizes": list(cfg.export.batch_sizes), "io": serving_io(module.top_k),
                         "runtime": "onnxruntime"},  # the registry adds the engine it builds (popularity_engine)
    }
    return files, documents
