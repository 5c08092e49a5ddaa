"""Evaluate stage: the candidate against its baselines on the fresh day, measured.

Evaluation (``run_evaluate``) measures. The candidate named by the run's engine reference (see
components/decide/candidate.py), its teacher, the champion *as of the day* (the registry's newest
promoted model of an earlier day: never a model that has seen the day, and the same baseline
whenever the day is re-run) and a popularity baseline are ranked over the full catalogue for
every holdout user of the day, training positives and the user's recent items excluded (serving
never recommends those), via ``components.model.metrics``. Each model is evaluated *as served*: users it
has a trained embedding for get its scores, every other user gets serving's cold-user answer
(``components.ship.serving.answer_cold_users``: fold-in over that model's item embeddings from the
user's recent items in Feast as of the day's start, else the model's popularity). Users without
training history are the "cold" segment, the rest "warm"; users with any history before the day
(warm, or recent items to fold in) are "history": the only users on whom models can answer
differently. The record counts, per model, the users answered by the model, by fold-in and by
popularity, and the users whose every test item was seen before (not evaluated: nothing unseen to
recommend). Per-user metric vectors of every model are kept (per_user.npz) so that gates can
compute paired intervals (components/decide/gates.py judges them).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.core.catalog import Layout, run_dir, write_json
from components.core.config import PipelineConfig
from components.core.interactions import Interactions
from components.core.refs import EVALUATION_FILE, PER_USER_FILE, EvaluationResult, PerUser
from components.data.graph import GraphArtifact
from components.decide.candidate import CandidateRefs, candidate_id
from components.model.metrics import Scorer, UserMetrics, popularity_scorer, ranking_scorer, served_scorer, user_metrics
from components.model.train import resolve_device

log = logging.getLogger(__name__)

SEGMENTS = ("all", "history", "warm", "cold")  # components/core/config.py Segment


def prefix_scorer(user_emb: np.ndarray, item_emb: np.ndarray, num_items: int) -> Scorer:
    """Inner-product scorer over ``num_items`` items for a model covering an item prefix:
    items beyond its embeddings score -inf."""
    user_t = torch.as_tensor(user_emb, dtype=torch.float32)
    item_t = torch.as_tensor(item_emb, dtype=torch.float32)
    known = item_t.shape[0]
    if known > num_items:
        raise ValueError(f"model has {known} item rows, more than the graph's {num_items} items")

    def score(users: torch.Tensor) -> torch.Tensor:
        scores = torch.full((users.numel(), num_items), -torch.inf)
        scores[:, :known] = user_t[users] @ item_t.T
        return scores

    return score


@dataclass(frozen=True)
class History:
    """Users' recent items as serving reads them (Feast), as CSR over today's user and item indices."""

    indptr: np.ndarray  # [num_users + 1]
    indices: np.ndarray  # today's item indices, most recent first per user

    @classmethod
    def empty(cls, num_users: int) -> "History":
        return cls(np.zeros(num_users + 1, np.int64), np.zeros(0, np.int64))

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(user, item) index arrays, one per history entry."""
        return np.repeat(np.arange(self.indptr.size - 1), np.diff(self.indptr)), self.indices


def cold_served_scorer(item_emb: np.ndarray, item_degrees: np.ndarray, item_map: np.ndarray, history: History,
                       num_items: int) -> tuple[Scorer, np.ndarray]:
    """Serving's answer to users a model has no trained embedding for (``serving.cold_user_scorer``:
    fold-in from their history, else the model's popularity) over today's ``num_items`` items.
    ``item_map``: today's item index -> the model's (-1: unknown to it; scored -inf, and dropped
    from histories as serving drops items outside the version's catalogue). Returns (scorer, folded
    per today's user)."""
    from components.ship.serving import cold_user_scorer

    users, items = history.pairs()
    mapped = item_map[items]
    keep = mapped >= 0
    indptr = np.concatenate([[0], np.cumsum(np.bincount(users[keep], minlength=history.indptr.size - 1))])
    cold, folded = cold_user_scorer(item_emb, item_degrees, indptr, mapped[keep])
    known = np.flatnonzero(item_map >= 0)
    today_cols, model_cols = torch.from_numpy(known), torch.from_numpy(item_map[known])

    def score(batch: torch.Tensor) -> torch.Tensor:
        scores = torch.full((batch.numel(), num_items), -torch.inf)
        scores[:, today_cols] = cold(batch)[:, model_cols]
        return scores

    return score, folded


