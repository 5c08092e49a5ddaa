"""Distillation stage: a small LightGCN-shaped student trained with BPR + ranking distillation.

Student: same propagation, embedding size round(teacher_dim * distill.dim_fraction), initialized
(``distill.init: teacher``, the default) as the teacher's ego embeddings projected onto the top
principal axes of the teacher's final embeddings: propagation is linear, so the student starts at
the teacher's best low-rank scores and distillation refines from there. Loss:

    BPR + L2(ego) + kd_weight * (kd_rank_weight * RD + kd_kl_weight * KL)

* RD (Ranking Distillation, Tang & Wang, KDD 2018): the teacher's top-``kd_topk`` items per user
  (training positives excluded) are soft positives, weighted by rank as w_r ~ exp(-r / lambda);
* KL: temperature-scaled KL between teacher and student score distributions over
  ``kd_candidates`` uniformly sampled items per user in the batch (Hinton et al. 2015).

``distill.shuffle_labels`` permutes the item column of the training pairs and the teacher's item
identities: a deliberately bad candidate that the gates must reject (tests/e2e).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import torch

from components.config import PipelineConfig
from components.evaluate import embedding_scorer, evaluate_scorer
from components.graph import GraphArtifact, Interactions
from components.models.lightgcn import (
    LightGCN,
    build_adjacency,
    count_parameters,
    principal_axes,
    project_ego,
    resolve_backend,
)
from components.models.losses import kl_distillation_loss, rank_discount_weights, ranking_distillation_loss
from components.storage import Layout, read_json, staging_dir
from components.train import (
    ExtraLoss,
    FitResult,
    ModelArtifact,
    existing_artifact,
    final_embeddings,
    fit_lightgcn,
    load_embeddings,
    load_model,
    resolve_device,
    split_validation,
    summary_metrics,
    work_dir,
    write_model_files,
)

log = logging.getLogger(__name__)

KIND = "models/student"


def teacher_topk(teacher_user: torch.Tensor, teacher_item: torch.Tensor, train: Interactions, k: int,
                 user_batch_size: int = 4096) -> torch.Tensor:
    """[num_users, k] teacher's top-k items per user, training positives excluded (batched, no user loop)."""
    num_users, num_items = teacher_user.shape[0], teacher_item.shape[0]
    k = min(k, num_items)
    keys = torch.from_numpy(np.unique(train.user.astype(np.int64) * num_items + train.item))
    out = torch.empty(num_users, k, dtype=torch.long)
    for start in range(0, num_users, user_batch_size):
        stop = min(start + user_batch_size, num_users)
        scores = teacher_user[start:stop] @ teacher_item.T
        lo, hi = torch.searchsorted(keys, torch.tensor([start * num_items, stop * num_items]))
        batch_keys = keys[lo:hi]
        scores[batch_keys // num_items - start, batch_keys % num_items] = -torch.inf
        out[start:stop] = torch.topk(scores, k, dim=1).indices
    return out


def make_kd_loss(teacher_user: torch.Tensor, teacher_item: torch.Tensor, topk: torch.Tensor,
                 cfg: PipelineConfig, device: torch.device) -> ExtraLoss:
    """The distillation term added to BPR: kd_weight * (rank * RD + kl * KL), per config."""
    dcfg = cfg.distill
    teacher_user, teacher_item, topk = teacher_user.to(device), teacher_item.to(device), topk.to(device)
    weights = rank_discount_weights(topk.shape[1], dcfg.kd_rank_lambda, device)
    generator = torch.Generator(device=device).manual_seed(cfg.seed + 17)
    num_items = teacher_item.shape[0]

    def loss(user_final, item_final, users, positives, negatives):
        total = torch.zeros((), device=user_final.device)
        u_e = user_final[users]
        if dcfg.kd_rank_weight > 0:
            rd_scores = (u_e[:, None, :] * item_final[topk[users]]).sum(-1)
            total = total + dcfg.kd_rank_weight * ranking_distillation_loss(rd_scores, weights)
        if dcfg.kd_kl_weight > 0:
            cand = torch.randint(0, num_items, (users.numel(), dcfg.kd_candidates), device=device, generator=generator)
            student = (u_e[:, None, :] * item_final[cand]).sum(-1)
            teacher = (teacher_user[users][:, None, :] * teacher_item[cand]).sum(-1)
            total = total + dcfg.kd_kl_weight * kl_distillation_loss(student, teacher, dcfg.kd_temperature)
        return dcfg.kd_weight * total

    return loss


def known_pairs(train: Interactions, val: Interactions | None) -> Interactions:
    """Pairs the teacher's soft positives must exclude: fit and validation pairs alike, so the
    distillation targets never leak validation items into the student's early stopping."""
    if val is None or len(val) == 0:
        return train
    return Interactions(np.concatenate([train.user, val.user]), np.concatenate([train.item, val.item]),
                        np.concatenate([train.weight, val.weight]))


def student_dim(teacher_dim: int, fraction: float) -> int:
    return max(1, int(round(teacher_dim * fraction)))


def corrupt_labels(train: Interactions, seed: int) -> Interactions:
    """Permute the item column: every pair now points at a random item (a deliberately bad model)."""
    perm = np.random.default_rng([seed, 99]).permutation(len(train))
    return Interactions(train.user, train.item[perm], train.weight)


def train_student(train: Interactions, val: Interactions | None, num_users: int, num_items: int,
                  teacher_user: torch.Tensor, teacher_item: torch.Tensor, cfg: PipelineConfig,
                  teacher: LightGCN | None = None, checkpoint_path: Path | None = None,
                  max_seconds: float | None = None) -> FitResult:
    """Fit the student with BPR + distillation from the teacher's final embeddings (and, with
    ``distill.init: teacher``, initialized from ``teacher``'s ego embeddings)."""
    dcfg = cfg.distill
    # the deliberately bad candidate gets no head start from the teacher: even shuffled teacher egos,
    # propagated over the true graph at evaluation, rebuild much of the teacher's quality
    init = "random" if dcfg.shuffle_labels else dcfg.init
    if init == "teacher" and teacher is None:
        raise ValueError("distill.init is 'teacher' but no teacher model was given")
    if dcfg.shuffle_labels:
        train = corrupt_labels(train, cfg.seed)
        teacher_item = teacher_item[torch.from_numpy(np.random.default_rng([cfg.seed, 98]).permutation(num_items))]
        log.warning("distill.shuffle_labels is on: training labels and teacher items are permuted (bad candidate)")
    device = resolve_device(cfg.teacher.device)
    topk = teacher_topk(teacher_user, teacher_item, known_pairs(train, val), dcfg.kd_topk, cfg.eval.user_batch_size)
    torch.manual_seed(cfg.seed + 1)
    dim = student_dim(teacher_user.shape[1], dcfg.dim_fraction)
    if init == "teacher":
        # student ego = teacher ego @ (teacher's top-`dim` principal axes): the student starts from the
        # teacher's best rank-`dim` scores instead of noise (the student may have other layer weights)
        model = project_ego(teacher, principal_axes(teacher_user, teacher_item)[0][:, :dim], dcfg.num_layers)
    else:
        model = LightGCN(num_users, num_items, dim, dcfg.num_layers)
    log.info("student: dim %d (teacher %d), %d layers, init %s, kd_weight %.2f (rank %.2f, kl %.2f, top-%d, "
             "%d candidates)", dim, teacher_user.shape[1], dcfg.num_layers, init, dcfg.kd_weight,
             dcfg.kd_rank_weight, dcfg.kd_kl_weight, dcfg.kd_topk, dcfg.kd_candidates)
    return fit_lightgcn(model, train, val, epochs=dcfg.epochs, lr=dcfg.lr, l2=dcfg.l2, batch_size=dcfg.batch_size,
                        seed=cfg.seed + 1, eval_every=cfg.teacher.eval_every, patience=cfg.teacher.early_stop_patience,
                        device=device, backend=cfg.teacher.propagation, ks=tuple(cfg.eval.ks),
                        user_batch_size=cfg.eval.user_batch_size,
                        extra_loss=make_kd_loss(teacher_user, teacher_item, topk, cfg, device),
                        checkpoint_path=checkpoint_path, max_seconds=max_seconds, name="student")


def load_stage_inputs(layout: Layout, day: str, cfg: PipelineConfig, model_kind: str):
    """The day's graph, the split used by the teacher, and a model artifact (teacher or student)."""
    graph_ref = layout.current("graphs", day)
    if graph_ref is None:
        raise FileNotFoundError(f"{layout.artifacts('graphs') / day}: no graph for day {day}")
    model_ref = layout.current(model_kind, day)
    if model_ref is None:
        raise FileNotFoundError(f"{layout.artifacts(model_kind) / day}: no {model_kind} for day {day}; run its stage first")
    graph = GraphArtifact.load(graph_ref)
    train_all = graph.train_interactions()
    train, val = split_validation(train_all, cfg.teacher.val_fraction, cfg.seed)
    return graph_ref, model_ref, graph, train_all, train, val


def holdout_and_retention(user_emb, item_emb, graph: GraphArtifact, train_all: Interactions, cfg: PipelineConfig,
                          val_metrics: dict, teacher_metrics: dict) -> dict:
    holdout = evaluate_scorer(embedding_scorer(user_emb, item_emb), train_all, graph.holdout_interactions(),
                              graph.num_items, tuple(cfg.eval.ks), cfg.eval.user_batch_size)
    ratio = lambda a, b: float(a / b) if b else 0.0  # noqa: E731
    return {
        "val": val_metrics, "holdout": holdout,
        "ndcg_retention_val": ratio(val_metrics.get("ndcg@20", 0.0), teacher_metrics["val"].get("ndcg@20", 0.0)),
        "ndcg_retention_holdout": ratio(holdout.get("ndcg@20", 0.0), teacher_metrics["holdout"].get("ndcg@20", 0.0)),
        "recall_retention_holdout": ratio(holdout.get("recall@20", 0.0), teacher_metrics["holdout"].get("recall@20", 0.0)),
    }


def run_distill(layout: Layout, day: str, cfg: PipelineConfig) -> ModelArtifact:
    """Distill the day's teacher into a student and publish it (kind models/student)."""
    graph_ref, teacher_ref, graph, train_all, train, val = load_stage_inputs(layout, day, cfg, "models/teacher")
    inputs = [graph_ref.as_lineage(), teacher_ref.as_lineage()]
    config_hash = cfg.config_hash("distill")
    done = existing_artifact(layout, KIND, day, inputs, config_hash)
    if done is not None:
        return done
    teacher_user, teacher_item = (torch.from_numpy(a) for a in load_embeddings(teacher_ref.path))
    teacher_metrics = read_json(Path(teacher_ref.path) / "metrics.json")
    work = work_dir(layout, "student", day, f"{config_hash}-{teacher_ref.version}")
    teacher = load_model(teacher_ref.path)[0]
    fit = train_student(train, val, graph.num_users, graph.num_items, teacher_user, teacher_item, cfg, teacher,
                        work / "checkpoint.pt")
    full_adj = build_adjacency(train_all.user, train_all.item, graph.num_users, graph.num_items)
    user_emb, item_emb = final_embeddings(fit.model, full_adj, resolve_backend(cfg.teacher.propagation, "cpu"))
    num_params = count_parameters(fit.model)
    metrics = {
        **holdout_and_retention(user_emb, item_emb, graph, train_all, cfg, fit.best_val, teacher_metrics),
        "num_params": num_params, "teacher_num_params": teacher_metrics["num_params"],
        "compression_ratio": teacher_metrics["num_params"] / num_params,
        "embedding_dim": fit.model.embedding_dim, "shuffle_labels": cfg.distill.shuffle_labels,
        "train": {"epochs_run": len(fit.history), "best_epoch": fit.best_epoch + 1, "stopped": fit.stopped,
                  "seconds": fit.train_seconds},
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
