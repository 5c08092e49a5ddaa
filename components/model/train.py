"""The training loop and the model artifact files that teacher, distill and prune share.

``fit_lightgcn`` is the one training loop (teacher, student and pruning fine-tunes use it): BPR +
L2 on the batch's ego embeddings (LightGCN paper code), per-epoch negatives drawn from (seed,
epoch) so a resumed run repeats the draw exactly, optional extra loss (distillation), evaluation
on a validation split every ``eval_every`` epochs with early stopping on NDCG@20, an atomic
checkpoint after every epoch, and one progress line per epoch (loss, pairs/s, ETA, val metrics).
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.model.metrics import embedding_scorer, evaluate_scorer
from components.core.interactions import Interactions
from components.model.models.lightgcn import (
    Backend,
    LightGCN,
    NormalizedAdjacency,
    build_adjacency,
    gather_rows,
    resolve_backend,
)
from components.model.models.losses import bpr_loss, ego_l2
from components.model.models.sampling import positive_keys, sample_epoch
from components.core.catalog import Layout, read_json, write_measured_json

log = logging.getLogger(__name__)

SELECT_METRIC = "ndcg@20"

# extra_loss(user_final, item_final, users, positives, negatives) -> scalar added to BPR + L2
ExtraLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ModelArtifact:
    """A published model (teacher, student or pruned): what the DAG passes on.

    ``path`` holds model.pt, embeddings.npz (final propagated ``user``/``item`` float32 embeddings,
    scores = user @ item.T), metrics.json, history.json and manifest.json.
    """

    kind: str
    day: str
    version: str
    path: str
    num_params: int
    metrics: dict[str, Any] = field(default_factory=dict)


def load_embeddings(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(user_emb [num_users, d], item_emb [num_items, d]) float32, the FINAL embeddings of a model
    artifact directory, shape-checked."""
    file = Path(path) / "embeddings.npz"
    if not file.exists():
        raise FileNotFoundError(f"{file}: model artifact has no embeddings.npz")
    with np.load(file) as data:
        user, item = data["user"].astype(np.float32, copy=False), data["item"].astype(np.float32, copy=False)
    if user.ndim != 2 or item.ndim != 2 or user.shape[1] != item.shape[1]:
        raise ValueError(f"{file}: expected user [U, d] and item [I, d], got {user.shape} and {item.shape}")
    return user, item


def load_model(path: str | Path) -> tuple[LightGCN, dict]:
    """The LightGCN (ego embeddings) and checkpoint payload of a model artifact directory. Loaded
    with weights_only: anyone who can write the root must not be able to run code through a pickle."""
    payload = torch.load(Path(path) / "model.pt", map_location="cpu", weights_only=True)
    return LightGCN.from_checkpoint(payload), payload


@dataclass(frozen=True)
class FitResult:
    model: LightGCN
    history: list[dict]
    best_epoch: int
    best_val: dict[str, float]
    stopped: str  # "epochs", "early_stop", "time_budget"
    train_seconds: float
    batch_size: int  # as applied: the asked batch, or larger within an epoch_edge_budget


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("teacher.device is 'cuda' but no CUDA device is available")
    return torch.device(requested)


def ran_on(device: torch.device | str) -> dict[str, Any]:
    """Where a model stage computed: device and torch's CPU thread count. Both go into the hashed
    record: each changes the last bits (float sums split per thread; the graph-filter teacher differs
    between 1 and 2 threads), so a version names the thread count it depends on (issue 20)."""
    return {"device": str(torch.device(device)), "threads": torch.get_num_threads()}


def final_embeddings(model: LightGCN, adjacency: NormalizedAdjacency, backend: Backend) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        users, items = model(adjacency, backend)
    return users.detach(), items.detach()


def evaluate_model(model: LightGCN, adjacency: NormalizedAdjacency, backend: Backend, train: Interactions,
                   test: Interactions, ks=(10, 20, 50), user_batch_size: int = 4096,
                   block_bytes: int | None = None) -> dict[str, float]:
    users, items = final_embeddings(model, adjacency, backend)
    scorer = embedding_scorer(users, items)
    device = users.device
    return evaluate_scorer(lambda u: scorer(u.to(device)), train, test, model.num_items, ks, user_batch_size,
                           block_bytes)