@dataclass(frozen=True)
class ServedModel:
    """A model as served over today's users: its scorer and who it answers how (per today's user)."""

    scorer: Scorer
    has_embedding: np.ndarray  # bool [num_users]: answered by the model itself
    folded: np.ndarray  # bool [num_users]: answered by fold-in where it has no embedding

    def answered_by(self, users: np.ndarray) -> dict[str, int]:
        model = self.has_embedding[users]
        fold = ~model & self.folded[users]
        return {"model": int(model.sum()), "fold_in": int(fold.sum()), "popularity": int((~model & ~fold).sum())}


def embedding_served(user_emb: np.ndarray, item_emb: np.ndarray, has_history: np.ndarray, item_degrees: np.ndarray,
                     history: History, num_items: int) -> ServedModel:
    """A model over an item prefix of today's graph (trained on it: ``has_history`` per its users,
    ``item_degrees`` its training interactions per item), as served."""
    known = item_emb.shape[0]
    item_map = np.where(np.arange(num_items) < known, np.arange(num_items), -1)
    cold, folded = cold_served_scorer(item_emb, item_degrees[:known], item_map, history, num_items)
    has_embedding = np.zeros(history.indptr.size - 1, bool)
    has_embedding[: user_emb.shape[0]] = has_history[: user_emb.shape[0]]
    return ServedModel(served_scorer(prefix_scorer(user_emb, item_emb, num_items), has_embedding, cold),
                       has_embedding, folded)


def version_served_scorer(layout: Layout, version: str, graph: GraphArtifact, history: History | None = None
                          ) -> ServedModel:
    """A registered version as serving answers the users of ``graph``: through the version's own
    string-ID maps (any subset or order of today's IDs), its embeddings for users it trained,
    serving's cold-user answer (fold-in from ``history``, its popularity) for the rest; items it
    never saw score -inf."""
    import pandas as pd

    from components.model.train import load_embeddings
    from components.decide.registry import version_dir, version_has_history, version_popularity

    path = version_dir(layout, version)
    user_emb, item_emb = load_embeddings(path)

    def index_map(name: str, id_column: str, size: int) -> np.ndarray:
        """Today's index -> the version's index (-1: unknown to the version)."""
        ours, theirs = pd.read_parquet(Path(graph.ref.path) / name), pd.read_parquet(path / name)
        position = pd.Index(theirs[id_column].astype(str)).get_indexer(ours[id_column].astype(str))
        mapping = np.full(size, -1, dtype=np.int64)
        mapping[ours["idx"].to_numpy(np.int64)] = np.where(position >= 0,
                                                            theirs["idx"].to_numpy(np.int64)[position], -1)
        return mapping

    user_map = index_map("users.parquet", "user_id", graph.num_users)
    item_map = index_map("items.parquet", "item_id", graph.num_items)
    history = History.empty(graph.num_users) if history is None else history
    # popularity.npy: the version's training interactions per item (serving's fold-in |N(i)| too)
    cold, folded = cold_served_scorer(item_emb, version_popularity(layout, version), item_map, history,
                                      graph.num_items)
    has_embedding = np.concatenate([version_has_history(layout, version), [False]])[user_map]  # -1 -> False
    known_t = torch.from_numpy(np.flatnonzero(item_map >= 0))
    user_t = torch.as_tensor(user_emb, dtype=torch.float32)
    item_t = torch.as_tensor(item_emb[item_map[item_map >= 0]], dtype=torch.float32)
    ours_to_theirs = torch.from_numpy(user_map)

    def model(users: torch.Tensor) -> torch.Tensor:
        scores = torch.full((users.numel(), graph.num_items), -torch.inf)
        scores[:, known_t] = user_t[ours_to_theirs[users]] @ item_t.T
        return scores

    return ServedModel(served_scorer(model, has_embedding, cold), has_embedding, folded)


