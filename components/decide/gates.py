"""Evaluate and gate stages: the candidate against its baselines on the fresh day, then a blessing.

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
compute paired intervals.

Gating (``judge``, ``run_gate``) judges, as a pure function of the measurements and
config/gates.yaml: each evaluation gate gets a paired bootstrap confidence interval
(``scipy.stats.bootstrap``, seeded) of its statistic over users and a verdict PASS / FAIL /
INCONCLUSIVE by the rule of its kind; engine gates compare the engine's measurements (latency from
>= ``min_latency_calls`` timed calls). Without a champion (bootstrap), gates against the champion
are skipped and say so. A gate's role is decision or diagnostic: a diagnostic FAIL / INCONCLUSIVE
is overridden when the candidate conclusively beats the champion and popularity (``candidate_wins``).
The champion's health against popularity is judged alongside (``champion_health``; it never
blocks). The blessing records n, point value and interval of every gate and comparison. The
registry decides promotion (components/decide/registry.py); nothing here imports it back.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.decide.candidate import CandidateRefs, candidate_id
from components.core.config import GateSpec, GatesConfig, PipelineConfig
from components.model.metrics import Scorer, UserMetrics, popularity_scorer, ranking_scorer, served_scorer, user_metrics
from components.data.graph import GraphArtifact
from components.decide.report import fmt_number
from components.core.catalog import Layout, atomic_write_bytes, read_json, record_outcome, run_dir, write_json

log = logging.getLogger(__name__)

EVALUATION_FILE = "evaluation.json"
PER_USER_FILE = "per_user.npz"
BLESSING_FILE = "blessing.json"
LATENCY_METRICS = ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms")
ENGINE_METRICS = ("parity_max_abs_diff", "parity_topk_overlap", "engine_bytes") + LATENCY_METRICS
COUNT_METRICS = ("users_evaluated",)
DATA_METRICS = ("validation_warnings",)  # components/data/validate.py validation_metrics
MODELS = ("candidate", "teacher", "champion", "popularity")
SEGMENTS = ("all", "history", "warm", "cold")  # components/core/config.py Segment
BOOTSTRAP_NOTE = "skipped (no champion: bootstrap)"


# --- evaluation -------------------------------------------------------------------------------


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

    from components.ship.export import load_embeddings
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


@dataclass(frozen=True)
class EvaluationResult:
    """Means per model and segment on one user set; per-user vectors live in ``per_user_path``."""

    day: str
    run_key: str
    path: str  # reports/<day>/runs/<run_key>/evaluation.json
    per_user_path: str  # per_user.npz: users, cold flag, "<model>__<metric>" vectors
    candidate_id: str  # the registry version this candidate registers as
    candidate_refs: dict[str, Any]  # CandidateRefs.as_dict()
    graph_version: str
    candidate_version: str  # = candidate_id (one id everywhere)
    teacher_version: str | None
    champion_version: str | None  # the baseline: champion as of the day (None at bootstrap)
    baseline_reason: str  # why this baseline (or why none)
    candidate: dict[str, float]  # all-segment means (segments below)
    teacher: dict[str, float] | None
    champion: dict[str, float] | None
    popularity: dict[str, float]
    segments: dict[str, dict[str, dict[str, float]]]  # model -> segment -> metric means
    holdout_users: int  # distinct users in the day's holdout
    holdout_pairs: int
    users_evaluated: int
    warm_users_evaluated: int
    cold_users_evaluated: int  # answered by serving's cold-user path, evaluated as served
    users_without_unseen_test_items: int  # every test item was a training positive or a recent item
    # How users without a trained embedding were answered (fold-in from Feast history, or popularity
    # only when the root has no feature store); defaults read records written before fold-in.
    cold_answer: str = "popularity"
    answered_by: dict[str, dict[str, int]] = field(default_factory=dict)  # model -> model/fold_in/popularity users
    history_users_evaluated: int | None = None  # the "history" segment (None: a record written before it)

    def metrics_of(self, model: str, segment: str = "all") -> dict[str, float] | None:
        return (self.segments.get(model) or {}).get(segment)

    @classmethod
    def load(cls, path: str | Path) -> "EvaluationResult":
        return cls(**read_json(path))


@dataclass(frozen=True)
class PerUser:
    """Aligned per-user vectors of every evaluated model (row i = user ``users[i]``)."""

    users: np.ndarray
    cold: np.ndarray  # no trained embedding (no training positive in the day's graph)
    values: dict[str, dict[str, np.ndarray]]  # model -> metric -> vector
    # History before the day: a trained embedding or recent items to fold in. Users without any get
    # the same popularity answer from every model, so no comparison can differ on them.
    # None (records written before it): the warm users.
    history: np.ndarray | None = None

    def segment_mask(self, segment: str) -> np.ndarray:
        history = ~self.cold if self.history is None else self.history
        return {"all": np.ones_like(self.cold), "history": history, "warm": ~self.cold, "cold": self.cold}[segment]

    def save(self, path: Path) -> None:
        arrays = {f"{model}__{metric}": v for model, metrics in self.values.items() for metric, v in metrics.items()}
        if self.history is not None:
            arrays["history"] = self.history
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.npz")
        np.savez_compressed(tmp, users=self.users, cold=self.cold, **arrays)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> "PerUser":
        values: dict[str, dict[str, np.ndarray]] = {}
        with np.load(path) as data:
            for key in data.files:
                if "__" in key:
                    model, metric = key.split("__", 1)
                    values.setdefault(model, {})[metric] = data[key]
            history = data["history"].astype(bool) if "history" in data.files else None
            return cls(users=data["users"], cold=data["cold"].astype(bool), values=values, history=history)


def _segment_means(metrics: UserMetrics, per_user: PerUser) -> dict[str, dict[str, float]]:
    out = {}
    for segment in SEGMENTS:
        mask = per_user.segment_mask(segment)
        means = {name: float(v[mask].mean()) if mask.any() else 0.0 for name, v in metrics.values.items()}
        out[segment] = {**means, "users_evaluated": int(mask.sum())}
    out["all"].update(metrics.coverage)
    return out


def run_evaluate(layout: Layout, day: str, cfg: PipelineConfig, *, run_key: str,
                 candidate: CandidateRefs | dict[str, Any] | None = None) -> EvaluationResult:
    """Evaluate the candidate (``candidate``: its engine reference or CandidateRefs; the CLI's
    default is the day's current engine), its teacher, the champion as of ``day`` and popularity
    on the day's holdout, as served; write evaluation.json and per_user.npz to the run's folder."""
    from components.ship.export import load_embeddings
    from components.data.graph import Interactions
    from components.decide.registry import champion_as_of
    from components.decide.report import repeat_only_text
    from components.model.teacher import load_teacher

    if candidate is None:
        refs = CandidateRefs.current(layout, day)
    elif isinstance(candidate, CandidateRefs):
        refs = candidate
    else:
        refs = CandidateRefs.from_engine(layout, candidate.get("engine", candidate))
    if refs.day != day:
        raise ValueError(f"evaluate {day}: the candidate's artifacts are of {refs.day}")
    baseline, baseline_reason = champion_as_of(layout, day)
    cid = candidate_id(refs, cfg.config_hash(), baseline.version if baseline else None)
    graph = GraphArtifact.load(refs.graph)
    train, holdout = graph.train_interactions(), graph.holdout_interactions()
    num_items = graph.num_items
    has_train = np.bincount(train.user, minlength=graph.num_users) > 0
    degrees = np.bincount(train.item, minlength=num_items)
    history, cold_answer = read_history(layout, cfg, graph, np.unique(holdout.user), day)

    def served(name: str, user_emb: np.ndarray, item_emb: np.ndarray) -> ServedModel:
        if user_emb.shape[0] > graph.num_users or item_emb.shape[0] > num_items:
            raise ValueError(f"evaluate {day}: {name} covers {user_emb.shape[0]} users x {item_emb.shape[0]} items, "
                             f"more than graph {refs.graph.version} ({graph.num_users} x {num_items})")
        return embedding_served(user_emb, item_emb, has_train, degrees, history, num_items)

    models: dict[str, ServedModel] = {"candidate": served("candidate", *load_embeddings(refs.pruned.path))}
    teacher = load_teacher(refs.teacher.path, train) if refs.teacher is not None else None
    if teacher is None:
        log.warning("evaluate %s: candidate %s names no teacher; teacher-relative gates will fail", day, cid)
    elif teacher.kind == "lightgcn":
        models["teacher"] = served("teacher", *load_embeddings(refs.teacher.path))
    else:  # a graph filter scores every user of its graph from their rows; no item embeddings to fold into
        scorer = served_scorer(teacher.scorer, has_train, ranking_scorer(degrees, num_items))
        models["teacher"] = ServedModel(scorer, has_train, np.zeros(graph.num_users, bool))
    if baseline is not None:  # through its own ID maps: it may know fewer (or other) users and items
        models["champion"] = version_served_scorer(layout, baseline.version, graph, history)
    scorers: dict[str, Scorer] = {name: m.scorer for name, m in models.items()}
    scorers["popularity"] = popularity_scorer(train, num_items)

    # Serving never recommends a user's recent items (in any segment): exclude them as training
    # positives are (user_metrics unions the keys, so items in both count once).
    history_user, history_item = history.pairs()
    excluded = Interactions(np.concatenate([train.user, history_user]), np.concatenate([train.item, history_item]),
                            np.concatenate([train.weight, np.ones(history_item.size, train.weight.dtype)]))
    ks, batch = tuple(cfg.eval.ks), cfg.eval.user_batch_size
    measured = {name: user_metrics(scorer, excluded, holdout, num_items, ks, batch, include_cold=True)
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
    )
    write_json(Path(result.path), asdict(result))
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
    return result


# --- gating -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateResult:
    """One gate's verdict with everything needed to audit it."""

    metric: str
    kind: str
    threshold: float
    baseline: str | None
    segment: str
    n: int  # users (evaluation gates) or timed calls (latency gates) behind the value
    value: float | None  # the candidate's (or engine's) point value
    baseline_value: float | None
    statistic: float | None  # point value of what is judged: value, ratio or relative change
    ci_low: float | None  # bootstrap interval of the statistic (None: a measurement without one)
    ci_high: float | None
    verdict: str  # "pass" | "fail" | "inconclusive" | "skipped"
    note: str
    measured_by: str  # "evaluation (...)" or the runtime that measured an engine metric
    description: str = ""
    role: str = "decision"  # "decision" | "diagnostic" (config GateSpec.role)
    overridden: bool = False  # a diagnostic FAIL / INCONCLUSIVE overridden by a conclusive win


@dataclass(frozen=True)
class Comparison:
    """One model against another on the same users: the relative change s/b - 1 of ``metric`` with
    its paired bootstrap interval, judged PASS / FAIL / INCONCLUSIVE against a bound like a gate
    (``rule``: e.g. "> 0"); SKIPPED when a model was not evaluated (no champion)."""

    subject: str
    baseline: str
    metric: str
    segment: str
    rule: str
    n: int
    value: float | None
    baseline_value: float | None
    relative_change: float | None
    ci_low: float | None
    ci_high: float | None
    verdict: str
    note: str = ""

    def describe(self) -> str:
        """E.g. "ndcg@20 +12.3% [+4.1%, +20.5%], 812 history users" (what reasons and alerts quote)."""
        from components.decide.report import describe_comparison

        return describe_comparison(asdict(self))


@dataclass(frozen=True)
class Blessing:
    """The TFX-style blessing: promotion reads only this."""

    day: str
    run_key: str
    blessed: bool
    verdict: str  # "blessed" | "rejected" (a gate failed) | "inconclusive" (none failed, some undecided)
    candidate_version: str  # the candidate id = its registry version
    candidate_refs: dict[str, Any]
    champion_version: str | None  # the baseline it was judged against (champion as of the day)
    baseline_reason: str
    bootstrap: bool
    runtime: str | None  # runtime that measured the engine gates
    runtime_description: str | None
    tensorrt_status: str | None
    users_evaluated: int
    confidence_level: float
    bootstrap_resamples: int
    gates: tuple[GateResult, ...] = field(default_factory=tuple)
    failed: tuple[str, ...] = field(default_factory=tuple)
    inconclusive: tuple[str, ...] = field(default_factory=tuple)
    reason: str = ""  # one line: why blessed / rejected / inconclusive (what outcomes and the UI show)
    evaluation_path: str = ""
    path: str = ""
    # Diagnostic gates whose FAIL / INCONCLUSIVE was overridden (not in failed / inconclusive above)
    # because the candidate conclusively beats the champion and popularity (``wins``, all PASS).
    overridden: tuple[str, ...] = field(default_factory=tuple)
    wins: tuple[Comparison, ...] = field(default_factory=tuple)  # candidate vs champion, vs popularity
    conclusive_win: bool = False
    # The champion as served vs popularity on the day (None: no champion, or a record before it).
    champion_health: Comparison | None = None
    champion_worse_than_popularity: bool = False  # champion_health FAIL: what alerts read
    history_users_evaluated: int | None = None
    users_without_unseen_test_items: int | None = None

    @classmethod
    def load(cls, path: str | Path) -> "Blessing":
        data = read_json(path)
        data["gates"] = tuple(GateResult(**g) for g in data["gates"])
        for name in ("failed", "inconclusive", "overridden"):
            data[name] = tuple(data.get(name, ()))
        data["wins"] = tuple(Comparison(**c) for c in data.get("wins", ()))
        if data.get("champion_health"):
            data["champion_health"] = Comparison(**data["champion_health"])
        return cls(**data)


# A gate kind judges statistic s with interval [lo, hi] against a bound: PASS when the whole
# interval satisfies the rule, FAIL when the whole interval violates it, INCONCLUSIVE otherwise.
def _rule(kind: str, threshold: float) -> tuple[str, float, str]:
    """(statistic name, bound, direction) of a gate kind (see config/gates.yaml)."""
    return {
        "min": ("value", threshold, ">="),
        "max": ("value", threshold, "<="),
        "min_ratio_to": ("ratio", threshold, ">="),
        # non-inferiority: relative change c/b - 1 >= -threshold (at most a `threshold` drop)
        "max_regression_vs": ("relative change", -threshold, ">="),
        # lift: relative change c/b - 1 > threshold
        "min_lift_over": ("relative change", threshold, ">"),
    }[kind]


def _holds(direction: str, value: float, bound: float) -> bool:
    return {">=": value >= bound, ">": value > bound, "<=": value <= bound}[direction]


def decide(direction: str, bound: float, low: float, high: float) -> str:
    """PASS if the whole interval satisfies ``direction bound``, FAIL if none of it does."""
    if math.isnan(low) or math.isnan(high):
        return "inconclusive"
    best, worst = (high, low) if direction in (">=", ">") else (low, high)
    if _holds(direction, worst, bound):
        return "pass"
    if not _holds(direction, best, bound):
        return "fail"
    return "inconclusive"


def _mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


def _ratio(c: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.mean(c, axis=axis) / np.mean(b, axis=axis)


def _relative_change(c: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return _ratio(c, b, axis) - 1.0


STATISTICS = {"value": _mean, "ratio": _ratio, "relative change": _relative_change}


def bootstrap_interval(samples: tuple[np.ndarray, ...], statistic: str, gates: GatesConfig,
                       seed: int) -> tuple[float, float]:
    """Seeded (paired, for two samples) bootstrap interval of ``statistic`` over users."""
    from scipy.stats import bootstrap

    if samples[0].size < 2 or all(np.all(s == s[0]) for s in samples):
        # scipy cannot resample one user; identical values have a degenerate interval.
        point = float(STATISTICS[statistic](*samples)) if samples[0].size else math.nan
        return (point, point) if samples[0].size >= 2 else (math.nan, math.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        result = bootstrap(samples, STATISTICS[statistic], paired=len(samples) > 1, vectorized=True,
                           n_resamples=gates.bootstrap_resamples, confidence_level=gates.confidence_level,
                           method=gates.bootstrap_method, random_state=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _engine_value(metric: str, engine) -> tuple[float, int]:
    """(value, timed calls behind it) of an engine metric; latency at the largest batch size."""
    if metric in LATENCY_METRICS:
        stats = engine.latency_ms[str(engine.largest_batch)]
        key = metric.removeprefix("latency_")
        if key not in stats:
            raise ValueError(f"engine {engine.version} measured no {key} (has {sorted(stats)}); re-run convert")
        return float(stats[key]), int(stats.get("repeats", 0))
    return float(getattr(engine, metric)), 0


def _label(spec: GateSpec) -> str:
    return (f"{spec.metric} {spec.kind}{' ' + spec.baseline if spec.baseline else ''}"
            f"{'' if spec.segment == 'all' else ' [' + spec.segment + ']'}")


def judge_gate(spec: GateSpec, evaluation: EvaluationResult, per_user: PerUser | None, engine,
               gates: GatesConfig, seed: int, data_metrics: dict[str, float] | None = None) -> GateResult:
    common = dict(metric=spec.metric, kind=spec.kind, threshold=spec.threshold, baseline=spec.baseline,
                  segment=spec.segment, description=spec.description, role=spec.role)
    name, bound, direction = _rule(spec.kind, spec.threshold)
    if spec.metric in DATA_METRICS:  # the day's data, e.g. validation warnings (kinds min/max)
        if spec.baseline is not None:
            raise ValueError(f"gate on data metric {spec.metric!r} supports kinds min/max only, got {spec.kind}")
        if spec.metric not in (data_metrics or {}):
            return GateResult(**common, n=0, value=None, baseline_value=None, statistic=None, ci_low=None,
                              ci_high=None, verdict="skipped", note="no validation record for this day",
                              measured_by="none")
        value = float(data_metrics[spec.metric])
        verdict = "pass" if _holds(direction, value, bound) else "fail"
        return GateResult(**common, n=0, value=value, baseline_value=None, statistic=value, ci_low=None,
                          ci_high=None, verdict=verdict,
                          note=f"{name} {value:g} {direction} {bound:g}" + ("" if verdict == "pass" else " violated"),
                          measured_by="validation")
    if spec.metric in ENGINE_METRICS:
        if spec.baseline is not None:
            raise ValueError(f"gate on engine metric {spec.metric!r} supports kinds min/max only, got {spec.kind}")
        if engine is None:
            return GateResult(**common, n=0, value=None, baseline_value=None, statistic=None, ci_low=None,
                              ci_high=None, verdict="fail", note="no engine result: engine metrics were not measured",
                              measured_by="none")
        value, calls = _engine_value(spec.metric, engine)
        measured_by = f"{engine.runtime} ({engine.runtime_description})"
        verdict = "pass" if _holds(direction, value, bound) else "fail"
        note = f"{name} {value:.6g} {direction} {bound:g}" + ("" if verdict == "pass" else " violated")
        if spec.metric in LATENCY_METRICS:
            measured_by += f", batch {engine.largest_batch}, {calls} timed calls"
            if calls < gates.min_latency_calls:
                verdict = "inconclusive"
                note = f"only {calls} timed calls (< min_latency_calls {gates.min_latency_calls}): {note}"
        return GateResult(**common, n=calls, value=value, baseline_value=None, statistic=value, ci_low=None,
                          ci_high=None, verdict=verdict, note=note, measured_by=measured_by)

    if spec.metric in COUNT_METRICS:  # min_users_evaluated: too few users decide nothing
        segment = evaluation.metrics_of("candidate", spec.segment) or {}
        value = float(segment.get("users_evaluated", 0))
        ok = _holds(direction, value, bound)
        return GateResult(**common, n=int(value), value=value, baseline_value=None, statistic=value, ci_low=None,
                          ci_high=None, verdict="pass" if ok else "inconclusive",
                          note=f"{int(value)} users {direction} {bound:g}" + ("" if ok else ": too few to decide"),
                          measured_by=f"evaluation ({spec.segment} users)")

    if per_user is None or spec.metric not in per_user.values["candidate"]:
        raise ValueError(f"gate metric {spec.metric!r} is neither an engine metric {ENGINE_METRICS}, a count "
                         f"{COUNT_METRICS} nor a per-user evaluation metric "
                         f"(have {sorted(per_user.values['candidate']) if per_user else 'none'})")
    mask = per_user.segment_mask(spec.segment)
    candidate = per_user.values["candidate"][spec.metric][mask]
    n = int(candidate.size)
    value = float(candidate.mean()) if n else None
    measured_by = f"evaluation ({n} {spec.segment} users, paired bootstrap {gates.bootstrap_resamples}x)"
    samples: tuple[np.ndarray, ...] = (candidate,)
    base = None
    if spec.baseline is not None:
        if spec.baseline == "champion" and "champion" not in per_user.values:
            return GateResult(**common, n=n, value=value, baseline_value=None, statistic=None, ci_low=None,
                              ci_high=None, verdict="skipped", note=BOOTSTRAP_NOTE, measured_by=measured_by)
        if spec.baseline not in per_user.values:
            return GateResult(**common, n=n, value=value, baseline_value=None, statistic=None, ci_low=None,
                              ci_high=None, verdict="fail", note=f"baseline {spec.baseline} was not evaluated",
                              measured_by=measured_by)
        baseline = per_user.values[spec.baseline][spec.metric][mask]
        base = float(baseline.mean()) if n else None
        samples = (candidate, baseline)
    if n < 2:
        return GateResult(**common, n=n, value=value, baseline_value=base, statistic=None, ci_low=None, ci_high=None,
                          verdict="inconclusive", note=f"{n} users: no interval", measured_by=measured_by)
    with np.errstate(divide="ignore", invalid="ignore"):
        statistic = float(STATISTICS[name](*samples))
    low, high = bootstrap_interval(samples, name, gates, seed)
    verdict = decide(direction, bound, low, high)
    level = f"{gates.confidence_level:.0%}"
    note = f"{name} {statistic:.4g}, {level} CI [{low:.4g}, {high:.4g}] {direction} {bound:g}: " + {
        "pass": "whole interval holds", "fail": "whole interval violates",
        "inconclusive": "interval straddles the bound"}[verdict]
    return GateResult(**common, n=n, value=value, baseline_value=base, statistic=statistic, ci_low=low,
                      ci_high=high, verdict=verdict, note=note, measured_by=measured_by)


def compare(per_user: PerUser | None, subject: str, baseline: str, metric: str, segment: str, direction: str,
            bound: float, gates: GatesConfig, seed: int) -> Comparison:
    """``subject`` against ``baseline`` on the same ``segment`` users: relative change of ``metric``
    with its paired bootstrap interval, judged ``direction bound`` as a gate is (``decide``)."""
    common = dict(subject=subject, baseline=baseline, metric=metric, segment=segment,
                  rule=f"relative change {direction} {bound:g}")
    missing = [m for m in (subject, baseline) if per_user is None or m not in per_user.values]
    if missing:
        return Comparison(**common, n=0, value=None, baseline_value=None, relative_change=None, ci_low=None,
                          ci_high=None, verdict="skipped", note=f"not evaluated: {', '.join(missing)}")
    if metric not in per_user.values[subject]:
        raise ValueError(f"comparison metric {metric!r} was not evaluated (have {sorted(per_user.values[subject])})")
    mask = per_user.segment_mask(segment)
    ours, theirs = per_user.values[subject][metric][mask], per_user.values[baseline][metric][mask]
    n = int(ours.size)
    values = dict(value=float(ours.mean()) if n else None, baseline_value=float(theirs.mean()) if n else None)
    if n < 2:
        return Comparison(**common, n=n, **values, relative_change=None, ci_low=None, ci_high=None,
                          verdict="inconclusive", note=f"{n} {segment} users: no interval")
    with np.errstate(divide="ignore", invalid="ignore"):
        change = float(_relative_change(ours, theirs))
    low, high = bootstrap_interval((ours, theirs), "relative change", gates, seed)
    return Comparison(**common, n=n, **values, relative_change=change, ci_low=low, ci_high=high,
                      verdict=decide(direction, bound, low, high))


def candidate_wins(per_user: PerUser | None, gates: GatesConfig, seed: int) -> tuple[Comparison, Comparison]:
    """Does the candidate conclusively beat the champion and popularity (config ``conclusive_win``)?
    PASS: the interval's lower bound is above the configured lift."""
    win = gates.conclusive_win
    return (compare(per_user, "candidate", "champion", win.metric, win.segment, ">", win.min_lift_over_champion,
                    gates, seed),
            compare(per_user, "candidate", "popularity", win.metric, win.segment, ">",
                    win.min_lift_over_popularity, gates, seed))


def unmet_wins(wins: tuple[Comparison, ...]) -> tuple[Comparison, ...]:
    """The baselines not conclusively beaten; with no champion (bootstrap: SKIPPED) nothing serves
    that must be beaten but popularity."""
    return tuple(w for w in wins if w.verdict != "pass" and not (w.baseline == "champion" and w.verdict == "skipped"))


def champion_health(per_user: PerUser | None, gates: GatesConfig, seed: int) -> Comparison:
    """The champion as served vs popularity on the day: FAIL when it conclusively loses (the whole
    interval of champion/popularity - 1 below -tolerance); SKIPPED without a champion."""
    health = gates.champion_health
    return compare(per_user, "champion", "popularity", health.metric, health.segment, ">=", -health.tolerance,
                   gates, seed)


def judge(evaluation: EvaluationResult, per_user: PerUser | None, engine_result, gates: GatesConfig,
          seed: int = 0, data_metrics: dict[str, float] | None = None) -> Blessing:
    """Apply every gate; blessed iff no gate holds the candidate back: none failed and none is
    inconclusive (unless gates.yaml says inconclusive promotes), where a diagnostic gate's FAIL or
    INCONCLUSIVE is overridden when the candidate conclusively beats the champion and popularity
    (``candidate_wins``). Skipped gates are listed, never counted as passed. The champion's health
    vs popularity is judged alongside (it never blocks a candidate)."""
    from components.decide.report import override_text

    wins = candidate_wins(per_user, gates, seed)
    conclusive = not unmet_wins(wins) and any(w.verdict == "pass" for w in wins)
    holds_back = lambda g: g.verdict == "fail" or (  # noqa: E731
        g.verdict == "inconclusive" and gates.inconclusive == "keep_champion")
    results = tuple(
        replace(g, overridden=True) if conclusive and g.role == "diagnostic" and holds_back(g) else g
        for g in (judge_gate(spec, evaluation, per_user, engine_result, gates, seed, data_metrics)
                  for spec in gates.gates))
    labels = [_label(spec) for spec in gates.gates]
    failed = tuple(lb for lb, g in zip(labels, results) if g.verdict == "fail" and not g.overridden)
    inconclusive = tuple(lb for lb, g in zip(labels, results) if g.verdict == "inconclusive" and not g.overridden)
    overridden = tuple(lb for lb, g in zip(labels, results) if g.overridden)
    blocked = bool(failed) or (bool(inconclusive) and gates.inconclusive == "keep_champion")
    tagged = {lb: lb + (" (diagnostic)" if g.role == "diagnostic" else "") for lb, g in zip(labels, results)}
    vetoing_diagnostics = any(g.role == "diagnostic" and holds_back(g) and not g.overridden for g in results)
    not_overridden = ("; diagnostic gates not overridden: candidate does not conclusively beat "
                      + " and ".join(f"{w.baseline} ({w.describe()})" for w in unmet_wins(wins))
                      if vetoing_diagnostics else "")
    if failed:
        reason = f"failed gates: {'; '.join(tagged[lb] for lb in failed)}{not_overridden}"
    elif blocked:
        reason = f"inconclusive gates (champion kept): {'; '.join(tagged[lb] for lb in inconclusive)}{not_overridden}"
    else:
        reason = "no gate failed" if not overridden else "no decision gate failed; " + override_text(
            {"gates": [asdict(g) for g in results], "wins": [asdict(w) for w in wins]})
        if inconclusive:
            reason += f"; inconclusive treated as pass: {'; '.join(inconclusive)}"
    health = champion_health(per_user, gates, seed)
    return Blessing(
        day=evaluation.day,
        run_key=evaluation.run_key,
        blessed=not blocked,
        verdict="rejected" if failed else "inconclusive" if blocked else "blessed",
        candidate_version=evaluation.candidate_id,
        candidate_refs=evaluation.candidate_refs,
        champion_version=evaluation.champion_version,
        baseline_reason=evaluation.baseline_reason,
        bootstrap=evaluation.champion_version is None,
        runtime=engine_result.runtime if engine_result else None,
        runtime_description=engine_result.runtime_description if engine_result else None,
        tensorrt_status=engine_result.tensorrt_status if engine_result else None,
        users_evaluated=evaluation.users_evaluated,
        confidence_level=gates.confidence_level,
        bootstrap_resamples=gates.bootstrap_resamples,
        gates=results,
        failed=failed,
        inconclusive=inconclusive,
        reason=reason,
        evaluation_path=evaluation.path,
        overridden=overridden,
        wins=wins,
        conclusive_win=conclusive,
        champion_health=None if health.verdict == "skipped" else health,
        champion_worse_than_popularity=health.verdict == "fail",
        history_users_evaluated=evaluation.history_users_evaluated,
        users_without_unseen_test_items=evaluation.users_without_unseen_test_items,
    )


def key_metrics(evaluation: EvaluationResult) -> dict[str, Any]:
    """The few numbers an outcome shows (UI, CLI): n and NDCG@20 / Recall@20 of candidate and baseline."""
    out: dict[str, Any] = {"users_evaluated": evaluation.users_evaluated,
                           "cold_users_evaluated": evaluation.cold_users_evaluated}
    for who in ("candidate", "champion"):
        metrics = evaluation.metrics_of(who) or {}
        for metric in ("ndcg@20", "recall@20"):
            if metric in metrics:
                out[f"{who}_{metric}"] = metrics[metric]
    return out


def run_gate(layout: Layout, day: str, cfg: PipelineConfig, *, run_key: str,
             evaluation: EvaluationResult | dict[str, Any] | None = None) -> Blessing:
    """Judge the run's evaluation (default: the run folder's evaluation.json) and its candidate's
    engine; write blessing.json, gates.md and gates.html to the run's folder; a candidate that is
    not blessed is the run's outcome (rejected / inconclusive)."""
    from components.ship.convert import load_engine_result
    from components.decide.report import gate_table_html, gate_table_markdown

    out = run_dir(layout, day, run_key)
    path = Path(evaluation["path"] if isinstance(evaluation, dict) else
                evaluation.path if evaluation is not None else out / EVALUATION_FILE)
    if not path.exists():
        raise FileNotFoundError(f"run_gate {day}: {path} missing (run the evaluate stage of run {run_key} first)")
    evaluation = EvaluationResult.load(path)
    if evaluation.day != day:
        raise ValueError(f"run_gate {day}: {path} evaluates {evaluation.day}")
    refs = CandidateRefs.from_dict(layout, evaluation.candidate_refs)
    engine = load_engine_result(refs.engine)
    from components.data.validate import validation_metrics

    blessing = judge(evaluation, PerUser.load(evaluation.per_user_path), engine, cfg.gates, cfg.seed,
                     data_metrics=validation_metrics(layout, day))
    blessing = Blessing(**{**blessing.__dict__, "run_key": run_key, "path": str(out / BLESSING_FILE)})
    write_json(out / BLESSING_FILE, asdict(blessing))
    atomic_write_bytes(out / "gates.md", gate_table_markdown(blessing).encode())
    atomic_write_bytes(out / "gates.html", gate_table_html(blessing).encode())
    # The verdict first (what ops scan for), then one line per gate: FAIL and INCONCLUSIVE at WARNING.
    log.log(logging.INFO if blessing.blessed else logging.WARNING,
            "gate %s run %s: candidate %s %s against %s (%d gates, %d failed, %d inconclusive, %d skipped; "
            "engine gates on %s)", day, run_key, blessing.candidate_version, blessing.verdict.upper(),
            blessing.champion_version or "no champion (bootstrap)", len(blessing.gates), len(blessing.failed),
            len(blessing.inconclusive), sum(g.verdict == "skipped" for g in blessing.gates),
            blessing.runtime_description)
    for gate in blessing.gates:
        blocking = gate.verdict in ("fail", "inconclusive") and not gate.overridden
        log.log(logging.WARNING if blocking else logging.INFO,
                "gate %s %s%s [%s, %s]: %s%s (n %d, value %s, baseline %s; %s)", gate.metric, gate.kind,
                f" vs {gate.baseline}" if gate.baseline else "", gate.segment, gate.role, gate.verdict.upper(),
                " (overridden)" if gate.overridden else "", gate.n, fmt_number(gate.value),
                fmt_number(gate.baseline_value), gate.note)
    for win in blessing.wins:
        log.info("candidate vs %s: %s (%s: %s)", win.baseline, win.verdict.upper(), win.rule, win.describe())
    if blessing.champion_health is not None:
        log.log(logging.WARNING if blessing.champion_worse_than_popularity else logging.INFO,
                "champion health %s: champion %s vs popularity %s (%s)", day, blessing.champion_version,
                blessing.champion_health.verdict.upper(), blessing.champion_health.describe())
    if not blessing.blessed:
        from components.decide.registry import champion

        serving = champion(layout)
        record_outcome(layout, day, run_key, blessing.verdict, blessing.reason, candidate=blessing.candidate_version,
                       champion_before=serving.version if serving else None,
                       champion_after=serving.version if serving else None,
                       metrics=key_metrics(evaluation))
    return blessing


