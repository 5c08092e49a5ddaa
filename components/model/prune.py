"""Pruning stage: the size ladder's models, and the shipped one (components/model/ladder.py).

For each ``ladder.prune_ratios`` entry, the distilled student is pruned to that ratio (0: kept as
distilled), fine-tuning (BPR + distillation from the teacher) between steps; every model is
measured at every ``ladder.precisions`` and the chosen rung is published with its ladder.json.

* ``structured`` (default): remove whole embedding dimensions, least important first. The ego
  embeddings are first rotated onto the principal axes of the model's final embeddings (an
  orthonormal rotation changes no score), importance = the axis' eigenvalue, i.e. its share of
  the score mass. The exported model is really smaller: dim * (1 - prune ratio) columns in
  model.pt and in embeddings.npz.
* ``magnitude``: zero the smallest-|w| ego weights globally until the step's sparsity; masks stay
  fixed during fine-tuning (re-applied after every optimizer step). Propagation makes the final
  embeddings dense again, so the serving embeddings do not shrink; the ego weights are also saved
  packed (bitmask + nonzero values, ``model_sparse.npz``) and that size is reported.

Sparsity rises linearly over ``prune.steps``: step s targets ratio * s / steps. After
each step: parameters (total and nonzero), sparsity, bytes on disk and validation quality go to
history.json and metrics.json.
"""

from __future__ import annotations

import copy
import io
import logging
import time
from pathlib import Path

import numpy as np
import torch

from components.core.config import PipelineConfig
from components.core.refs import GraphRef, StudentRef, TeacherRef
from components.model.distill import (distill_targets, holdout_and_retention, known_pairs, load_stage_inputs, make_kd_loss,
                                      targets_record, teacher_targets, training_signal)
from components.model.models.lightgcn import (
    Backend,
    LightGCN,
    NormalizedAdjacency,
    count_parameters,
    principal_axes,
    project_ego,
    resolve_backend,
)
from components.model.ladder import LADDER_FILE, ladder_record, measure_rungs
from components.model.models.serving_graph import seen_items_csr
from components.core.catalog import Layout, read_json, staging_dir, write_measured_json
from components.model.teacher import Teacher, load_teacher
from components.model.train import (
    ModelArtifact,
    adjacency_of,
    evaluate_model,
    existing_artifact,
    final_embeddings,
    fit_lightgcn,
    load_model,
    ran_on,
    resolve_device,
    summary_metrics,
    validation_record,
    validation_sample,
    write_model_files,
)

log = logging.getLogger(__name__)

KIND = "models/pruned"


def remove_dimensions(model: LightGCN, keep: int, adjacency: NormalizedAdjacency,
                      backend: Backend) -> tuple[LightGCN, torch.Tensor]:
    """(smaller model, importance of every axis): rotate the ego embeddings onto the principal axes
    of the model's final embeddings (a rotation changes no score) and keep the ``keep`` most
    important axes, so what is cut is the least score mass, not merely the smallest raw column."""
    axes, importance = principal_axes(*final_embeddings(model, adjacency, backend))
    return project_ego(model, axes[:, :keep]), importance


def magnitude_masks(model: LightGCN, sparsity: float) -> list[torch.Tensor]:
    """Global magnitude masks over the ego tables: the smallest ``sparsity`` share of |w| is zeroed."""
    params = [model.user_embedding.weight, model.item_embedding.weight]
    flat = torch.cat([p.detach().abs().reshape(-1) for p in params])
    drop = int(round(sparsity * flat.numel()))
    if drop == 0:
        return [torch.ones_like(p, dtype=torch.bool) for p in params]
    # rank-based (not threshold-based) so ties cannot overshoot or undershoot the target
    order = torch.argsort(flat, stable=True)
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[order[:drop]] = False
    return list(torch.split(keep, [p.numel() for p in params]))  # flat; applied with view_as