def read_history(layout: Layout, cfg: PipelineConfig, graph: GraphArtifact, users: np.ndarray, day: str
                 ) -> tuple[History, str]:
    """``users``' recent items as serving read them when ``day`` began (Feast point-in-time join on
    the offline snapshots: the day's own events never count), as CSR over the graph's indices; and
    how cold users are answered. Without a Feast repo (no features stage for this root) nobody has
    history: popularity only, said in the result."""
    import pandas as pd

    from components.data.features import feature_repo_path, recent_items_as_of
    from components.ship.serving import history_csr

    if not (feature_repo_path(layout) / "feature_store.yaml").exists():
        log.warning("evaluate %s: no Feast repo at %s: cold users are answered by popularity only",
                    day, feature_repo_path(layout))
        return History.empty(graph.num_users), "popularity (no feature store)"
    user_ids = pd.read_parquet(Path(graph.ref.path) / "users.parquet").set_index("idx")["user_id"].astype(str)
    items = pd.read_parquet(Path(graph.ref.path) / "items.parquet").sort_values("idx")
    as_of = pd.Timestamp(day, tz="UTC")
    histories = recent_items_as_of(layout, cfg, user_ids.loc[users].tolist(), as_of)
    indptr, indices = history_csr(histories, pd.Index(items["item_id"].astype(str).to_numpy()))
    counts = np.zeros(graph.num_users, np.int64)
    counts[users] = np.diff(indptr)  # users are sorted, so their CSR rows keep today's order
    history = History(np.concatenate([[0], np.cumsum(counts)]), indices)
    log.info("evaluate %s: recent items as of %s for %d holdout users (%d with history, %d items) from Feast",
             day, as_of.isoformat(), len(users), int((counts > 0).sum()), indices.size)
    return history, f"fold-in from Feast recent items as of {as_of.isoformat()}, else popularity"


def _segment_means(metrics: UserMetrics, per_user: PerUser) -> dict[str, dict[str, float]]:
    out = {}
    for segment in SEGMENTS:
        mask = per_user.segment_mask(segment)
        means = {name: float(v[mask].mean()) if mask.any() else 0.0 for name, v in metrics.values.items()}
        out[segment] = {**means, "users_evaluated": int(mask.sum())}
    out["all"].update(metrics.coverage)
    return out


def _excluded(train: Interactions, history: History) -> Interactions:
    """Serving never recommends a user's recent items (in any segment): they are excluded as training
    positives are (user_metrics unions the keys, so items in both count once)."""
    history_user, history_item = history.pairs()
    return Interactions(np.concatenate([train.user, history_user]), np.concatenate([train.item, history_item]),
                        np.concatenate([train.weight, np.ones(history_item.size, train.weight.dtype)]))


def run_evaluate(layout: Layout, day: str, cfg: PipelineConfig, *, run_key: str,
                 candidate: dict[str, Any]) -> EvaluationResult:
    """Evaluate the candidate (``candidate``: its engine reference, or convert's result; the CLI names
    the day's current engine when none is given, and says so), its teacher, the champion as of ``day`` and popularity
    on the day's holdout, as served; write evaluation.json and per_user.npz to the run's folder."""
    from components.decide.registry import champion_as_of

    refs = CandidateRefs.from_engine(layout, candidate.get("engine", candidate))
    if refs.day != day:
        raise ValueError(f"evaluate {day}: the candidate's artifacts are of {refs.day}")
    baseline, baseline_reason = champion_as_of(layout, day)
    cid = candidate_id(refs, cfg.config_hash(), baseline.version if baseline else None)
    graph = GraphArtifact.load(refs.graph)
    train, holdout = graph.train_interactions(), graph.holdout_interactions()
    num_items = graph.num_items
    has_train = np.bincount(train.user, minlength=graph.num_users) > 0
    history, cold_answer = read_history(layout, cfg, graph, np.unique(holdout.user), day)
    device = resolve_device(cfg.teacher.device)
    models = served_models(layout, day, refs, graph, history, baseline.version if baseline else None, cid,
                           device, cfg.compute.block_bytes)
    scorers: dict[str, Scorer] = {name: m.scorer for name, m in models.items()}
    scorers["popularity"] = popularity_scorer(train, num_items)

    excluded = _excluded(train, history)
    ks, batch = tuple(cfg.eval.ks), cfg.eval.user_batch_size
    measured = {name: user_metrics(scorer, excluded, holdout, num_items, ks, batch, include_cold=True,
                                   block_bytes=cfg.compute.block_bytes, device=device)
                for name, scorer in scorers.items()}
    first = measured["candidate"]
    cold = ~has_train[first.users]
    answered_by = {name: m.answered_by(first.users) for name, m in models.items()}
    out = run_dir(layout, day, run_key)
    with_history = ~cold | (np.diff(history.indptr)[first.users] > 0)
    per_user = PerUser(users=first.users, cold=cold, values={n: m.values for n, m in measured.items()},
                       history=with_history)
    per_user.save(out / PER_USER_FILE)
    segments = {name: _segment_means(m, per_user) for name, m in measured.items()}
    all_of = lambda name: segments[name]["all"] if name in segments else None  # noqa: E731
    result = EvaluationResult(
        day=day, run_key=run_key, path=str(out / EVALUATION_FILE), per_user_path=str(out / PER_USER_FILE),
        candidate_id=cid, candidate_refs=refs.as_dict(), graph_version=refs.graph.version,
        candidate_version=cid, teacher_version=refs.teacher.version if refs.teacher else None,
        champion_version=baseline.version if baseline else None, baseline_reason=baseline_reason,
        candidate=all_of("candidate"), teacher=all_of("teacher"), champion=all_of("champion"),
        popularity=all_of("popularity"), segments=segments,
        holdout_users=int(np.unique(holdout.user).size), holdout_pairs=len(holdout),
        users_evaluated=int(first.users.size), warm_users_evaluated=int((~cold).sum()),
        cold_users_evaluated=int(cold.sum()),
        users_without_unseen_test_items=int(first.counts["users_without_unseen_test_items"]),
        cold_answer=cold_answer, answered_by=answered_by, history_users_evaluated=int(with_history.sum()),
        device=str(device),
    )
    write_json(Path(result.path), asdict(result))
    _log_evaluation(result, refs, ks)
    return result