def split_validation(train: Interactions, fraction: float, seed: int) -> tuple[Interactions, Interactions]:
    """Seeded random split of training pairs into (fit, validation)."""
    held = np.random.default_rng([seed, 7]).random(len(train)) < fraction
    pick = lambda m: Interactions(train.user[m], train.item[m], train.weight[m])  # noqa: E731
    return pick(~held), pick(held)


def validation_sample(val: Interactions, users: int | None, seed: int) -> Interactions:
    """The pairs of ``val`` of a seeded sample of ``users`` of its users (None, or at least as many as
    there are: all of it). What every validation is scored on (teacher.val_users); the split itself,
    and so what is trained on and excluded, stays whole."""
    present = np.unique(val.user)
    if users is None or users >= present.size:
        return val
    chosen = np.random.default_rng([seed, 96]).choice(present, users, replace=False)
    keep = np.isin(val.user, chosen)
    return Interactions(val.user[keep], val.item[keep], val.weight[keep])


def validation_record(val: Interactions, sample: Interactions, users: int | None, seed: int) -> dict:
    """What a stage's metrics say about the validation it was scored on."""
    return {"users": int(np.unique(sample.user).size), "of_users": int(np.unique(val.user).size),
            "pairs": len(sample), "of_pairs": len(val), "val_users": users, "seed": seed}


def adjacency_of(pairs: Interactions, num_users: int, num_items: int, weighted: bool) -> NormalizedAdjacency:
    """The normalized adjacency of ``pairs``: binary, or weighted by ``pairs.weight`` (teacher.edge_weights)."""
    return build_adjacency(pairs.user, pairs.item, num_users, num_items, pairs.weight if weighted else None)


