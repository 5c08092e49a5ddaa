"""Export stage: the student's final embeddings as a self-contained ONNX "serving graph".

The serving graph maps ``user_idx`` int64 [batch] to the top-K items: ``top_items`` int64
[batch, K] and ``top_scores`` float32 [batch, K]. Scores are ``user @ item.T`` over the FINAL
(propagated) embeddings, so serving needs no graph. With ``export.exclude_seen`` the users'
training positives are baked in as a CSR table (row offsets per user, item indices; bytes grow with
the interactions, not users x the heaviest history) and scattered to -inf before top-K, so a user is never recommended what they already interacted with.

The stage exports with a dynamic batch axis, runs ``onnx.checker``, runs the model with ONNX
Runtime and measures parity with PyTorch on a seeded user sample; it stores that sample and
PyTorch's outputs (``parity_reference.npz``) so the engine stage can check its runtime against
the same reference without rebuilding the PyTorch module. The tables' precision is the one the
size ladder chose for the model (its ladder.json, components/model/ladder.py); fp16 or int8 tables are quantized (components/model/models/quantize.py); the reference is the quantized PyTorch
graph (engine parity compares like with like), and what quantization itself costs is measured
against the fp32 graph and gated per precision (``export.min_topk_overlap_vs_fp32``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.model.train import load_embeddings
from components.core.config import PipelineConfig
from components.core.refs import GraphRef, PrunedRef
from components.data.graph import GraphArtifact
from components.model.ladder import LADDER_FILE
from components.model.models.quantize import Precision
from components.model.models.serving_graph import ServingGraph, parity_users, seen_items_csr
from components.core.catalog import Layout, read_json, staging_dir, write_json

log = logging.getLogger(__name__)

KIND = "exports"
INPUT_NAME = "user_idx"
OUTPUT_NAMES = ("top_items", "top_scores")
ONNX_FILE = "model.onnx"
PARITY_FILE = "parity.json"
REFERENCE_FILE = "parity_reference.npz"
TIE_TOLERANCE = 1e-6  # relative: scores this close to the K-th are ties for the top-K overlap


class QuantizationError(ValueError):
    """Quantized embedding tables change the top-K more than export.min_topk_overlap_vs_fp32 allows."""


def export_onnx(module: ServingGraph, path: Path, opset: int) -> None:
    """Export with a dynamic batch axis and validate with ``onnx.checker``."""
    import onnx

    module.eval()
    example = torch.zeros(2, dtype=torch.int64)
    # The TorchScript exporter: the dynamo exporter needs onnxscript, which we do not depend on.
    torch.onnx.export(
        module,
        (example,),
        str(path),
        input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES),
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAMES[0]: {0: "batch"}, OUTPUT_NAMES[1]: {0: "batch"}},
        opset_version=opset,
        dynamo=False,
        do_constant_folding=True,
    )
    onnx.checker.check_model(str(path), full_check=True)


def onnxruntime_session(onnx_path: str | Path, providers: list[str] | None = None, threads: int = 0):
    """An ONNX Runtime session; ``threads=0`` lets ORT pick."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(onnx_path), options, providers=providers or ["CPUExecutionProvider"])


