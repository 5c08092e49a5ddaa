"""Serving: recommendations from the registry's champion, and a Triton model repository export.

``Recommender.load(registry_root, layout or s3:// root, history=...)`` opens the champion's complete
version directory (a layout's champion is read where its registry decides: an ``s3://`` root's store): the TensorRT plan when one was built and TensorRT + CUDA are here, the ONNX model on ONNX
Runtime otherwise. ``recommend(user_ids, k)`` maps string IDs through the version's ID maps and
answers each user from one of three segments:

- ``model``: users with training interactions: the engine's top-K (training items excluded);
- ``fold_in``: users the model has no trained embedding for (new since its graph, or without
  training pairs) but with items in their ``history``: the normalized sum of those items'
  embeddings (one LightGCN propagation step, :func:`fold_in`), ranked over all items;
- ``popularity``: everyone else: the champion's popularity ranking (from its training data).

``history`` maps user ids to their recent item ids: in production the Feast online store
(:func:`components.data.features.online_history`). Every segment excludes those items too, so items
seen since the champion's training window are not recommended again.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from components.core.config import REPO_ROOT
from components.ship.triton import render_triton_config
from components.core.champion import ChampionRef, champion_in
from components.core.catalog import Layout, atomic_write_bytes, object_root, read_json, write_json

log = logging.getLogger(__name__)

TRITON_TEMPLATES = REPO_ROOT / "deploy" / "triton"
# What the serving refresh exported last (version, models, time), inside the Triton repository.
SERVING_RECORD = "graphdistill_version.json"
TRITON_MODELS = {"tensorrt": ("graphdistill_trt", "model.plan"), "onnxruntime": ("graphdistill_onnx", "model.onnx")}
SEGMENTS = ("model", "fold_in", "popularity")
# User ids -> their recent item ids (most recent first), e.g. features.online_history(layout, cfg).
HistorySource = Callable[[Sequence[str]], list[list[str]]]


def _champion(source: str | Path | Layout) -> tuple[ChampionRef | None, str]:
    """The champion ``source`` names and where it was read (for messages): a Layout, or an ``s3://``
    root, through its pointer backend (the store, not a local copy); else a registry folder or a
    pipeline root holding registry/."""
    if not isinstance(source, Layout) and object_root(source) is not None:
        source = Layout.at(source)
    if isinstance(source, Layout):
        return champion_in(source), source.champion_store or str(source.registry())
    root = Path(source)
    # Accept the registry folder itself or a pipeline root holding registry/.
    registry = root if (root / "champion.json").exists() or root.name == "registry" else root / "registry"
    return champion_in(registry), str(registry)


def history_csr(histories: Sequence[Sequence[str]], item_index: pd.Index) -> tuple[np.ndarray, np.ndarray]:
    """Histories as CSR (indptr, item indices) over a model's catalogue; unknown items dropped."""
    lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
    flat = pd.Index(list(itertools.chain.from_iterable(histories)), dtype=object).astype(str)
    indices = item_index.get_indexer(flat) if len(flat) else np.empty(0, np.int64)
    known = indices >= 0
    rows = np.repeat(np.arange(len(histories)), lengths)[known]
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=len(histories)))])
    return indptr.astype(np.int64), indices[known].astype(np.int64)


