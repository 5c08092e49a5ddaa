"""Teacher stage: the day's teacher, either kind (``teacher.kind``), built, evaluated and published;
and both kinds behind one interface (:class:`Teacher`), what distill, prune and evaluation use.

A teacher artifact (kind ``models/teacher``) is one of

* ``teacher.kind: graph_filter`` (default): computed in closed form from the day's graph
  (components/model/models/graph_filter.py): filter.npz (``v`` [num_items, rank], ``s`` [rank]: the
  SVD of the normalized window graph R~) + filter.json (variant, parameters, edge_weights, sizes).
  The filter scores a user from their interaction row, so it is rebuilt from the graph's training pairs;
* ``teacher.kind: lightgcn``: trained (components/model/train.py), warm-started, early-stopped,
  checkpointed: model.pt + embeddings.npz (final user/item embeddings).

``load_teacher(path, train)`` returns a :class:`Teacher` whatever the kind: its ``scorer`` is a
``metrics.Scorer`` (users -> scores over all items) and ``init_student(dim, layers)`` a LightGCN
student started from the teacher's best low-rank scores.

Nightly semantics: the graph of run day D holds the window ending D-1; the teacher trains on it
(minus a seeded validation split) and is then evaluated on day D's pairs, the fresh holdout.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from components.core.catalog import ArtifactRef, Layout, read_json, staging_dir, write_json, write_measured_json
from components.core.config import PipelineConfig
from components.core.errors import StageSkipped
from components.core.refs import GraphRef, TeacherRef
from components.model.metrics import (SCORE_BYTES, MetricTally, Scorer, block_rows, embedding_scorer,
                                      evaluate_scorer, metric_summary, plan_evaluation, popularity_scorer,
                                      ranked_blocks, sorted_ks)
from components.core.interactions import Interactions, normalized_edges
from components.data.graph import GraphArtifact
from components.model.models.graph_filter import FilterParams, GraphFilter
from components.model.models.lightgcn import (LightGCN, principal_axes, project_ego, resolve_backend,
                                               uniform_layer_weights)
from components.model.train import (FitResult, ModelArtifact, adjacency_of, existing_artifact, final_embeddings,
                                    fit_lightgcn, load_embeddings, load_model, ran_on, resolve_device,
                                    split_validation, summary_metrics, validation_record, validation_sample,
                                    warm_start_rows, work_dir, write_model_files)

log = logging.getLogger(__name__)

KIND = "models/teacher"
FILTER_FILE, FILTER_META = "filter.npz", "filter.json"
# The whole-window teacher's distillation targets, ranked in the same pass as its holdout metrics
TARGETS_FILE = "targets.npz"


class InsufficientHistory(StageSkipped):
    """The day's graph has too little training data to train on; the DAG turns this into a skip."""


@dataclass(frozen=True)
class Teacher:
    kind: str  # "lightgcn" | "graph_filter"
    num_users: int
    num_items: int
    num_params: int
    scorer: Scorer
    init_student: Callable[[int, int], LightGCN]  # (dim, num_layers) -> student with teacher-derived egos


def filter_params(cfg: PipelineConfig) -> FilterParams:
    return FilterParams(**cfg.teacher.graph_filter.model_dump(), seed=cfg.seed)


def fit_graph_filter(train: Interactions, num_users: int, num_items: int, cfg: PipelineConfig) -> GraphFilter:
    """The graph-filter teacher of ``train`` per config (DGL-normalized R~, randomized SVD), on
    teacher.device with scoring blocks within compute.block_bytes."""
    tic = time.perf_counter()
    edges = normalized_edges(train, num_users, num_items, cfg.teacher.edge_weights == "weighted")
    log.info("graph filter: %d distinct edges normalized (%s) with DGL in %.1fs", len(edges),
             cfg.teacher.edge_weights, time.perf_counter() - tic)
    return GraphFilter.fit(edges.user, edges.item, edges.strength, edges.norm, num_users, num_items,
                           filter_params(cfg), resolve_device(cfg.teacher.device), cfg.compute.block_bytes)