def torch_outputs(module: ServingGraph, user_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        items, scores = module(torch.from_numpy(np.asarray(user_idx, np.int64)))
    return items.numpy(), scores.numpy()


def parity(
    ref_items: np.ndarray, ref_scores: np.ndarray, items: np.ndarray, scores: np.ndarray
) -> tuple[float, float]:
    """(max |score difference|, mean top-K overlap) of an engine's outputs vs the reference.

    Scores are compared position by position: both lists are sorted, and the k-th largest score
    is continuous in the inputs, so ties reordering items do not count as differences. Overlap is
    |top-K_ref ∩ top-K_engine| / K per user over the finite (non-excluded) entries, averaged; an
    engine item tied with the reference's K-th score counts as shared (ties at the cut).
    """
    if ref_items.shape != items.shape:
        raise ValueError(f"engine output shape {items.shape} != reference shape {ref_items.shape}")
    ref_finite, finite = np.isfinite(ref_scores), np.isfinite(scores)
    both_inf = ~ref_finite & ~finite & (np.sign(ref_scores) == np.sign(scores))
    with np.errstate(invalid="ignore"):  # -inf - -inf is handled by both_inf
        diff = np.where(both_inf, 0.0, np.abs(ref_scores.astype(np.float64) - scores.astype(np.float64)))
    if not diff.size:  # nothing measured is not a pass: NaN fails every parity gate
        return math.nan, math.nan
    max_abs_diff = float(np.nan_to_num(diff, nan=np.inf).max())
    # An excluded (-inf) slot's item is arbitrary: it only counts as a miss if one side is finite.
    match = (ref_items[:, :, None] == items[:, None, :]) & finite[:, None, :]
    hits = (match.any(axis=2) & ref_finite).sum(axis=1)
    # Ties at the cut: an engine item outside the reference's top-K whose score equals the reference's
    # K-th score is an equally valid pick (runtimes break ties differently; quantized tables tie often).
    kth = np.where(ref_finite, ref_scores, np.inf).min(axis=1, keepdims=True)
    tie = finite & ~match.any(axis=1) & (np.abs(scores - kth) <= TIE_TOLERANCE * np.maximum(np.abs(kth), 1.0))
    hits = np.minimum(hits + tie.sum(axis=1), ref_finite.sum(axis=1))
    denom = np.maximum(ref_finite.sum(axis=1), finite.sum(axis=1))
    overlap = np.where(denom > 0, hits / np.maximum(denom, 1), 1.0)
    return max_abs_diff, float(overlap.mean())


def quantization_parity(module: ServingGraph, fp32: ServingGraph, users: np.ndarray,
                        floors: dict[str, float]) -> tuple[float, float]:
    """(max |score diff|, top-K overlap) of ``module`` vs the same model in fp32 on ``users``; raises
    QuantizationError when the overlap is below the floor for ``module``'s precision."""
    diff, overlap = parity(*torch_outputs(fp32, users), *torch_outputs(module, users))
    floor = floors[module.precision]
    if not overlap >= floor:  # NaN fails too
        raise QuantizationError(f"{module.precision} tables keep top-{module.top_k} overlap {overlap:.4f} with "
                                f"fp32, below export.min_topk_overlap_vs_fp32[{module.precision}] = {floor}")
    return diff, overlap


@dataclass(frozen=True)
class ExportResult:
    """A published export: the ONNX serving graph and its ONNX Runtime parity vs PyTorch."""

    day: str
    version: str
    path: str
    onnx_path: str
    onnx_bytes: int
    num_users: int
    num_items: int
    embedding_dim: int
    top_k: int
    exclude_seen: bool
    max_seen: int
    opset: int
    parity_users: int
    parity_max_abs_diff: float
    parity_topk_overlap: float
    model_version: str
    precision: str  # embedding tables: fp32 | fp16 | int8 (per-row symmetric)
    table_bytes: int  # both embedding tables at that precision, scales included
    fp32_table_bytes: int
    # the quantized graph vs the same model in fp32 (PyTorch, same users): what quantization costs
    quantization_max_abs_diff: float
    quantization_topk_overlap: float


def shipped_precision(model_dir: str | Path) -> Precision:
    """The precision the size ladder chose for the model; fp32 for a model published without a ladder."""
    path = Path(model_dir) / LADDER_FILE
    return read_json(path)["chosen_rung"]["precision"] if path.exists() else "fp32"


def build_serving_graph(model_dir: str | Path, graph: GraphArtifact, cfg: PipelineConfig,
                        precision: Precision | None = None) -> ServingGraph:
    """The day's serving graph at ``precision`` (default: the model's :func:`shipped_precision`)."""
    user_emb, item_emb = load_embeddings(model_dir)
    if user_emb.shape[0] != graph.num_users or item_emb.shape[0] != graph.num_items:
        raise ValueError(
            f"{model_dir}: embeddings cover {user_emb.shape[0]} users x {item_emb.shape[0]} items, "
            f"graph {graph.ref.version} has {graph.num_users} x {graph.num_items}"
        )
    seen = seen_items_csr(graph.train_interactions(), graph.num_users) if cfg.export.exclude_seen else None
    return ServingGraph(user_emb, item_emb, cfg.export.top_k, seen, precision or shipped_precision(model_dir))


def serving_io(top_k: int) -> dict[str, Any]:
    """The serving graph's inputs and outputs (names, dtypes, shapes), as the manifest records them."""
    return {
        "input": {"name": INPUT_NAME, "dtype": "int64", "shape": ["batch"]},
        "outputs": [
            {"name": OUTPUT_NAMES[0], "dtype": "int64", "shape": ["batch", top_k]},
            {"name": OUTPUT_NAMES[1], "dtype": "float32", "shape": ["batch", top_k]},
        ],
    }


def graph_shape(module: ServingGraph, graph: GraphArtifact, cfg: PipelineConfig) -> dict[str, Any]:
    """Sizes and settings of an exported graph (manifest and result share them)."""
    return {"num_users": graph.num_users, "num_items": graph.num_items, "embedding_dim": int(module.user_emb.shape[1]),
            "precision": module.precision, "exclude_seen": module.exclude_seen,
            "max_seen": module.max_seen, "opset": cfg.export.opset}


def run_export(layout: Layout, day: str, cfg: PipelineConfig, *, graph: GraphRef, model: PrunedRef) -> ExportResult:
    """Export the pruned ``model`` (scoring on ``graph``) to ONNX, check it, and measure ORT-vs-PyTorch parity."""
    model_ref, graph_ref = layout.artifact(model), layout.artifact(graph)
    graph = GraphArtifact.load(graph_ref)
    module = build_serving_graph(model_ref.path, graph, cfg)
    shape = graph_shape(module, graph, cfg)
    users = parity_users(graph.num_users, cfg.seed)
    ref_items, ref_scores = torch_outputs(module, users)
    fp32 = build_serving_graph(model_ref.path, graph, cfg, "fp32") if module.precision != "fp32" else module
    quant_diff, quant_overlap = quantization_parity(module, fp32, users, cfg.export.min_topk_overlap_vs_fp32)

    with staging_dir(layout.artifacts(KIND)) as tmp:
        onnx_path = tmp / ONNX_FILE
        export_onnx(module, onnx_path, cfg.export.opset)
        session = onnxruntime_session(onnx_path)
        ort_items, ort_scores = session.run(list(OUTPUT_NAMES), {INPUT_NAME: users})
        max_abs_diff, overlap = parity(ref_items, ref_scores, ort_items, ort_scores)
        np.savez(tmp / REFERENCE_FILE, user_idx=users, top_items=ref_items, top_scores=ref_scores)
        parity_report = {
            "runtime": "onnxruntime",
            "provider": session.get_providers()[0],
            "users": int(users.shape[0]),
            "max_abs_diff": max_abs_diff,
            "topk_overlap": overlap,
            "top_k": module.top_k,
            "precision": module.precision,
            "table_bytes": module.table_bytes,
            "fp32_table_bytes": fp32.table_bytes,
            "quantization_max_abs_diff": quant_diff,
            "quantization_topk_overlap": quant_overlap,
        }
        write_json(tmp / PARITY_FILE, parity_report)
        onnx_bytes = onnx_path.stat().st_size
        ref = layout.publish(
            KIND,
            day,
            tmp,
            manifest={
                "inputs": {"model": model_ref.as_lineage(), "graph": graph_ref.as_lineage()},
                "config_hash": cfg.config_hash("export"),
                "metrics": {"onnx_bytes": onnx_bytes, **parity_report},
                "io": serving_io(module.top_k),
                **shape,
            },
        )
    result = ExportResult(
        day=day, version=ref.version, path=ref.path, onnx_path=str(Path(ref.path) / ONNX_FILE), onnx_bytes=onnx_bytes,
        top_k=module.top_k, parity_users=int(users.shape[0]), parity_max_abs_diff=max_abs_diff,
        parity_topk_overlap=overlap, model_version=model_ref.version, table_bytes=module.table_bytes,
        fp32_table_bytes=fp32.table_bytes, quantization_max_abs_diff=quant_diff, quantization_topk_overlap=quant_overlap,
        **shape,
    )
    log.info(
        "export %s: %s (%d bytes, %d users x %d items, d=%d, K=%d, max_seen=%d, %s tables %d bytes vs fp32 %d, "
        "top-K overlap with fp32 %.4f) ORT parity max_abs_diff=%.2e topk_overlap=%.4f over %d users",
        day, result.version, onnx_bytes, graph.num_users, graph.num_items, result.embedding_dim,
        result.top_k, result.max_seen, result.precision, result.table_bytes, result.fp32_table_bytes, quant_overlap,
        max_abs_diff, overlap, result.parity_users,
    )
    return result
