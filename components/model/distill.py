"""Distillation stage: a small LightGCN-shaped student trained with BPR + ranking distillation.

The teacher is either kind (components/model/teacher.py); distillation needs only its top-k per user.
Student: LightGCN propagation, ``distill.embedding_dim`` dims, initialized (``distill.init:
teacher``, the default) at the teacher's best low-rank scores: a graph filter's top singular
vectors (spectral init), or a LightGCN teacher's egos projected on its top principal axes. Loss:

    BPR + L2(ego) + kd_weight * (kd_rank_weight * RD + kd_kl_weight * KL)

* RD (Ranking Distillation, Tang & Wang, KDD 2018), pairwise: the teacher's top-``kd_topk`` items
  per user (training positives excluded) are soft positives ranked above the BPR negative, weighted
  by rank as w_r ~ exp(-r / lambda);
* KL: temperature-scaled KL between the teacher's and the student's score distributions over
  the teacher's top-``kd_topk`` items (Hinton et al. 2015), teacher scores standardized per user.

``distill.shuffle_labels`` permutes the item column of the training pairs and the teacher's item
identities: a deliberately bad candidate that the gates must reject (tests/e2e).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import torch

from components.core.config import PipelineConfig
from components.core.refs import GraphRef, Ref, TeacherRef
from components.model.metrics import embedding_scorer, evaluate_scorer
from components.core.interactions import Interactions
from components.data.graph import GraphArtifact
from components.model.models.lightgcn import LightGCN, count_parameters, gather_rows, resolve_backend
from components.model.models.losses import kl_distillation_loss, rank_discount_weights, ranking_distillation_loss
from components.core.catalog import Layout, read_json, staging_dir
from components.model.teacher import DistillTargets, Teacher, load_teacher, pairs_fingerprint, target_users, teacher_topk
from components.model.train import (
    ExtraLoss,
    FitResult,
    ModelArtifact,
    adjacency_of,
    existing_artifact,
    final_embeddings,
    fit_lightgcn,
    ran_on,
    resolve_device,
    split_validation,
    summary_metrics,
    validation_record,
    validation_sample,
    work_dir,
    write_model_files,
)

log = logging.getLogger(__name__)

KIND = "models/student"


def make_kd_loss(top_scores: torch.Tensor, top_items: torch.Tensor, cfg: PipelineConfig,
                 device: torch.device) -> ExtraLoss:
    """The distillation term added to BPR: kd_weight * (rank * RD + kl * KL) over the teacher's top-k.

    Only the teacher's top-k (scores, items) per user is needed, so any teacher kind works. The KL
    target is softmax of the teacher's top-k scores standardized per user (zero mean, unit std):
    score scales differ by orders of magnitude between a graph filter and an embedding model.
    """
    dcfg = cfg.distill
    top_items = top_items.to(device)
    weights = rank_discount_weights(top_items.shape[1], dcfg.kd_rank_lambda, device)
    centered = top_scores - top_scores.mean(1, keepdim=True)
    target = (centered / centered.std(1, keepdim=True).clamp(min=1e-6)).to(device)
    # users outside a distill.teacher_target_users sample have no target (items -1): BPR only
    has_target = top_items[:, 0] >= 0
    sampled = not bool(has_target.all())

    def loss(user_final, item_final, users, positives, negatives):
        if sampled:
            keep = has_target[users]
            users, negatives = users[keep], negatives[keep]
        batch_users = gather_rows(user_final, users)  # not user_final[users]: see gather_rows (issue 20)
        scores = (batch_users[:, None, :] * gather_rows(item_final, top_items[users])).sum(-1)
        total = torch.zeros((), device=user_final.device)
        if dcfg.kd_rank_weight > 0:
            neg_scores = (batch_users * gather_rows(item_final, negatives)).sum(-1)
            total = total + dcfg.kd_rank_weight * ranking_distillation_loss(scores, neg_scores, weights)
        if dcfg.kd_kl_weight > 0:
            total = total + dcfg.kd_kl_weight * kl_distillation_loss(scores, target[users], dcfg.kd_temperature)
        return dcfg.kd_weight * total

    return loss


def known_pairs(train: Interactions, val: Interactions | None) -> Interactions:
    """Pairs the teacher's soft positives must exclude: fit and validation pairs alike, so the
    distillation targets never leak validation items into the student's early stopping."""
    if val is None or len(val) == 0:
        return train
    return Interactions(np.concatenate([train.user, val.user]), np.concatenate([train.item, val.item]),
                        np.concatenate([train.weight, val.weight]))