def _save_checkpoint(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def bounded_batch_size(batch_size: int, num_pairs: int, epoch_edge_budget: int | None) -> int:
    """The batch size an epoch over ``num_pairs`` uses: ``batch_size``, or the smallest larger one
    whose steps x ``num_pairs`` (each step propagates every training edge) stays within
    ``epoch_edge_budget`` (at least one step). Depends on the data only, never on the machine."""
    if epoch_edge_budget is None or num_pairs == 0:
        return batch_size
    max_steps = max(1, epoch_edge_budget // num_pairs)
    return max(batch_size, -(-num_pairs // max_steps))


def train_step(model: LightGCN, adjacency: NormalizedAdjacency, backend: Backend, optimizer: torch.optim.Optimizer,
               u: torch.Tensor, p: torch.Tensor, q: torch.Tensor, l2: float,
               extra_loss: ExtraLoss | None = None) -> torch.Tensor:
    """One optimizer step on a batch of (user, positive, negative): whole-graph propagation, BPR,
    L2 on the batch's ego embeddings, optional extra loss. Returns the (detached) batch loss."""
    final = model.propagate(adjacency, backend)
    # one gather for the batch's users, positives and negatives: one scatter in backward; gather_rows,
    # not final[...], so that a recomputation gives the same bits (issue 20)
    u_e, p_e, q_e = gather_rows(final, torch.cat([u, p + model.num_users, q + model.num_users])).split(u.numel())
    loss = bpr_loss((u_e * p_e).sum(1), (u_e * q_e).sum(1))
    if l2 > 0:
        loss = loss + l2 * ego_l2(gather_rows(model.user_embedding.weight, u),
                                  gather_rows(model.item_embedding.weight, p),
                                  gather_rows(model.item_embedding.weight, q))
    if extra_loss is not None:
        loss = loss + extra_loss(final[: model.num_users], final[model.num_users:], u, p, q)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def fit_lightgcn(
    model: LightGCN,
    train: Interactions,
    val: Interactions | None,
    *,
    epochs: int,
    lr: float,
    l2: float,
    batch_size: int,
    seed: int,
    eval_every: int = 5,
    patience: int = 3,
    device: torch.device | str = "cpu",
    backend: str = "auto",
    ks: tuple[int, ...] = (10, 20, 50),
    user_batch_size: int = 4096,
    block_bytes: int | None = None,
    extra_loss: ExtraLoss | None = None,
    after_step: Callable[[], None] | None = None,
    checkpoint_path: Path | None = None,
    max_seconds: float | None = None,
    name: str = "lightgcn",
    weighted: bool = False,
    keep_start: bool = False,
    epoch_edge_budget: int | None = None,
) -> FitResult:
    """Train ``model`` with BPR (+ ``extra_loss``) on ``train``; early-stop on ``val`` NDCG@20.

    With ``val`` None or empty every epoch runs and the last state is kept. ``after_step`` runs
    after each optimizer step (pruning masks). The best state (by val NDCG@20) is restored at the end.
    ``keep_start``: the starting state (a teacher-derived init, a pruned model) is evaluated first and
    is itself a candidate, so training that only makes it worse returns it unchanged (best_epoch -1).
    ``epoch_edge_budget`` bounds an epoch's steps x training pairs by growing the batch
    (:func:`bounded_batch_size`); the batch applied is in the result.
    """
    device = torch.device(device)
    backend_ = resolve_backend(backend, device)
    model = model.to(device)
    adjacency = adjacency_of(train, model.num_users, model.num_items, weighted).to(device)
    keys = positive_keys(train.user, train.item, model.num_items)
    # fused Adam: one kernel over the (large, dense) embedding tables instead of a dozen passes
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    metric = SELECT_METRIC if 20 in ks else f"ndcg@{ks[0]}"
    has_val = val is not None and len(val) > 0

    history: list[dict] = []
    start_epoch, best_epoch, best_score, bad_evals, train_seconds = 0, -1, -np.inf, 0, 0.0
    best_state: dict | None = None
    best_val: dict[str, float] = {}
    if checkpoint_path is not None and checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history, best_state, best_val = state["history"], state["best_state"], state["best_val"]
        start_epoch, best_epoch, best_score = state["epoch"] + 1, state["best_epoch"], state["best_score"]
        bad_evals, train_seconds = state["bad_evals"], state["train_seconds"]
        log.info("%s: resumed from %s at epoch %d (best %s %.4f at epoch %d)", name, checkpoint_path,
                 start_epoch, metric, best_score, best_epoch)

    if keep_start and has_val and start_epoch == 0:
        model.eval()
        best_val = evaluate_model(model, adjacency, backend_, train, val, ks, user_batch_size, block_bytes)
        best_score, best_state = best_val[metric], copy.deepcopy(model.state_dict())
        log.info("%s start: val %s %.4f recall@20 %.4f (training must beat it)", name, metric, best_score,
                 best_val.get("recall@20", float("nan")))
    stopped = "epochs"
    n = len(train)
    asked, batch_size = batch_size, bounded_batch_size(batch_size, n, epoch_edge_budget)
    if batch_size != asked:
        log.info("%s: batches of %d pairs, not %d: %d steps x %d pairs per epoch within the edge budget %d", name,
                 batch_size, asked, -(-n // batch_size), n, epoch_edge_budget)
    for epoch in range(start_epoch, epochs):
        if stopped != "epochs":
            break
        tic = time.perf_counter()
        users, pos, neg = (torch.from_numpy(a).to(device) for a in sample_epoch(
            train.user, train.item, model.num_items, seed, epoch, keys))
        model.train()
        total_loss = torch.zeros((), device=device)
        for start in range(0, n, batch_size):
            u, p, q = users[start:start + batch_size], pos[start:start + batch_size], neg[start:start + batch_size]
            loss = train_step(model, adjacency, backend_, optimizer, u, p, q, l2, extra_loss)
            if after_step is not None:
                after_step()
            total_loss += loss * u.numel()
        epoch_seconds = time.perf_counter() - tic
        train_seconds += epoch_seconds
        row = {"epoch": epoch, "loss": float(total_loss) / max(n, 1), "seconds": epoch_seconds,
               "pairs_per_s": n / epoch_seconds, "train_seconds_total": train_seconds}
        eta = train_seconds / (epoch + 1) * (epochs - epoch - 1)
        out_of_time = max_seconds is not None and train_seconds >= max_seconds and epoch + 1 < epochs
        if has_val and ((epoch + 1) % eval_every == 0 or epoch + 1 == epochs or out_of_time):
            model.eval()
            scores = evaluate_model(model, adjacency, backend_, train, val, ks, user_batch_size, block_bytes)
            row.update({f"val_{k}": v for k, v in scores.items()})
            if scores[metric] > best_score:
                best_score, best_epoch, bad_evals, best_val = scores[metric], epoch, 0, scores
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad_evals += 1
                if bad_evals >= patience:
                    stopped = "early_stop"
        if out_of_time and stopped == "epochs":  # evaluated above, so the last epochs are not thrown away
            stopped = "time_budget"
        history.append(row)
        val_text = f" val {metric} {row['val_' + metric]:.4f} recall@20 {row.get('val_recall@20', float('nan')):.4f}" \
            if f"val_{metric}" in row else ""
        log.info("%s epoch %d/%d loss %.4f %.0f pairs/s %.1fs ETA %.0fs%s", name, epoch + 1, epochs, row["loss"],
                 row["pairs_per_s"], epoch_seconds, eta, val_text)
        if checkpoint_path is not None:
            _save_checkpoint(checkpoint_path, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "history": history,
                "best_state": best_state, "best_val": best_val, "epoch": epoch, "best_epoch": best_epoch,
                "best_score": best_score, "bad_evals": bad_evals, "train_seconds": train_seconds})
    if stopped != "epochs":
        log.info("%s stopped (%s) after %d epochs; best %s %.4f at epoch %d", name, stopped, len(history), metric,
                 best_score, best_epoch + 1)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return FitResult(model.cpu(), history, best_epoch, best_val, stopped, train_seconds, batch_size)


def warm_start_rows(model: LightGCN, previous: LightGCN) -> dict[str, int]:
    """Copy the previous model's ego rows into ``model`` by stable index; rows beyond stay fresh."""
    if previous.embedding_dim != model.embedding_dim:
        log.warning("warm start skipped: previous model has dim %d, new model %d", previous.embedding_dim,
                    model.embedding_dim)
        return {"users_copied": 0, "items_copied": 0, "users_new": model.num_users, "items_new": model.num_items}
    users = min(previous.num_users, model.num_users)
    items = min(previous.num_items, model.num_items)
    with torch.no_grad():
        model.user_embedding.weight[:users] = previous.user_embedding.weight[:users]
        model.item_embedding.weight[:items] = previous.item_embedding.weight[:items]
    return {"users_copied": users, "items_copied": items, "users_new": model.num_users - users,
            "items_new": model.num_items - items}


# --- artifacts (shared by distill and prune) ---------------------------------------------------


def write_model_files(out: Path, model: LightGCN, user_emb: torch.Tensor, item_emb: torch.Tensor,
                      graph_version: str, metrics: dict, history: list[dict], extra: dict | None = None,
                      state_dict: dict | None = None) -> dict[str, int]:
    """Write model.pt, embeddings.npz, metrics.json, history.json; returns their sizes in bytes."""
    payload = {"state_dict": state_dict if state_dict is not None else model.state_dict(),
               **model.metadata(), "graph_version": graph_version, **(extra or {})}
    torch.save(payload, out / "model.pt")
    np.savez(out / "embeddings.npz", user=user_emb.cpu().numpy().astype(np.float32),
             item=item_emb.cpu().numpy().astype(np.float32))
    sizes = {"model_pt": (out / "model.pt").stat().st_size, "embeddings_npz": (out / "embeddings.npz").stat().st_size}
    write_measured_json(out, "metrics.json", {**metrics, "bytes": sizes})
    write_measured_json(out, "history.json", history)
    return sizes


def summary_metrics(metrics: dict) -> dict[str, float]:
    """The XCom-sized subset: headline validation/holdout numbers."""
    out: dict[str, float] = {}
    for section in ("val", "holdout"):
        for key in ("recall@20", "ndcg@20", "users_evaluated"):
            if key in metrics.get(section, {}):
                out[f"{section}_{key}"] = metrics[section][key]
    for key in ("num_params", "num_params_nonzero", "compression_ratio", "sparsity", "ndcg_retention_val"):
        if key in metrics:
            out[key] = metrics[key]
    return out


def existing_artifact(layout: Layout, kind: str, day: str, inputs: list[dict], config_hash: str) -> ModelArtifact | None:
    """The day's current artifact if it was built from the same inputs and config (idempotent re-run)."""
    ref = layout.built_from(kind, day, inputs, config_hash)
    if ref is None:
        return None
    metrics = read_json(Path(ref.path) / "metrics.json")
    log.info("%s %s: v%s already built from the same inputs and config; nothing to do", kind, day, ref.version)
    return ModelArtifact(kind, day, ref.version, ref.path, int(metrics["num_params"]), summary_metrics(metrics))


def work_dir(layout: Layout, stage: str, day: str, key: str) -> Path:
    return layout.root / "work" / stage / f"{day}-{key}"
