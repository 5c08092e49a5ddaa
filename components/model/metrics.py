"""Full-ranking evaluation: the one module every stage (train, distill, prune, gates) scores with.

Definitions are those of the LightGCN paper code (``utils.RecallPrecision_ATk`` / ``NDCGatK_r``):

* each evaluated user's items are ranked over the *whole* catalogue, the user's training positives
  excluded (score -inf), and the top K taken;
* Recall@K    = hits@K / |test items of the user|
* Precision@K = hits@K / K
* NDCG@K      = DCG / IDCG with binary relevance, DCG = sum_{r<K} rel_r / log2(r + 2) and IDCG the
  same sum over the first min(|test items|, K) ranks;
* HitRate@K   = 1 if hits@K > 0;
* each is kept per user (``user_metrics``, for paired intervals) and averaged over users; Coverage@K = distinct items in anybody's top K / num_items.

Which users and pairs are evaluated (the nightly holdout can hold repeats and cold users):

* test pairs that are also training positives are dropped (they are masked out of the ranking, so
  they could never be hit; counted in ``test_pairs_seen_in_train``). The LightGCN splits have none;
* users with no training positive are skipped (a cold user has no learned embedding) and counted
  in ``cold_users_skipped`` -- unless the caller evaluates them as served (``include_cold``); users whose every test pair was a training positive are counted in
  ``users_without_unseen_test_items``. Nothing is dropped silently.

Vectorized: users in blocks (``ranked_blocks``: one ``scorer`` call, the seen items set to -inf
and one ``torch.topk`` per block); hits found by binary search of (user * num_items + item) keys in
the sorted test keys, so no dense ground-truth matrix and no Python loop over users. Memory is
linear in the data: one block of scores, sized from ``block_bytes``, is the only users x items
buffer. Exclusion, top-K and the metrics run where the scores are (a CUDA scorer's block never
leaves the device; only the per-user metric vectors come back), or on ``device`` when given.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from components.core.interactions import Interactions

log = logging.getLogger(__name__)

Scorer = Callable[[torch.Tensor], torch.Tensor]


def _pair_keys(user: np.ndarray, item: np.ndarray, num_items: int) -> np.ndarray:
    return user.astype(np.int64) * np.int64(num_items) + item.astype(np.int64)


def _csr(user: np.ndarray, item: np.ndarray, num_users: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(indptr, indices) of the user -> item lists, users sorted."""
    order = np.lexsort((item, user))
    counts = np.bincount(user, minlength=num_users)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return torch.from_numpy(indptr), torch.from_numpy(item[order].astype(np.int64))


