"""Both teacher kinds behind one interface: what distill, prune, evaluation and gates use.

A teacher artifact (kind ``models/teacher``) is one of

* ``teacher.kind: lightgcn``: model.pt + embeddings.npz (final user/item embeddings), as before;
* ``teacher.kind: graph_filter``: filter.npz (``v`` [num_items, rank], ``s`` [rank]: the SVD of the
  normalized window graph R~) + filter.json (variant, parameters, edge_weights, sizes). The filter
  scores a user from their interaction row, so it is rebuilt from the graph's training pairs.

``load_teacher(path, train)`` returns a :class:`Teacher` whatever the kind: its ``scorer`` is an
``evaluate.Scorer`` (users -> scores over all items) and ``init_student(dim, layers)`` a LightGCN
student started from the teacher's best low-rank scores. ``load_teacher_scorer`` is the one call
evaluation and serving need.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from components.core.config import PipelineConfig
from components.model.metrics import Scorer, embedding_scorer
from components.data.graph import Interactions, normalized_edges
from components.model.models.graph_filter import FilterParams, GraphFilter
from components.model.models.lightgcn import LightGCN, principal_axes, project_ego, uniform_layer_weights
from components.core.catalog import read_json, write_json

log = logging.getLogger(__name__)

FILTER_FILE, FILTER_META = "filter.npz", "filter.json"


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
    """The graph-filter teacher of ``train`` per config (DGL-normalized R~, randomized SVD)."""
    tic = time.perf_counter()
    edges = normalized_edges(train, num_users, num_items, cfg.teacher.edge_weights == "weighted")
    log.info("graph filter: %d distinct edges normalized (%s) with DGL in %.1fs", len(edges),
             cfg.teacher.edge_weights, time.perf_counter() - tic)
    return GraphFilter.fit(edges.user, edges.item, edges.strength, edges.norm, num_users, num_items,
                           filter_params(cfg))


def spectral_student(graph_filter: GraphFilter, dim: int, num_layers: int, init_std: float = 0.1) -> LightGCN:
    """A LightGCN whose *final* scores start as the filter's rank-``dim`` part U_k S_k V_k^T.

    [U_k; V_k] are eigenvectors of the normalized bipartite adjacency with eigenvalues S_k, so
    propagation multiplies column j by p(s_j) = sum_l alpha_l s_j^l: ego = [U_k; V_k] sqrt(S_k) / p(S_k)
    gives final embeddings [U_k; V_k] sqrt(S_k), i.e. scores U_k S_k V_k^T. With ``num_layers`` 0 (a
    matrix-factorization student) the item rows also carry D_i^1/2: the ideal low-pass scores. One global scale brings the egos to LightGCN's init std
    (Adam's step size is absolute, so a tiny init would be overwritten in the first steps).
    """
    u, v, s = graph_filter.low_rank_factors(dim)
    weights = torch.tensor(uniform_layer_weights(num_layers), dtype=torch.float64)
    p = (weights[None, :] * s.double()[:, None] ** torch.arange(num_layers + 1)).sum(1)
    scale = (s.double().sqrt() / p.clamp(min=1e-12)).float()
    if num_layers == 0:
        # no propagation to pass through: the items also take GF-CF's D_i^1/2, so the scores are the
        # filter's ideal low-pass part itself (r D_i^-1/2 V_k V_k^T D_i^1/2, up to a per-user scale)
        v = v * (graph_filter.item_sqrt / graph_filter.item_sqrt.mean().clamp(min=1e-12))[:, None]
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


def load_teacher(path: str | Path, train: Interactions) -> Teacher:
    """The teacher artifact at ``path``. ``train`` is the graph's training window (all its pairs, the
    pairs the artifact was built from): a graph filter scores users from their rows of it."""
    path = Path(path)
    if (path / FILTER_META).exists():
        meta = read_json(path / FILTER_META)
        with np.load(path / FILTER_FILE) as data:
            v, s = torch.from_numpy(data["v"]), torch.from_numpy(data["s"])
        edges = normalized_edges(train, meta["num_users"], meta["num_items"], meta["edge_weights"] == "weighted")
        return graph_filter_teacher(GraphFilter(edges.user, edges.item, edges.strength, edges.norm, meta["num_users"],
                                                meta["num_items"], v, s, FilterParams(**meta["params"])))
    from components.model.train import load_embeddings, load_model  # train imports this module

    user_emb, item_emb = (torch.from_numpy(a) for a in load_embeddings(path))
    return lightgcn_teacher(lambda: load_model(path)[0], user_emb, item_emb)


def load_teacher_scorer(path: str | Path, train: Interactions) -> Scorer:
    """Scores [len(users), num_items] of the teacher artifact at ``path`` (either kind)."""
    return load_teacher(path, train).scorer


def teacher_topk(scorer: Scorer, known: Interactions, num_users: int, num_items: int, k: int,
                 user_batch_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, items) [num_users, k]: each user's teacher top-k with ``known`` pairs excluded, scored
    in user batches (memory ~ batch x num_items) with the mask and top-k fused per batch."""
    k = min(k, num_items)
    keys = torch.from_numpy(np.unique(known.user.astype(np.int64) * num_items + known.item))
    top_scores = torch.empty(num_users, k)
    top_items = torch.empty(num_users, k, dtype=torch.long)
    tic = time.perf_counter()
    for start in range(0, num_users, user_batch_size):
        stop = min(start + user_batch_size, num_users)
        scores = scorer(torch.arange(start, stop))
        lo, hi = torch.searchsorted(keys, torch.tensor([start * num_items, stop * num_items]))
        batch_keys = keys[lo:hi]
        scores[batch_keys // num_items - start, batch_keys % num_items] = -torch.inf
        top_scores[start:stop], top_items[start:stop] = torch.topk(scores, k, dim=1)
        if time.perf_counter() - tic > 10:  # progress for the long (Gowalla-size) passes only
            log.info("teacher top-%d: %d/%d users in %.0fs", k, stop, num_users, time.perf_counter() - tic)
    return top_scores, top_items