def corrupt_labels(train: Interactions, seed: int) -> Interactions:
    """Permute the item column: every pair now points at a random item (a deliberately bad model)."""
    perm = np.random.default_rng([seed, 99]).permutation(len(train))
    return Interactions(train.user, train.item[perm], train.weight)


def training_signal(train: Interactions, top_items: torch.Tensor | None, num_items: int,
                    cfg: PipelineConfig) -> tuple[Interactions, torch.Tensor | None]:
    """The pairs and teacher items a student trains on: as given, or, with distill.shuffle_labels,
    both permuted. Distillation and pruning's fine-tune both use it, so the shipped candidate is bad."""
    if not cfg.distill.shuffle_labels:
        return train, top_items
    log.warning("distill.shuffle_labels is on: training labels and teacher items are permuted (bad candidate)")
    if top_items is not None:
        permuted = torch.from_numpy(np.random.default_rng([cfg.seed, 98]).permutation(num_items))[top_items.clamp(min=0)]
        top_items = torch.where(top_items >= 0, permuted, top_items)  # -1 (no target) stays -1
    return corrupt_labels(train, cfg.seed), top_items


def targets_record(num_users: int, cfg: PipelineConfig, source: str) -> dict:
    """What the distill record says about the targets: how many users, of how many, sampled how,
    and where they came from (``source``: "teacher_artifact", read from the teacher's targets file,
    or "scored", ranked here)."""
    sample = cfg.distill.teacher_target_users
    sampled = sample is not None and sample < num_users
    return {"users": int(min(sample, num_users)) if sampled else num_users, "of_users": num_users,
            "sampled": sampled, "seed": cfg.seed if sampled else None, "source": source}


def teacher_targets(teacher: Teacher, known: Interactions, cfg: PipelineConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, items) [num_users, kd_topk]: the teacher's top-k with ``known`` pairs excluded, for
    :func:`target_users` (other rows: items -1), in blocks within compute.block_bytes."""
    return teacher_topk(teacher.scorer, known, teacher.num_users, teacher.num_items, cfg.distill.kd_topk,
                        cfg.eval.user_batch_size, target_users(teacher.num_users, cfg), cfg.compute.block_bytes)


def stored_targets_mismatch(stored: DistillTargets | None, teacher: Teacher, known: Interactions,
                            cfg: PipelineConfig) -> str | None:
    """Why the teacher artifact's stored targets are not what :func:`teacher_targets` would rank
    here (None: they are the same): absent, another k, other users or other excluded pairs."""
    if stored is None:
        return "the teacher artifact has no targets file"
    if stored.k != min(cfg.distill.kd_topk, teacher.num_items):
        return f"stored top-{stored.k}, distill.kd_topk is {cfg.distill.kd_topk}"
    if stored.items.shape[0] != teacher.num_users or not np.array_equal(stored.users, target_users(teacher.num_users, cfg)):
        return f"stored for {stored.users.size} users of {stored.items.shape[0]}, not distill's target users"
    if stored.known != pairs_fingerprint(known, teacher.num_items):
        return "stored with other excluded pairs"
    return None


def distill_targets(teacher_path: str | Path, teacher: Teacher, known: Interactions,
                    cfg: PipelineConfig) -> tuple[tuple[torch.Tensor, torch.Tensor], str]:
    """((scores, items), source): the targets the teacher stage stored (source "teacher_artifact")
    when they are exactly :func:`teacher_targets`' (same k, users and excluded pairs), else ranked
    here (source "scored"), so a distill config other than the teacher's still gets its own."""
    stored = DistillTargets.load(teacher_path)
    why = stored_targets_mismatch(stored, teacher, known, cfg)
    if why is None:
        log.info("teacher targets: top-%d of %d users read from %s", stored.k, stored.users.size, teacher_path)
        return (stored.scores, stored.items), "teacher_artifact"
    log.info("teacher targets: ranking them here (%s)", why)
    return teacher_targets(teacher, known, cfg), "scored"