def csr_rows(indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The CSR restricted to ``rows`` (in that order), gathered without a loop."""
    lengths = np.diff(indptr)[rows]
    sub_indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    gather = np.repeat(indptr[rows] - sub_indptr[:-1], lengths) + np.arange(sub_indptr[-1])
    return sub_indptr, indices[gather]


def fold_in(
    item_embeddings: np.ndarray, indptr: np.ndarray, indices: np.ndarray, item_degrees: np.ndarray | None = None
) -> np.ndarray:
    """Embeddings [num_users, d] for users outside the model, from their items (CSR ``indptr``,
    ``indices``): LightGCN's propagation step e_u = sum_i e_i / sqrt(|N(u)| |N(i)|) over the model's
    final item embeddings. With ``item_degrees`` (training interactions per item), items the model
    never trained (degree 0) are left out; without, every item counts with |N(i)| = 1. Users with
    no usable item get a zero row (score 0 everywhere: callers answer them otherwise)."""
    import scipy.sparse as sp

    indptr, indices = np.asarray(indptr, np.int64), np.asarray(indices, np.int64)
    num_users, num_items = indptr.size - 1, item_embeddings.shape[0]
    degree = np.ones(num_items) if item_degrees is None else np.asarray(item_degrees, np.float64)
    weight = np.where(degree[indices] > 0, 1.0 / np.sqrt(np.maximum(degree[indices], 1.0)), 0.0)
    rows = np.repeat(np.arange(num_users), np.diff(indptr))
    user_degree = np.bincount(rows, weights=weight > 0, minlength=num_users)
    weight = weight / np.sqrt(np.maximum(user_degree[rows], 1.0))
    adjacency = sp.csr_matrix((weight, indices, indptr), shape=(num_users, num_items))
    return np.asarray(adjacency @ item_embeddings.astype(np.float64), dtype=np.float32)


def top_k_excluding(
    user_embeddings: np.ndarray, item_embeddings: np.ndarray, indptr: np.ndarray, indices: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (items int64 [n, k], scores float32 [n, k]) by dot product, the CSR's items
    excluded (-1 / -inf where fewer than k items remain)."""
    scores = user_embeddings @ item_embeddings.T
    rows = np.repeat(np.arange(scores.shape[0]), np.diff(indptr))
    scores[rows, indices] = -np.inf
    width = min(k, scores.shape[1])
    if width < scores.shape[1]:
        top = np.argpartition(-scores, width - 1, axis=1)[:, :width]
    else:  # the whole catalogue fits in k
        top = np.tile(np.arange(scores.shape[1]), (scores.shape[0], 1))
    top_scores = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-top_scores, axis=1, kind="stable")
    items, top_scores = np.take_along_axis(top, order, axis=1), np.take_along_axis(top_scores, order, axis=1)
    out_items = np.full((scores.shape[0], k), -1, dtype=np.int64)
    out_scores = np.full((scores.shape[0], k), -np.inf, dtype=np.float32)
    out_items[:, :width], out_scores[:, :width] = items, top_scores
    out_items[~np.isfinite(out_scores)] = -1
    return out_items, out_scores