def spectral_student(graph_filter: GraphFilter, dim: int, num_layers: int, init_std: float = 0.1) -> LightGCN:
    """A LightGCN whose *final* scores start as the filter's rank-``dim`` part U_k S_k V_k^T.

    [U_k; V_k] are eigenvectors of the normalized bipartite adjacency with eigenvalues S_k, so
    propagation multiplies column j by p(s_j) = sum_l alpha_l s_j^l: ego = [U_k; V_k] sqrt(S_k) / p(S_k)
    gives final embeddings [U_k; V_k] sqrt(S_k), i.e. scores U_k S_k V_k^T. With ``num_layers`` 0 (a
    matrix-factorization student) the item rows also carry D_i^1/2: the ideal low-pass scores. One global scale brings the egos to LightGCN's init std
    (Adam's step size is absolute, so a tiny init would be overwritten in the first steps).
    """
    u, v, s = (t.cpu() for t in graph_filter.low_rank_factors(dim))  # the student is built on the CPU
    weights = torch.tensor(uniform_layer_weights(num_layers), dtype=torch.float64)
    p = (weights[None, :] * s.double()[:, None] ** torch.arange(num_layers + 1)).sum(1)
    scale = (s.double().sqrt() / p.clamp(min=1e-12)).float()
    if num_layers == 0:
        # no propagation to pass through: the items also take GF-CF's D_i^1/2, so the scores are the
        # filter's ideal low-pass part itself (r D_i^-1/2 V_k V_k^T D_i^1/2, up to a per-user scale)
        item_sqrt = graph_filter.item_sqrt.cpu()
        v = v * (item_sqrt / item_sqrt.mean().clamp(min=1e-12))[:, None]
    ego = torch.cat([u, v]) * scale
    ego = ego * (init_std / ego.std().clamp(min=1e-12))
    model = LightGCN(graph_filter.num_users, graph_filter.num_items, ego.shape[1], num_layers)
    with torch.no_grad():
        model.user_embedding.weight.copy_(ego[: graph_filter.num_users])
        model.item_embedding.weight.copy_(ego[graph_filter.num_users:])
    return model


def graph_filter_teacher(graph_filter: GraphFilter) -> Teacher:
    return Teacher("graph_filter", graph_filter.num_users, graph_filter.num_items, graph_filter.num_params,
                   graph_filter.score, lambda dim, layers: spectral_student(graph_filter, dim, layers))


def lightgcn_teacher(model: Callable[[], LightGCN], user_emb: torch.Tensor, item_emb: torch.Tensor) -> Teacher:
    """``model`` gives the teacher's LightGCN when a student is initialized from it (loaded lazily:
    scoring needs only the final embeddings)."""
    def init(dim: int, layers: int) -> LightGCN:
        # teacher ego @ its top-`dim` principal axes: the teacher's best rank-`dim` scores
        return project_ego(model(), principal_axes(user_emb, item_emb)[0][:, :dim], layers)

    # LightGCN's parameters are its ego tables, the same size as the final embeddings
    return Teacher("lightgcn", user_emb.shape[0], item_emb.shape[0], int(user_emb.numel() + item_emb.numel()),
                   embedding_scorer(user_emb, item_emb), init)


def write_graph_filter(out: Path, graph_filter: GraphFilter, cfg: PipelineConfig) -> None:
    np.savez(out / FILTER_FILE, **graph_filter.state())
    write_json(out / FILTER_META, {"variant": graph_filter.params.variant, "params": filter_params(cfg).__dict__,
                                   "edge_weights": cfg.teacher.edge_weights, "num_users": graph_filter.num_users,
                                   "num_items": graph_filter.num_items})


def load_teacher(path: str | Path, train: Interactions, device: torch.device | str = "cpu",
                 block_bytes: int | None = None) -> Teacher:
    """The teacher artifact at ``path``. ``train`` is the graph's training window (all its pairs, the
    pairs the artifact was built from): a graph filter scores users from their rows of it, on
    ``device`` in blocks within ``block_bytes``."""
    path = Path(path)
    if (path / FILTER_META).exists():
        meta = read_json(path / FILTER_META)
        with np.load(path / FILTER_FILE) as data:
            v, s = torch.from_numpy(data["v"]), torch.from_numpy(data["s"])
        edges = normalized_edges(train, meta["num_users"], meta["num_items"], meta["edge_weights"] == "weighted")
        return graph_filter_teacher(GraphFilter(edges.user, edges.item, edges.strength, edges.norm, meta["num_users"],
                                                meta["num_items"], v, s, FilterParams(**meta["params"]),
                                                device, block_bytes))
    user_emb, item_emb = (torch.from_numpy(a) for a in load_embeddings(path))
    return lightgcn_teacher(lambda: load_model(path)[0], user_emb, item_emb)