def train_student(train: Interactions, val: Interactions | None, num_users: int, num_items: int, teacher: Teacher,
                  cfg: PipelineConfig, checkpoint_path: Path | None = None, max_seconds: float | None = None,
                  targets: tuple[torch.Tensor, torch.Tensor] | None = None) -> FitResult:
    """Fit the student with BPR + distillation from ``teacher``'s top-k (no distillation term when
    distill.kd_weight is 0: the no-KD twin), initialized per distill.init. ``targets`` reuses a
    precomputed :func:`teacher_targets` (the benchmark trains several students from one teacher)."""
    dcfg = cfg.distill
    # the deliberately bad candidate gets no head start from the teacher: even shuffled teacher egos,
    # propagated over the true graph at evaluation, rebuild much of the teacher's quality
    init = "random" if dcfg.shuffle_labels else dcfg.init
    device = resolve_device(cfg.teacher.device)
    kd = None
    if dcfg.kd_weight > 0:
        top_scores, top_items = targets if targets is not None else teacher_targets(teacher, known_pairs(train, val), cfg)
        train, top_items = training_signal(train, top_items, num_items, cfg)
        kd = make_kd_loss(top_scores, top_items, cfg, device)
    else:
        train, _ = training_signal(train, None, num_items, cfg)
    torch.manual_seed(cfg.seed + 1)
    dim = dcfg.embedding_dim
    model = teacher.init_student(dim, dcfg.num_layers) if init == "teacher" else \
        LightGCN(num_users, num_items, dim, dcfg.num_layers)
    log.info("student: dim %d, %d layers, init %s (teacher %s), kd_weight %.2f (rank %.2f, kl %.2f, top-%d)", dim,
             dcfg.num_layers, init, teacher.kind, dcfg.kd_weight, dcfg.kd_rank_weight, dcfg.kd_kl_weight, dcfg.kd_topk)
    return fit_lightgcn(model, train, val, epochs=dcfg.epochs, lr=dcfg.lr, l2=dcfg.l2, batch_size=dcfg.batch_size,
                        seed=cfg.seed + 1, eval_every=cfg.teacher.eval_every, patience=cfg.teacher.early_stop_patience,
                        device=device, backend=cfg.teacher.propagation, ks=tuple(cfg.eval.ks),
                        user_batch_size=cfg.eval.user_batch_size, block_bytes=cfg.compute.block_bytes, extra_loss=kd,
                        checkpoint_path=checkpoint_path,
                        max_seconds=max_seconds, name="student", weighted=cfg.teacher.edge_weights == "weighted",
                        keep_start=init == "teacher", epoch_edge_budget=dcfg.epoch_edge_budget)


def load_stage_inputs(layout: Layout, graph: GraphRef, model: Ref, cfg: PipelineConfig):
    """The graph, the split used by the teacher, and a model artifact (teacher or student)."""
    graph_ref, model_ref = layout.artifact(graph), layout.artifact(model)
    graph = GraphArtifact.load(graph_ref)
    train_all = graph.train_interactions()
    train, val = split_validation(train_all, cfg.teacher.val_fraction, cfg.seed)
    return graph_ref, model_ref, graph, train_all, train, val