class Recommender:
    """The champion model behind a string-ID interface (see the module docstring)."""

    def __init__(self, version_dir: Path, runtime: str = "auto", history: HistorySource | None = None,
                 runner: Any = None) -> None:
        from components.ship.convert import OnnxRuntimeRunner, TensorRTRunner, tensorrt_available

        self.version_dir = Path(version_dir)
        self.history = history
        manifest = read_json(self.version_dir / "manifest.json")
        self.version = manifest["version"]
        serving = read_json(self.version_dir / "serving.json")
        self.top_k = int(serving["top_k"])
        self.max_batch = int(serving.get("max_batch", 1024))
        users = pd.read_parquet(self.version_dir / "users.parquet")
        items = pd.read_parquet(self.version_dir / "items.parquet")
        self._user_index = pd.Index(users["user_id"].astype(str).to_numpy())
        self._user_idx = users["idx"].to_numpy(np.int64)
        self._item_ids = np.empty(len(items), dtype=object)
        self._item_ids[items["idx"].to_numpy(np.int64)] = items["item_id"].astype(str).to_numpy()
        self._item_index = pd.Index(self._item_ids)
        with np.load(self.version_dir / "seen.npz") as seen:
            self._has_history = np.diff(seen["indptr"]) > 0
        with np.load(self.version_dir / "embeddings.npz") as embeddings:
            self._item_emb = embeddings["item"].astype(np.float32)
        popularity = np.load(self.version_dir / "popularity.npy")
        self._item_degree = popularity  # training interactions per item: fold-in's |N(i)|
        # Padded to top_k (-1 / -inf) so fallback and model rows share one shape.
        popular = np.argsort(-popularity, kind="stable")[: self.top_k]
        self._popular = np.full(self.top_k, -1, dtype=np.int64)
        self._popular_scores = np.full(self.top_k, -np.inf, dtype=np.float32)
        self._popular[: popular.size] = popular
        self._popular_scores[: popular.size] = popularity[popular]

        plan = self.version_dir / "model.plan"
        usable, why = tensorrt_available()
        if runner is not None:  # e.g. components.ship.triton.TritonRunner: the engine answers remotely
            self.runner = runner
        elif runtime == "tensorrt" and not (plan.exists() and usable):
            raise RuntimeError(f"{self.version}: TensorRT serving requested but "
                               f"{'no model.plan in the version' if not plan.exists() else why}")
        elif runtime in ("auto", "tensorrt") and plan.exists() and usable:
            self.runner = TensorRTRunner(plan)
        else:
            self.runner = OnnxRuntimeRunner(self.version_dir / "model.onnx")
        log.info("serving champion %s on %s (%d users, %d items, top-%d, history: %s)", self.version,
                 self.runner.description, len(self._user_index), len(self._item_ids), self.top_k,
                 "yes" if history else "none")

    @classmethod
    def load(cls, source: str | Path | Layout, runtime: str = "auto",
             history: HistorySource | None = None) -> "Recommender":
        champ, registry = _champion(source)
        if champ is None:
            raise LookupError(f"no champion in registry {registry} (nothing promoted yet)")
        return cls(Path(champ.path), runtime, history)

    def _plan(self, user_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(model user index or -1, segment code per user (index into SEGMENTS), history CSR,
        fold-in embeddings (rows of users without a trained embedding; zero elsewhere))."""
        ids = [str(u) for u in user_ids]
        position = self._user_index.get_indexer(pd.Index(ids, dtype=object))
        idx = np.where(position >= 0, self._user_idx[np.maximum(position, 0)], -1)
        trained = (idx >= 0) & self._has_history[np.clip(idx, 0, None)]
        histories = self.history(ids) if self.history is not None else [[] for _ in ids]
        indptr, indices = history_csr(histories, self._item_index)
        cold = np.flatnonzero(~trained)
        folded, cold_emb = answer_cold_users(self._item_emb, self._item_degree, *csr_rows(indptr, indices, cold))
        folded_emb = np.zeros((len(ids), self._item_emb.shape[1]), dtype=np.float32)
        folded_emb[cold] = cold_emb
        segment = np.full(len(ids), 2)
        segment[cold[folded]] = 1
        segment[trained] = 0
        return idx, segment, indptr, indices, folded_emb

    def segments(self, user_ids: Sequence[str]) -> np.ndarray:
        """Which segment answers each user: "model", "fold_in" or "popularity"."""
        return np.asarray(SEGMENTS, dtype=object)[self._plan(user_ids)[1]]

    def fallback_mask(self, user_ids: Sequence[str]) -> np.ndarray:
        """True where ``recommend`` answers with popularity (no trained embedding, no usable history)."""
        return self._plan(user_ids)[1] == 2

    def recommend(self, user_ids: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
        """Top-``k`` (item_id, score) per user from their segment, seen and recent items excluded.
        Entries excluded everywhere (tiny catalogues, or more of the engine's top-K seen since its
        training than top_k - k) are dropped, so a row may be shorter than k."""
        if not 1 <= k <= self.top_k:
            raise ValueError(f"k must be in [1, {self.top_k}] (the exported top-K), got {k}")
        idx, segment, indptr, indices, folded_emb = self._plan(user_ids)
        n = len(user_ids)
        items = np.tile(self._popular, (n, 1))
        scores = np.tile(self._popular_scores, (n, 1))
        for code, answer in ((0, self._run_engine), (1, self._run_fold_in)):
            rows = np.flatnonzero(segment == code)
            for start in range(0, rows.size, self.max_batch):
                chunk = rows[start : start + self.max_batch]
                items[chunk], scores[chunk] = answer(chunk, idx, indptr, indices, folded_emb)
        # Recent items (the history) are excluded in every segment; then the first k that remain.
        rows = np.repeat(np.arange(n), np.diff(indptr))
        seen_keys = rows * len(self._item_ids) + indices
        candidate_keys = np.arange(n)[:, None] * len(self._item_ids) + np.clip(items, 0, None)
        valid = np.isfinite(scores) & (items >= 0) & ~np.isin(candidate_keys, seen_keys)
        order = np.argsort(~valid, axis=1, kind="stable")[:, :k]  # valid first, score order kept
        items, scores, valid = (np.take_along_axis(a, order, axis=1) for a in (items, scores, valid))
        names = self._item_ids[np.clip(items, 0, None)]
        return [
            [(str(name), float(score)) for name, score in zip(names[r][valid[r]], scores[r][valid[r]])]
            for r in range(n)
        ]

    def _run_engine(self, chunk, idx, indptr, indices, folded_emb) -> tuple[np.ndarray, np.ndarray]:
        top_items, top_scores = self.runner.run(idx[chunk])
        items = np.full((chunk.size, self.top_k), -1, dtype=np.int64)
        scores = np.full((chunk.size, self.top_k), -np.inf, dtype=np.float32)
        width = min(self.top_k, top_items.shape[1])  # the export clamps K to the catalogue size
        items[:, :width], scores[:, :width] = top_items[:, :width], top_scores[:, :width]
        return items, scores

    def _run_fold_in(self, chunk, idx, indptr, indices, folded_emb) -> tuple[np.ndarray, np.ndarray]:
        sub_indptr, sub_indices = csr_rows(indptr, indices, chunk)
        return top_k_excluding(folded_emb[chunk], self._item_emb, sub_indptr, sub_indices, self.top_k)


def answer_cold_users(
    item_embeddings: np.ndarray, item_degrees: np.ndarray, indptr: np.ndarray, indices: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """How a user the model has no trained embedding for is answered, in serving (``Recommender``)
    and in evaluation as served (:func:`cold_user_scorer`): (folded bool [n], embeddings [n, d]).
    Users with at least one history item (CSR over the model's items) that the model trained
    (``item_degrees`` > 0: its training interactions per item) are ranked by their fold-in embedding
    (:func:`fold_in`) @ item_embeddings.T; the rest get the model's popularity ranking (the same
    ``item_degrees``). Callers exclude the history items from either answer."""
    indptr, indices = np.asarray(indptr, np.int64), np.asarray(indices, np.int64)
    degrees = np.asarray(item_degrees, np.float64)
    rows = np.repeat(np.arange(indptr.size - 1), np.diff(indptr))
    folded = np.bincount(rows, weights=degrees[indices] > 0, minlength=indptr.size - 1) > 0
    return folded, fold_in(item_embeddings, indptr, indices, degrees)


def cold_user_scorer(item_embeddings: np.ndarray, item_degrees: np.ndarray, indptr: np.ndarray,
                     indices: np.ndarray):
    """:func:`answer_cold_users` as an evaluation scorer over the model's items: row u of the
    history CSR is user index u (users beyond it have no history); fold-in scores where folded,
    -(popularity rank) elsewhere. Returns (scorer, folded)."""
    from components.model.metrics import embedding_scorer, ranking_scorer, served_scorer

    folded, user_emb = answer_cold_users(item_embeddings, item_degrees, indptr, indices)
    popular = ranking_scorer(np.asarray(item_degrees), item_embeddings.shape[0])
    score = served_scorer(embedding_scorer(user_emb, item_embeddings), folded, popular)
    return score, folded


# --- Triton ---------------------------------------------------------------------------------


def served_version(repository: Path) -> dict | None:
    """The serving refresh's record of what the Triton repository holds, None before the first export."""
    record = Path(repository) / SERVING_RECORD
    return read_json(record) if record.exists() else None


def export_triton_repository(source: str | Path | Layout, out_dir: str | Path) -> list[Path]:
    """Write a Triton model repository for the champion: <out>/<model>/1/model.{plan,onnx} and
    <out>/<model>/config.pbtxt from deploy/triton templates. The ONNX model is always written;
    the TensorRT model only when the champion has a built plan. Returns the model folders."""
    champ, registry = _champion(source)
    if champ is None:
        raise LookupError(f"no champion in registry {registry}: nothing to export to Triton")
    version_dir = Path(champ.path)
    serving = read_json(version_dir / "serving.json")
    batch_sizes = [int(b) for b in serving.get("batch_sizes", [serving.get("max_batch", 64)])]
    out = Path(out_dir)
    written = []
    for runtime, (model_name, file_name) in TRITON_MODELS.items():
        src = version_dir / file_name
        model_dir = out / model_name
        if model_dir.exists():  # never leave a previous champion's model for Triton to serve
            shutil.rmtree(model_dir)
        if not src.exists():
            continue
        (model_dir / "1").mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, model_dir / "1" / file_name)
        config = render_triton_config(TRITON_TEMPLATES / model_name / "config.pbtxt", model_name,
                                      int(serving["top_k"]), batch_sizes)
        atomic_write_bytes(model_dir / "config.pbtxt", config.encode())
        written.append(model_dir)
    write_json(out / SERVING_RECORD, {"version": champ.version, "models": [p.name for p in written],
                                      "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
    log.info("triton repository %s: champion %s as %s", out, champ.version, ", ".join(p.name for p in written))
    return written