def teacher_topk(scorer: Scorer, known: Interactions, num_users: int, num_items: int, k: int,
                 user_batch_size: int = 4096, users: np.ndarray | None = None, block_bytes: int | None = None,
                 device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, items) [num_users, k] on the CPU: each user's teacher top-k with ``known`` pairs
    excluded, scored in blocks (at most ``user_batch_size`` users, fewer within ``block_bytes``) with
    the mask and top-k fused per block on ``device`` (None: the scorer's). With ``users`` only those
    users are scored; the other rows hold items -1 and scores 0 (no target)."""
    k = min(k, num_items)
    users = np.arange(num_users) if users is None else np.sort(np.asarray(users, dtype=np.int64))
    top_scores = torch.zeros(num_users, k)
    top_items = torch.full((num_users, k), -1, dtype=torch.long)
    block = block_rows(block_bytes, SCORE_BYTES * num_items, user_batch_size)
    tic, done = time.perf_counter(), 0
    for ranked in ranked_blocks(scorer, users, known, num_users, num_items, (k,), block, device):
        top_scores[ranked.users], top_items[ranked.users] = (t.cpu() for t in ranked.top[k])
        done += ranked.users.numel()
        if time.perf_counter() - tic > 10:  # progress for the long (Gowalla-size) passes only
            log.info("teacher top-%d: %d/%d users in %.0fs", k, done, users.size, time.perf_counter() - tic)
    return top_scores, top_items


def target_users(num_users: int, cfg: PipelineConfig) -> np.ndarray:
    """Users the teacher's distillation targets are computed for: all, or
    distill.teacher_target_users of them drawn with the config seed (sorted)."""
    sample = cfg.distill.teacher_target_users
    if sample is None or sample >= num_users:
        return np.arange(num_users)
    return np.sort(np.random.default_rng([cfg.seed, 97]).choice(num_users, sample, replace=False))


def pairs_fingerprint(pairs: Interactions, num_items: int) -> str:
    """sha256 of the distinct (user, item) pairs: what a top-k excluded, whatever their order or
    repeats (the exclusion is a set: ``metrics.ranked_blocks`` masks every seen pair)."""
    keys = np.unique(pairs.user.astype(np.int64) * np.int64(num_items) + pairs.item.astype(np.int64))
    return hashlib.sha256(keys.tobytes()).hexdigest()


@dataclass(frozen=True)
class DistillTargets:
    """The teacher's top-``k`` of ``users`` with the pairs fingerprinted ``known`` excluded: ``scores``
    / ``items`` [num_users, k] on the CPU, other users' rows 0 / -1 (as ``teacher_topk`` gives them)."""

    scores: torch.Tensor
    items: torch.Tensor
    users: np.ndarray
    known: str  # pairs_fingerprint of the excluded pairs

    @property
    def k(self) -> int:
        return int(self.items.shape[1])

    def record(self) -> dict:
        """What the teacher's metrics say the file covers."""
        return {"file": TARGETS_FILE, "k": self.k, "users": int(self.users.size), "of_users": int(self.items.shape[0]),
                "known_pairs_sha256": self.known}

    def write(self, out: Path) -> None:
        np.savez(out / TARGETS_FILE, scores=self.scores.numpy(), items=self.items.numpy().astype(np.int32),
                 users=self.users.astype(np.int64), known=np.array(self.known))

    @classmethod
    def load(cls, path: str | Path) -> "DistillTargets | None":
        """The targets stored in the teacher artifact at ``path``; None when it has none."""
        file = Path(path) / TARGETS_FILE
        if not file.exists():
            return None
        with np.load(file) as data:
            return cls(torch.from_numpy(data["scores"]), torch.from_numpy(data["items"].astype(np.int64)),
                       data["users"], str(data["known"]))


def holdout_and_targets(scorer: Scorer, train_all: Interactions, holdout: Interactions, num_users: int,
                        num_items: int, cfg: PipelineConfig) -> tuple[dict, DistillTargets | None]:
    """The whole-window teacher's fresh-holdout metrics (``evaluate_scorer``'s dict) and, when
    distillation needs them (distill.kd_weight > 0), its distillation targets: the top
    distill.kd_topk of :func:`target_users` with every window pair excluded, from ONE scoring pass
    over the union of both user sets (issue 19: at 100k users the two passes took 372 + 559 s).

    The target users are ranked first, in ``teacher_topk``'s very blocks, then the evaluated users
    without a target: a score's last bits can depend on how many users share its block (the
    matrix product's kernel does), so the targets are bit for bit ``teacher_topk``'s (distill trains
    the same student), and the metrics are ``evaluate_scorer``'s unless that moves a near-tie
    across a rank (tested equal). Every block gets one ``torch.topk`` per k (not a prefix of the
    larger: the order among tied scores may differ between k)."""
    started = time.perf_counter()
    ks = sorted_ks(cfg.eval.ks)
    plan = plan_evaluation(train_all, holdout, num_items)
    tally = MetricTally(plan, ks, num_items)
    kmax = min(ks[-1], num_items)
    kd = min(cfg.distill.kd_topk, num_items) if cfg.distill.kd_weight > 0 else None
    targets_for = target_users(num_users, cfg) if kd else np.zeros(0, np.int64)
    others = np.setdiff1d(plan.users, targets_for, assume_unique=True)
    is_evaluated = torch.zeros(num_users, dtype=torch.bool)
    is_evaluated[torch.from_numpy(plan.users)] = True
    top_scores, top_items = torch.zeros(num_users, kd or 0), torch.full((num_users, kd or 0), -1, dtype=torch.long)
    block = block_rows(cfg.compute.block_bytes, SCORE_BYTES * num_items, cfg.eval.user_batch_size)
    passes = [(targets_for, sorted({kmax, kd or kmax}), True), (others, [kmax], False)]
    blocks = itertools.chain.from_iterable(
        ((ranked, targeted) for ranked in ranked_blocks(scorer, users, train_all, num_users, num_items, pass_ks, block))
        for users, pass_ks, targeted in passes)
    tic, done = time.perf_counter(), 0
    with torch.no_grad():
        for ranked, targeted in blocks:
            evaluated = is_evaluated[ranked.users]
            if evaluated.any():
                where = evaluated.to(ranked.users_on_device.device)
                tally.add(ranked.users_on_device[where], ranked.top[kmax][1][where])
            if targeted:
                top_scores[ranked.users], top_items[ranked.users] = (t.cpu() for t in ranked.top[kd])
            done += ranked.users.numel()
            if time.perf_counter() - tic > 10:  # progress for the long (Gowalla-size) passes only
                log.info("teacher holdout + top-%s: %d/%d users in %.0fs", kd, done, targets_for.size + others.size,
                         time.perf_counter() - tic)
    metrics = metric_summary(tally.result(), ks, started)
    if not kd:
        return metrics, None
    return metrics, DistillTargets(top_scores, top_items, targets_for, pairs_fingerprint(train_all, num_items))


@dataclass(frozen=True)
class TrainedModel:
    model: LightGCN
    fit: FitResult
    warm_start: dict[str, int]


def train_teacher(train: Interactions, val: Interactions | None, num_users: int, num_items: int,
                  cfg: PipelineConfig, previous: LightGCN | None = None, checkpoint_path: Path | None = None,
                  max_seconds: float | None = None) -> TrainedModel:
    """Train the teacher LightGCN on ``train`` (early stopping on ``val``), warm-started from ``previous``."""
    tcfg = cfg.teacher
    torch.manual_seed(cfg.seed)
    model = LightGCN(num_users, num_items, tcfg.embedding_dim, tcfg.num_layers, tcfg.layer_weights)
    warm = {"users_copied": 0, "items_copied": 0, "users_new": num_users, "items_new": num_items}
    if previous is not None:
        warm = warm_start_rows(model, previous)
    log.info("teacher init: %d users, %d items, dim %d, %d layers; warm start copied %d users + %d items, "
             "%d users + %d items new", num_users, num_items, tcfg.embedding_dim, tcfg.num_layers,
             warm["users_copied"], warm["items_copied"], warm["users_new"], warm["items_new"])
    fit = fit_lightgcn(model, train, val, epochs=tcfg.epochs, lr=tcfg.lr, l2=tcfg.l2, batch_size=tcfg.batch_size,
                       seed=cfg.seed, eval_every=tcfg.eval_every, patience=tcfg.early_stop_patience,
                       device=resolve_device(tcfg.device), backend=tcfg.propagation, ks=tuple(cfg.eval.ks),
                       user_batch_size=cfg.eval.user_batch_size, block_bytes=cfg.compute.block_bytes,
                       checkpoint_path=checkpoint_path, max_seconds=max_seconds, name="teacher", weighted=tcfg.edge_weights == "weighted")
    return TrainedModel(fit.model, fit, warm)


@dataclass(frozen=True)
class BuiltTeacher:
    """A computed or trained teacher, before it is published."""

    teacher: Teacher
    val_metrics: dict
    train_info: dict
    warm_start: dict
    write: Callable[[Path, dict, str], None]  # (folder, metrics, graph version): the artifact's files


def build_graph_filter_teacher(train_all: Interactions, train: Interactions, val: Interactions,
                               graph: GraphArtifact, cfg: PipelineConfig) -> BuiltTeacher:
    """The closed-form teacher of the whole window, validated as the filter of the fit split on the
    held-out pairs (the same protocol as LightGCN's)."""
    tic = time.perf_counter()
    val_metrics = evaluate_scorer(fit_graph_filter(train, graph.num_users, graph.num_items, cfg).score, train,
                                  val, graph.num_items, tuple(cfg.eval.ks), cfg.eval.user_batch_size,
                                  cfg.compute.block_bytes) if len(val) else {}
    graph_filter = fit_graph_filter(train_all, graph.num_users, graph.num_items, cfg)
    train_info = {"seconds": time.perf_counter() - tic, "train_pairs": len(train_all), "val_pairs": len(val),
                  "variant": cfg.teacher.graph_filter.variant, "rank": int(graph_filter.v.shape[1])}

    def write(out: Path, metrics: dict, graph_version: str) -> None:
        write_graph_filter(out, graph_filter, cfg)
        write_measured_json(out, "metrics.json", {**metrics, "bytes": {"filter_npz": (out / FILTER_FILE).stat().st_size}})
        write_measured_json(out, "history.json", [])

    return BuiltTeacher(graph_filter_teacher(graph_filter), val_metrics, train_info, {"from": None}, write)


def build_lightgcn_teacher(train_all: Interactions, train: Interactions, val: Interactions, graph: GraphArtifact,
                           cfg: PipelineConfig, previous_ref: ArtifactRef | None, work: Path) -> BuiltTeacher:
    """The LightGCN teacher trained on the fit split, warm-started from ``previous_ref``."""
    tcfg = cfg.teacher
    previous = load_model(previous_ref.path)[0] if previous_ref else None
    trained = train_teacher(train, val, graph.num_users, graph.num_items, cfg, previous, work / "checkpoint.pt")
    # Serving sees every training pair: propagate over the full window graph, exclude all of it.
    full_adj = adjacency_of(train_all, graph.num_users, graph.num_items, tcfg.edge_weights == "weighted")
    user_emb, item_emb = final_embeddings(trained.model, full_adj, resolve_backend(tcfg.propagation, "cpu"))
    train_info = {"epochs_run": len(trained.fit.history), "best_epoch": trained.fit.best_epoch + 1,
                  "stopped": trained.fit.stopped, "seconds": trained.fit.train_seconds,
                  "train_pairs": len(train), "val_pairs": len(val)}
    warm_start = {"from": previous_ref.as_lineage() if previous_ref else None, **trained.warm_start}

    def write(out: Path, metrics: dict, graph_version: str) -> None:
        write_model_files(out, trained.model, user_emb, item_emb, graph_version, metrics, trained.fit.history)

    return BuiltTeacher(lightgcn_teacher(lambda: trained.model, user_emb, item_emb), trained.fit.best_val,
                        train_info, warm_start, write)


def run_teacher(layout: Layout, day: str, cfg: PipelineConfig, *, graph: GraphRef,
                warm_start: TeacherRef | None = None) -> ModelArtifact:
    """Build (graph_filter: compute, lightgcn: train) the teacher of ``graph``, evaluate it (validation +
    fresh-day holdout + popularity baseline) and publish it. A LightGCN teacher starts from
    ``warm_start`` (the caller's choice: the newest teacher of an earlier day) or cold from None; a
    graph filter is recomputed from the graph alone."""
    graph_ref = layout.artifact(graph)
    graph = GraphArtifact.load(graph_ref)
    train_all = graph.train_interactions()
    tcfg = cfg.teacher
    if len(train_all) < tcfg.min_train_pairs:
        raise InsufficientHistory(f"graph {day} v{graph_ref.version} has {len(train_all)} training pairs, "
                                  f"fewer than teacher.min_train_pairs={tcfg.min_train_pairs}")
    if warm_start is not None and tcfg.kind != "lightgcn":
        raise ValueError(f"teacher {day}: a {tcfg.kind} teacher has no warm start (given {warm_start.as_dict()})")
    previous_ref = layout.artifact(warm_start) if warm_start else None
    inputs = [graph_ref.as_lineage()] + ([previous_ref.as_lineage()] if previous_ref else [])
    config_hash = cfg.config_hash("teacher")
    done = existing_artifact(layout, KIND, day, inputs, config_hash)
    if done is not None:
        return done

    train, val_all = split_validation(train_all, tcfg.val_fraction, cfg.seed)
    val = validation_sample(val_all, tcfg.val_users, cfg.seed)
    ks = tuple(cfg.eval.ks)
    work = work_dir(layout, "teacher", day, f"{config_hash}-{graph_ref.version}-{previous_ref.version if previous_ref else 'cold'}")
    if tcfg.kind == "graph_filter":
        built = build_graph_filter_teacher(train_all, train, val, graph, cfg)
    else:
        built = build_lightgcn_teacher(train_all, train, val, graph, cfg, previous_ref, work)
    teacher = built.teacher
    holdout = graph.holdout_interactions()
    holdout_metrics, targets = holdout_and_targets(teacher.scorer, train_all, holdout, graph.num_users,
                                                   graph.num_items, cfg)
    popularity = evaluate_scorer(popularity_scorer(train_all, graph.num_items), train_all, holdout,
                                 graph.num_items, ks, cfg.eval.user_batch_size, cfg.compute.block_bytes)
    stats = read_json(graph.path / "stats.json")
    metrics = {
        "kind": tcfg.kind, "edge_weights": tcfg.edge_weights, **ran_on(resolve_device(tcfg.device)),
        "val": built.val_metrics, "validation": validation_record(val_all, val, tcfg.val_users, cfg.seed),
        "holdout": holdout_metrics, "popularity_holdout": popularity,
        "holdout_counts": stats.get("holdout", {}), "new_users": stats.get("new_users"),
        "new_items": stats.get("new_items"), "num_params": teacher.num_params, "train": built.train_info,
        "warm_start": built.warm_start, "distill_targets": targets.record() if targets else None,
    }
    with staging_dir(layout.artifacts(KIND)) as tmp:
        if targets is not None:
            targets.write(tmp)
        built.write(tmp, metrics, graph_ref.version)
        metrics = read_json(tmp / "metrics.json")
        ref = layout.publish(KIND, day, tmp, {"inputs": inputs, "config_hash": config_hash,
                                              "metrics": summary_metrics(metrics)})
    shutil.rmtree(work, ignore_errors=True)
    log.info("teacher %s v%s (%s): holdout recall@20 %.4f ndcg@20 %.4f (popularity %.4f / %.4f), %d users "
             "evaluated, %d cold skipped", day, ref.version, tcfg.kind, holdout_metrics.get("recall@20", 0),
             holdout_metrics.get("ndcg@20", 0), popularity.get("recall@20", 0), popularity.get("ndcg@20", 0),
             holdout_metrics["users_evaluated"], holdout_metrics["cold_users_skipped"])
    return ModelArtifact(KIND, day, ref.version, ref.path, metrics["num_params"], summary_metrics(metrics))