def _apply_masks(model: LightGCN, masks: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for param, mask in zip([model.user_embedding.weight, model.item_embedding.weight], masks):
            # masks stay on the CPU; the model may be on the GPU while fine-tuning
            param.mul_(mask.view_as(param).to(param.device, param.dtype))


def packed_sparse_bytes(model: LightGCN) -> bytes:
    """Ego tables as bitmask + nonzero float32 values (what a sparse export would ship)."""
    buffer = io.BytesIO()
    arrays = {}
    for name, param in (("user", model.user_embedding.weight), ("item", model.item_embedding.weight)):
        dense = param.detach().cpu().numpy()
        mask = dense != 0
        arrays[f"{name}_mask"] = np.packbits(mask.reshape(-1))
        arrays[f"{name}_values"] = dense[mask].astype(np.float32)
        arrays[f"{name}_shape"] = np.array(dense.shape, dtype=np.int64)
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def model_bytes(model: LightGCN) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return len(buffer.getvalue())


def prune_model(base: LightGCN, train, val, teacher: Teacher, cfg: PipelineConfig, target_sparsity: float,
                max_seconds: float | None = None,
                targets: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[LightGCN, list[dict]]:
    """Iteratively prune ``base`` to ``target_sparsity`` with fine-tuning (KD from ``teacher``'s
    top-k, or the precomputed ``targets``); returns (model, per-step report). Magnitude pruning
    masks ``base`` in place: pass a copy to keep it."""
    pcfg, dcfg = cfg.prune, cfg.distill
    device = resolve_device(cfg.teacher.device)
    backend = resolve_backend(cfg.teacher.propagation, device)
    weighted = cfg.teacher.edge_weights == "weighted"
    kd = None
    if dcfg.kd_weight > 0 and pcfg.finetune_epochs > 0:
        top_scores, top_items = targets if targets is not None else teacher_targets(teacher, known_pairs(train, val), cfg)
        train, top_items = training_signal(train, top_items, base.num_items, cfg)
        kd = make_kd_loss(top_scores, top_items, cfg, device)
    elif pcfg.finetune_epochs > 0:
        train, _ = training_signal(train, None, base.num_items, cfg)
    base_params = count_parameters(base)
    model = base
    adjacency = adjacency_of(train, base.num_users, base.num_items, weighted)
    report: list[dict] = []
    for step in range(1, pcfg.steps + 1):
        sparsity = target_sparsity * step / pcfg.steps
        after_step = None
        if pcfg.method == "structured":
            keep = max(1, int(round(base.embedding_dim * (1 - sparsity))))
            model, importance = remove_dimensions(model, keep, adjacency, backend)
            log.info("prune step %d: keeping %d of %d principal axes (%.1f%% of the second moment)", step, keep,
                     len(importance), 100 * float(importance[:keep].sum() / importance.sum().clamp_min(1e-12)))
        else:
            masks = magnitude_masks(model, sparsity)
            _apply_masks(model, masks)
            after_step = lambda masks=masks: _apply_masks(model, masks)  # noqa: E731
        fit = None
        if pcfg.finetune_epochs > 0:
            fit = fit_lightgcn(model, train, val, epochs=pcfg.finetune_epochs, lr=dcfg.lr, l2=dcfg.l2,
                               batch_size=dcfg.batch_size, seed=cfg.seed + 100 + step,
                               eval_every=pcfg.finetune_epochs, patience=1, device=device,
                               backend=cfg.teacher.propagation, ks=tuple(cfg.eval.ks),
                               user_batch_size=cfg.eval.user_batch_size, block_bytes=cfg.compute.block_bytes,
                               extra_loss=kd, after_step=after_step,
                               max_seconds=max_seconds, name=f"prune step {step}", weighted=weighted,
                               keep_start=True, epoch_edge_budget=dcfg.epoch_edge_budget)
            model = fit.model
        val_metrics = fit.best_val if fit is not None and fit.best_val else (
            evaluate_model(model, adjacency, backend, train, val, tuple(cfg.eval.ks), cfg.eval.user_batch_size,
                           cfg.compute.block_bytes)
            if val is not None and len(val) else {})
        nonzero = count_parameters(model, nonzero=True)
        row = {
            "step": step, "method": pcfg.method, "target_sparsity": sparsity,
            "embedding_dim": model.embedding_dim, "num_params": count_parameters(model),
            "num_params_nonzero": nonzero, "sparsity": 1 - nonzero / base_params,
            "bytes_model_pt": model_bytes(model),
            "bytes_packed_sparse": len(packed_sparse_bytes(model)) if pcfg.method == "magnitude" else None,
            "finetune_epochs": len(fit.history) if fit else 0, "batch_size": fit.batch_size if fit else None,
            **{f"val_{k}": v for k, v in val_metrics.items()},
        }
        report.append(row)
        log.info("prune step %d/%d (%s): dim %d, %d/%d nonzero params (sparsity %.3f), %d bytes, val ndcg@20 %.4f",
                 step, pcfg.steps, pcfg.method, model.embedding_dim, nonzero, base_params, row["sparsity"],
                 row["bytes_model_pt"], row.get("val_ndcg@20", float("nan")))
    return model, report


def needs_targets(cfg: PipelineConfig) -> bool:
    """Whether any rung's fine-tune distils: a prune ratio > 0, fine-tune epochs and a KD weight."""
    return any(ratio > 0 for ratio in cfg.ladder.prune_ratios) and cfg.distill.kd_weight > 0 \
        and cfg.prune.finetune_epochs > 0


def ladder_models(student: LightGCN, train, val, teacher: Teacher, cfg: PipelineConfig,
                  targets: tuple[torch.Tensor, torch.Tensor] | None) -> list[tuple[float, LightGCN, list[dict]]]:
    """(prune ratio, model, per-step report) for every ladder.prune_ratios entry; ratio 0 is the
    student as distilled. Every pruned rung distils from the same ``targets`` (when
    :func:`needs_targets`)."""
    models = []
    for ratio in cfg.ladder.prune_ratios:
        if ratio == 0:
            models.append((ratio, student, []))
        else:
            models.append((ratio, *prune_model(copy.deepcopy(student), train, val, teacher, cfg, ratio, targets=targets)))
    return models


def build_ladder(student: LightGCN, train, val, train_all, teacher: Teacher, teacher_val_ndcg: float | None,
                 cfg: PipelineConfig, targets: tuple[torch.Tensor, torch.Tensor] | None
                 ) -> tuple[dict, list[tuple[LightGCN, list[dict]]]]:
    """(ladder record, (model, prune report) of each of its rungs): every ladder model of ``student``
    (pruned rungs distil from ``targets``) measured at every precision on the validation split
    (final embeddings over the fit split ``train``; latency with ``train_all``'s items excluded, as served)."""
    tic = time.perf_counter()
    models = ladder_models(student, train, val, teacher, cfg, targets)
    backend = resolve_backend(cfg.teacher.propagation, "cpu")
    fit_adj = adjacency_of(train, student.num_users, student.num_items, cfg.teacher.edge_weights == "weighted")
    seen = seen_items_csr(train_all, student.num_users) if cfg.export.exclude_seen else None
    rungs, rung_models = [], []
    for ratio, model, report in models:
        measured = measure_rungs(ratio, *final_embeddings(model, fit_adj, backend), count_parameters(model, nonzero=True),
                                 train, val, seen, teacher_val_ndcg, cfg)
        rungs += measured
        rung_models += [(model, report)] * len(measured)
    return ladder_record(rungs, teacher_val_ndcg, cfg.ladder, time.perf_counter() - tic), rung_models


def pruned_record(model: LightGCN, ladder: dict, report: list[dict], student_params: int, teacher_metrics: dict,
                  num_users: int, cfg: PipelineConfig, targets_source: str | None) -> dict:
    """The shipped rung's size, compression and provenance (method, ladder choice, device, KD targets)."""
    nonzero = count_parameters(model, nonzero=True)
    return {
        "method": cfg.prune.method, "steps": report, "prune_ratio": ladder["chosen_rung"]["prune_ratio"],
        "precision": ladder["chosen_rung"]["precision"], "embedding_dim": model.embedding_dim,
        "num_params": count_parameters(model), "num_params_nonzero": nonzero,
        "sparsity": 1 - nonzero / student_params, "student_num_params": student_params,
        "teacher_num_params": teacher_metrics["num_params"],
        "compression_ratio": teacher_metrics["num_params"] / max(nonzero, 1),
        "size_ratio_vs_student": student_params / count_parameters(model),
        **ran_on(resolve_device(cfg.teacher.device)),
        "teacher_targets": targets_record(num_users, cfg, targets_source) if targets_source else None,
    }


def run_prune(layout: Layout, day: str, cfg: PipelineConfig, *, graph: GraphRef, teacher: TeacherRef,
              student: StudentRef) -> ModelArtifact:
    """Build the size ladder from ``student`` (pruning with KD from ``teacher``), and publish the
    chosen rung's model with the ladder's record (kind models/pruned)."""
    graph_ref, student_ref, graph, train_all, train, val = load_stage_inputs(layout, graph, student, cfg)
    teacher_ref = layout.artifact(teacher)
    inputs = [graph_ref.as_lineage(), student_ref.as_lineage(), teacher_ref.as_lineage()]
    config_hash = cfg.config_hash("prune")
    done = existing_artifact(layout, KIND, day, inputs, config_hash)
    if done is not None:
        return done
    student, _ = load_model(student_ref.path)
    teacher = load_teacher(teacher_ref.path, train_all, resolve_device(cfg.teacher.device), cfg.compute.block_bytes)
    teacher_metrics = read_json(Path(teacher_ref.path) / "metrics.json")
    student_params = count_parameters(student)
    targets, source = distill_targets(teacher_ref.path, teacher, known_pairs(train, val), cfg) \
        if needs_targets(cfg) else (None, None)
    val_all, val = val, validation_sample(val, cfg.teacher.val_users, cfg.seed)
    ladder, rung_models = build_ladder(student, train, val, train_all, teacher, teacher_metrics["val"].get("ndcg@20"),
                                       cfg, targets)
    model, report = rung_models[ladder["chosen"]]
    weighted = cfg.teacher.edge_weights == "weighted"
    backend = resolve_backend(cfg.teacher.propagation, "cpu")
    fit_adj = adjacency_of(train, graph.num_users, graph.num_items, weighted)
    full_adj = adjacency_of(train_all, graph.num_users, graph.num_items, weighted)
    user_emb, item_emb = final_embeddings(model, full_adj, backend)
    val_metrics = evaluate_model(model, fit_adj, backend, train, val, tuple(cfg.eval.ks), cfg.eval.user_batch_size,
                                 cfg.compute.block_bytes) \
        if val is not None and len(val) else {}
    metrics = {**holdout_and_retention(user_emb, item_emb, graph, train_all, cfg, val_metrics, teacher_metrics),
               **pruned_record(model, ladder, report, student_params, teacher_metrics, graph.num_users, cfg, source),
               "validation": validation_record(val_all, val, cfg.teacher.val_users, cfg.seed)}
    with staging_dir(layout.artifacts(KIND)) as tmp:
        if cfg.prune.method == "magnitude" and metrics["prune_ratio"] > 0:
            (tmp / "model_sparse.npz").write_bytes(packed_sparse_bytes(model))
        write_measured_json(tmp, LADDER_FILE, ladder)  # rung latencies go to TIMINGS: not hashed
        write_model_files(tmp, model, user_emb, item_emb, graph_ref.version, metrics, report,
                          extra={"prune_method": cfg.prune.method})
        metrics = read_json(tmp / "metrics.json")
        ref = layout.publish(KIND, day, tmp, {"inputs": inputs, "config_hash": config_hash,
                                              "metrics": summary_metrics(metrics)})
    log.info("pruned %s v%s: ladder chose prune %.2f / %s (dim %d, %d table bytes) of %d rungs in %.1f s: %s; "
             "holdout ndcg@20 %.4f (retention %.3f)", day, ref.version, metrics["prune_ratio"], metrics["precision"],
             metrics["embedding_dim"], ladder["chosen_rung"]["table_bytes"], len(ladder["rungs"]), ladder["seconds"],
             ladder["reason"], metrics["holdout"].get("ndcg@20", 0), metrics["ndcg_retention_holdout"])
    return ModelArtifact(KIND, day, ref.version, ref.path, metrics["num_params"], summary_metrics(metrics))