def _batch_rows(indptr: torch.Tensor, indices: torch.Tensor, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row position (within the batch) and item of every stored pair of ``users`` (all on one device)."""
    starts, ends = indptr[users], indptr[users + 1]
    lengths = ends - starts
    total = int(lengths.sum())
    rows = torch.repeat_interleave(torch.arange(users.numel(), device=users.device), lengths)
    # position of each pair inside its user's slice: global arange minus the slice's batch offset
    offsets = torch.repeat_interleave(torch.cumsum(lengths, 0) - lengths, lengths)
    cols = indices[torch.repeat_interleave(starts, lengths) + torch.arange(total, device=users.device) - offsets]
    return rows, cols


# Bytes per (user, item) score a block holds: the float32 score itself.
SCORE_BYTES = 4


def block_rows(block_bytes: int | None, row_bytes: int, cap: int) -> int:
    """Rows of ``row_bytes`` per block within ``block_bytes`` (None: no budget), at most ``cap``, at least 1."""
    if block_bytes is None:
        return cap
    return max(1, min(cap, block_bytes // max(1, row_bytes)))


@dataclass(frozen=True)
class RankedBlock:
    """One block of ``ranked_blocks``: ``users`` (CPU) and, on the evaluation device, the same users
    (``users_on_device``) and, per asked k, their top-k ``(scores, items)`` [B, k], best first."""

    users: torch.Tensor
    users_on_device: torch.Tensor
    top: dict[int, tuple[torch.Tensor, torch.Tensor]]


def ranked_blocks(scorer: Scorer, users: np.ndarray, seen: Interactions, num_users: int, num_items: int,
                  ks: Sequence[int], block_users: int, device: torch.device | str | None = None) -> Iterator[RankedBlock]:
    """Score ``users`` (sorted or not) a block at a time, set each user's ``seen`` items to -inf and
    keep the top k for each of ``ks``: the fused scoring -> exclusion -> top-K pass that evaluation
    and the teacher's distillation targets share. Each k is its own ``torch.topk`` of the masked
    block (not a prefix of a larger one: the order among tied scores may differ between k).
    Runs on ``device``, or where the scorer's scores are."""
    indptr, indices = _csr(seen.user, seen.item, num_users)
    where = None
    for start in range(0, len(users), block_users):
        batch = torch.from_numpy(np.asarray(users[start:start + block_users], dtype=np.int64))
        scores = scorer(batch)
        if where is None:  # the first block says where the scorer lives; the seen lists follow once
            where = torch.device(device) if device is not None else scores.device
            indptr, indices = indptr.to(where), indices.to(where)
        scores = scores.to(where, torch.float32)
        if scores.shape != (batch.numel(), num_items):
            raise ValueError(f"scorer returned shape {tuple(scores.shape)}, expected {(batch.numel(), num_items)}")
        batch_on = batch.to(where)
        rows, cols = _batch_rows(indptr, indices, batch_on)
        scores[rows, cols] = -torch.inf
        yield RankedBlock(batch, batch_on, {k: tuple(torch.topk(scores, k, dim=1)) for k in ks})


PER_USER_METRICS = ("recall", "ndcg", "precision", "hitrate")


@dataclass(frozen=True)
class UserMetrics:
    """Per-user metric vectors (what intervals are computed from) plus the run's counts.

    ``values["ndcg@20"][i]`` is user ``users[i]``'s NDCG@20; ``users`` is sorted, so two scorers
    evaluated on the same train/test pairs have aligned vectors (paired comparisons).
    """

    users: np.ndarray
    values: dict[str, np.ndarray]
    counts: dict[str, int]
    coverage: dict[str, float]

    def summary(self) -> dict[str, float]:
        """Means over users (zeros when nobody was evaluated), coverage and the counts."""
        out: dict[str, float] = dict(self.counts)
        for name, vector in self.values.items():
            out[name] = float(vector.mean()) if vector.size else 0.0
        out.update(self.coverage)
        return out


@dataclass(frozen=True)
class EvaluationPlan:
    """Who ``test`` evaluates and on which pairs (see ``user_metrics``): ``users`` sorted, the kept
    test pair keys (user * num_items + item, sorted), each user's count of them, and the counts."""

    users: np.ndarray
    kept_keys: np.ndarray
    test_count: np.ndarray
    counts: dict[str, int]
    num_users: int


def plan_evaluation(train: Interactions, test: Interactions, num_items: int,
                    include_cold: bool = False) -> EvaluationPlan:
    """The users and test pairs ``user_metrics`` evaluates, with what it drops counted."""
    if len(test) and (int(test.item.max()) >= num_items or int(test.item.min()) < 0):
        raise ValueError(f"test item index out of range [0, {num_items}): max {int(test.item.max())}")
    if len(train) and int(train.item.max()) >= num_items:
        raise ValueError(f"train item index out of range [0, {num_items}): max {int(train.item.max())}")
    num_users = int(max(train.user.max(initial=-1), test.user.max(initial=-1))) + 1

    train_keys = np.unique(_pair_keys(train.user, train.item, num_items))
    test_keys = np.unique(_pair_keys(test.user, test.item, num_items))
    seen = np.isin(test_keys, train_keys, assume_unique=True)
    unseen_keys = test_keys[~seen]
    test_users_all = np.unique(test_keys // num_items)
    has_train = np.bincount(train.user, minlength=num_users) > 0
    cold = ~has_train[test_users_all]
    kept_keys = unseen_keys if include_cold else unseen_keys[has_train[unseen_keys // num_items]]
    users = np.unique(kept_keys // num_items)
    counts = {
        "users_evaluated": int(users.size),
        "cold_users_skipped": 0 if include_cold else int(cold.sum()),
        "cold_users_evaluated": int((~has_train[users]).sum()) if include_cold else 0,
        "users_without_unseen_test_items": int(test_users_all.size - users.size - (0 if include_cold else cold.sum())),
        "test_pairs_seen_in_train": int(seen.sum()),
        "test_pairs_evaluated": int(kept_keys.size),
    }
    return EvaluationPlan(users, kept_keys, np.bincount(kept_keys // num_items, minlength=num_users), counts,
                          num_users)


class MetricTally:
    """Per-user metrics accumulated block by block from ranked blocks of a plan's users, in any
    order (each user once): the vectors come out in ``plan.users``' sorted order."""

    def __init__(self, plan: EvaluationPlan, ks: Sequence[int], num_items: int):
        self.plan, self.ks, self.num_items = plan, tuple(ks), num_items
        self.parts: dict[str, list[torch.Tensor]] = {f"{name}@{k}": [] for k in self.ks for name in PER_USER_METRICS}
        self.users: list[torch.Tensor] = []
        self.recommended: dict[int, torch.Tensor] = {}

    def add(self, users: torch.Tensor, top: torch.Tensor) -> None:
        """``users`` [B] (evaluated users) and their top items [B, >= max k]."""
        self.users.append(users.cpu())
        where, ks, num_items = top.device, self.ks, self.num_items
        if not self.recommended:  # constants move to the evaluation device once
            kmax = top.shape[1]
            discounts = 1.0 / torch.log2(torch.arange(2, kmax + 2, dtype=torch.float64, device=where))
            self.discounts = discounts
            self.cum_discounts = torch.cat([torch.zeros(1, dtype=torch.float64, device=where), torch.cumsum(discounts, 0)])
            self.sorted_test = torch.from_numpy(self.plan.kept_keys).to(where)
            self.test_count = torch.from_numpy(self.plan.test_count).to(where)
            self.recommended = {k: torch.zeros(num_items, dtype=torch.bool, device=where) for k in ks}
        sorted_test, discounts = self.sorted_test, self.discounts
        keys = users[:, None] * num_items + top
        pos = torch.searchsorted(sorted_test, keys).clamp_(max=sorted_test.numel() - 1)
        hits = (sorted_test[pos] == keys).to(torch.float64)  # [B, kmax] binary relevance
        n_test = self.test_count[users].to(torch.float64)
        for k in ks:
            hits_k = hits[:, :k].sum(1)
            dcg = (hits[:, :k] * discounts[:k]).sum(1)
            idcg = self.cum_discounts[torch.clamp(n_test, max=k).long()]
            self.parts[f"recall@{k}"].append(hits_k / n_test)
            self.parts[f"precision@{k}"].append(hits_k / k)
            self.parts[f"ndcg@{k}"].append(dcg / idcg)
            self.parts[f"hitrate@{k}"].append((hits_k > 0).to(torch.float64))
            self.recommended[k][top[:, :k].reshape(-1)] = True

    def result(self) -> UserMetrics:
        added = torch.cat(self.users).numpy() if self.users else np.zeros(0, np.int64)
        if not np.array_equal(np.sort(added), self.plan.users):
            raise ValueError(f"ranked blocks held {added.size} evaluated users, expected each of {self.plan.users.size} once")
        order = np.argsort(added, kind="stable")
        values = {name: (torch.cat(chunks).cpu().numpy()[order] if chunks else np.zeros(0))
                  for name, chunks in self.parts.items()}
        evaluated = self.plan.users.size
        coverage = {f"coverage@{k}": (float(self.recommended[k].sum()) / self.num_items if evaluated else 0.0)
                    for k in self.ks}
        return UserMetrics(users=self.plan.users, values=values, counts=self.plan.counts, coverage=coverage)


def sorted_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(sorted(int(k) for k in ks))
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    return ks


def user_metrics(
    scorer: Scorer,
    train: Interactions,
    test: Interactions,
    num_items: int,
    ks: Sequence[int] = (10, 20, 50),
    user_batch_size: int = 4096,
    include_cold: bool = False,
    block_bytes: int | None = None,
    device: torch.device | str | None = None,
) -> UserMetrics:
    """Per-user full-ranking metrics of ``scorer`` on ``test`` with ``train`` positives excluded.

    ``scorer(user_idx)`` returns a fresh scores tensor [len(user_idx), num_items] (it is masked in
    place). Users without any training positive are skipped and counted (``cold_users_skipped``)
    unless ``include_cold``: then they are evaluated too (the scorer must answer them, as serving
    does with its fallback) and counted in ``cold_users_evaluated``. Users are scored in blocks of
    ``user_batch_size``, fewer when a block of scores would pass ``block_bytes``; exclusion, top-K
    and metrics run on ``device`` (None: where the scorer's scores are).
    """
    ks = sorted_ks(ks)
    plan = plan_evaluation(train, test, num_items, include_cold)
    tally = MetricTally(plan, ks, num_items)
    if plan.users.size:
        kmax = min(ks[-1], num_items)
        block = block_rows(block_bytes, SCORE_BYTES * num_items, user_batch_size)
        with torch.no_grad():
            for ranked in ranked_blocks(scorer, plan.users, train, plan.num_users, num_items, (kmax,), block, device):
                tally.add(ranked.users_on_device, ranked.top[kmax][1])
    return tally.result()


def evaluate_scorer(
    scorer: Scorer,
    train: Interactions,
    test: Interactions,
    num_items: int,
    ks: Sequence[int] = (10, 20, 50),
    user_batch_size: int = 4096,
    block_bytes: int | None = None,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Mean full-ranking metrics of ``scorer`` (see ``user_metrics``): ``recall@K``, ``ndcg@K``,
    ``precision@K``, ``hitrate@K``, ``coverage@K`` per K, plus ``users_evaluated``,
    ``cold_users_skipped``, ``users_without_unseen_test_items``, ``test_pairs_seen_in_train``,
    ``test_pairs_evaluated`` and ``eval_seconds``. Empty evaluation gives zeros, not NaN.
    """
    started = time.perf_counter()
    return metric_summary(user_metrics(scorer, train, test, num_items, ks, user_batch_size, block_bytes=block_bytes,
                                       device=device), ks, started)


def metric_summary(measured: UserMetrics, ks: Sequence[int], started: float) -> dict[str, float]:
    """``evaluate_scorer``'s dict of ``measured`` (timed from ``started``), logged in one line."""
    metrics = measured.summary()
    metrics.pop("cold_users_evaluated")
    metrics["eval_seconds"] = time.perf_counter() - started
    k = sorted(int(k) for k in ks)[min(1, len(ks) - 1)]
    log.info(
        "evaluated %d users (%d cold skipped, %d test pairs seen in train): recall@%d %.4f ndcg@%d %.4f in %.2fs",
        metrics["users_evaluated"], metrics["cold_users_skipped"], metrics["test_pairs_seen_in_train"],
        k, metrics[f"recall@{k}"], k, metrics[f"ndcg@{k}"], metrics["eval_seconds"],
    )
    return metrics


def served_scorer(model: Scorer, has_embedding: np.ndarray, fallback: Scorer) -> Scorer:
    """What serving answers: ``model`` for users with a trained embedding, ``fallback`` for the rest
    (users beyond ``has_embedding`` are unknown to the model)."""
    known_t = torch.from_numpy(np.asarray(has_embedding, dtype=bool))

    def score(users: torch.Tensor) -> torch.Tensor:
        scores = fallback(users)
        inside = users < known_t.numel()
        warm = torch.zeros_like(inside)
        warm[inside] = known_t[users[inside]]
        if warm.any():
            answered = model(users[warm])
            scores = scores.to(answered.device)  # a device model keeps the block on its device
            scores[warm] = answered
        return scores

    return score


def embedding_scorer(user_emb: torch.Tensor | np.ndarray, item_emb: torch.Tensor | np.ndarray,
                     device: torch.device | str | None = None) -> Scorer:
    """Scores = user_emb[u] @ item_emb.T (the LightGCN inner product), on ``device`` (None: where
    the tables are)."""
    user_t = torch.as_tensor(user_emb, dtype=torch.float32, device=device)
    item_t = torch.as_tensor(item_emb, dtype=torch.float32, device=device)

    def score(users: torch.Tensor) -> torch.Tensor:
        return user_t[users.to(user_t.device)] @ item_t.T

    return score


def popularity_scorer(train: Interactions, num_items: int) -> Scorer:
    """Every user gets the same ranking: items by number of training events (ties: lower index)."""
    return ranking_scorer(np.bincount(train.item, minlength=num_items), num_items)


def ranking_scorer(counts: np.ndarray, num_items: int) -> Scorer:
    """Every user gets ``counts``' ranking (ties: lower index); items beyond ``counts`` score -inf."""
    if counts.shape[0] > num_items:
        raise ValueError(f"ranking covers {counts.shape[0]} items, more than the catalogue's {num_items}")
    # Score = -rank (stable sort: ties go to the lower index) so the order is exact in float32.
    order = np.argsort(-np.asarray(counts, dtype=np.float64), kind="stable")
    popularity = torch.full((num_items,), -torch.inf)
    popularity[torch.from_numpy(order)] = -torch.arange(order.size, dtype=torch.float32)

    def score(users: torch.Tensor) -> torch.Tensor:
        return popularity.expand(users.numel(), num_items).clone()

    return score