def holdout_and_retention(user_emb, item_emb, graph: GraphArtifact, train_all: Interactions, cfg: PipelineConfig,
                          val_metrics: dict, teacher_metrics: dict) -> dict:
    holdout = evaluate_scorer(embedding_scorer(user_emb, item_emb), train_all, graph.holdout_interactions(),
                              graph.num_items, tuple(cfg.eval.ks), cfg.eval.user_batch_size, cfg.compute.block_bytes)
    ratio = lambda a, b: float(a / b) if b else 0.0  # noqa: E731
    return {
        "val": val_metrics, "holdout": holdout,
        "ndcg_retention_val": ratio(val_metrics.get("ndcg@20", 0.0), teacher_metrics["val"].get("ndcg@20", 0.0)),
        "ndcg_retention_holdout": ratio(holdout.get("ndcg@20", 0.0), teacher_metrics["holdout"].get("ndcg@20", 0.0)),
        "recall_retention_holdout": ratio(holdout.get("recall@20", 0.0), teacher_metrics["holdout"].get("recall@20", 0.0)),
    }


def run_distill(layout: Layout, day: str, cfg: PipelineConfig, *, graph: GraphRef,
                teacher: TeacherRef) -> ModelArtifact:
    """Distill ``teacher`` into a student on ``graph`` and publish it (kind models/student)."""
    graph_ref, teacher_ref, graph, train_all, train, val = load_stage_inputs(layout, graph, teacher, cfg)
    inputs = [graph_ref.as_lineage(), teacher_ref.as_lineage()]
    config_hash = cfg.config_hash("distill")
    done = existing_artifact(layout, KIND, day, inputs, config_hash)
    if done is not None:
        return done
    device = resolve_device(cfg.teacher.device)
    teacher = load_teacher(teacher_ref.path, train_all, device, cfg.compute.block_bytes)
    teacher_metrics = read_json(Path(teacher_ref.path) / "metrics.json")
    work = work_dir(layout, "student", day, f"{config_hash}-{teacher_ref.version}")
    targets, source = distill_targets(teacher_ref.path, teacher, known_pairs(train, val), cfg) \
        if cfg.distill.kd_weight > 0 else (None, None)
    val_eval = validation_sample(val, cfg.teacher.val_users, cfg.seed)
    fit = train_student(train, val_eval, graph.num_users, graph.num_items, teacher, cfg, work / "checkpoint.pt",
                        targets=targets)
    full_adj = adjacency_of(train_all, graph.num_users, graph.num_items, cfg.teacher.edge_weights == "weighted")
    user_emb, item_emb = final_embeddings(fit.model, full_adj, resolve_backend(cfg.teacher.propagation, "cpu"))
    num_params = count_parameters(fit.model)
    metrics = {
        **holdout_and_retention(user_emb, item_emb, graph, train_all, cfg, fit.best_val, teacher_metrics),
        "num_params": num_params, "teacher_num_params": teacher_metrics["num_params"],
        "compression_ratio": teacher_metrics["num_params"] / num_params,
        "embedding_dim": fit.model.embedding_dim, "shuffle_labels": cfg.distill.shuffle_labels,
        "train": {"epochs_run": len(fit.history), "best_epoch": fit.best_epoch + 1, "stopped": fit.stopped,
                  "seconds": fit.train_seconds, "batch_size": fit.batch_size,
                  "epoch_edge_budget": cfg.distill.epoch_edge_budget, **ran_on(device)},
        "validation": validation_record(val, val_eval, cfg.teacher.val_users, cfg.seed),
        "teacher_targets": targets_record(graph.num_users, cfg, source) if source else None,
    }
    with staging_dir(layout.artifacts(KIND)) as tmp:
        write_model_files(tmp, fit.model, user_emb, item_emb, graph_ref.version, metrics, fit.history)
        metrics = read_json(tmp / "metrics.json")
        ref = layout.publish(KIND, day, tmp, {"inputs": inputs, "config_hash": config_hash,
                                              "metrics": summary_metrics(metrics)})
    shutil.rmtree(work, ignore_errors=True)
    log.info("student %s v%s: dim %d, %.1fx fewer params, val ndcg@20 retention %.3f, holdout ndcg@20 %.4f "
             "(retention %.3f)", day, ref.version, fit.model.embedding_dim, metrics["compression_ratio"],
             metrics["ndcg_retention_val"], metrics["holdout"].get("ndcg@20", 0), metrics["ndcg_retention_holdout"])
    return ModelArtifact(KIND, day, ref.version, ref.path, num_params, summary_metrics(metrics))