def served_models(layout: Layout, day: str, refs: CandidateRefs, graph: GraphArtifact, history: History,
                  champion_version: str | None, cid: str, device: torch.device | str = "cpu",
                  block_bytes: int | None = None) -> dict[str, ServedModel]:
    """Candidate, teacher and champion (when there is one), each as served on ``graph``'s users."""
    from components.model.teacher import load_teacher
    from components.model.train import load_embeddings

    train, num_items = graph.train_interactions(), graph.num_items
    has_train = np.bincount(train.user, minlength=graph.num_users) > 0
    degrees = np.bincount(train.item, minlength=num_items)

    def served(name: str, user_emb: np.ndarray, item_emb: np.ndarray) -> ServedModel:
        if user_emb.shape[0] > graph.num_users or item_emb.shape[0] > num_items:
            raise ValueError(f"evaluate {day}: {name} covers {user_emb.shape[0]} users x {item_emb.shape[0]} items, "
                             f"more than graph {refs.graph.version} ({graph.num_users} x {num_items})")
        return embedding_served(user_emb, item_emb, has_train, degrees, history, num_items)

    models: dict[str, ServedModel] = {"candidate": served("candidate", *load_embeddings(refs.pruned.path))}
    teacher = load_teacher(refs.teacher.path, train, device, block_bytes) if refs.teacher is not None else None
    if teacher is None:
        log.warning("evaluate %s: candidate %s names no teacher; teacher-relative gates will fail", day, cid)
    elif teacher.kind == "lightgcn":
        models["teacher"] = served("teacher", *load_embeddings(refs.teacher.path))
    else:  # a graph filter scores every user of its graph from their rows; no item embeddings to fold into
        scorer = served_scorer(teacher.scorer, has_train, ranking_scorer(degrees, num_items))
        models["teacher"] = ServedModel(scorer, has_train, np.zeros(graph.num_users, bool))
    if champion_version is not None:  # through its own ID maps: it may know fewer (or other) users and items
        models["champion"] = version_served_scorer(layout, champion_version, graph, history)
    return models


def _log_evaluation(result: EvaluationResult, refs: CandidateRefs, ks: tuple[int, ...]) -> None:
    from components.decide.report import repeat_only_text

    day, run_key, cid, answered_by, cold_answer = (result.day, result.run_key, result.candidate_id,
                                                   result.answered_by, result.cold_answer)
    baseline_reason = result.baseline_reason
    k = 20 if 20 in ks else ks[0]
    log.info(
        "evaluate %s run %s: candidate %s (engine %s), baseline %s (%s); %d users evaluated (%d with history, "
        "%d warm, %d cold, as served: %d by fold-in, %d by popularity; %s); %s; ndcg@%d candidate %.4f "
        "teacher %s champion %s popularity %.4f",
        day, run_key, cid, refs.engine.version, result.champion_version or "none", baseline_reason,
        result.users_evaluated, result.history_users_evaluated, result.warm_users_evaluated,
        result.cold_users_evaluated,
        answered_by["candidate"]["fold_in"], answered_by["candidate"]["popularity"], cold_answer,
        repeat_only_text(result.users_without_unseen_test_items), k,
        result.candidate[f"ndcg@{k}"], f"{result.teacher[f'ndcg@{k}']:.4f}" if result.teacher else "n/a",
        f"{result.champion[f'ndcg@{k}']:.4f}" if result.champion else "n/a (bootstrap)",
        result.popularity[f"ndcg@{k}"],
    )
