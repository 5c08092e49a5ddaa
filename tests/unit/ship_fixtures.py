"""Tiny, realistic ship-plane inputs written in the documented artifact formats.

A planted-cluster world: users and items belong to clusters, users interact with items of their
own cluster. A "good" model's embeddings are the cluster one-hots plus noise (it ranks the
holdout well), a "bad" model's are random. Graphs and models are published through
``Layout.publish`` exactly as the real stages do, so stages under test read them unchanged.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from components.core.config import LadderConfig, PipelineConfig, load_config
from components.core.dgl_compat import import_dgl
from components.model.ladder import LADDER_FILE
from components.core.interactions import USER_ETYPE
from components.data.graph import ITEM_ETYPE, GraphArtifact
from components.model.ladder import Rung, ladder_record
from components.model.models.quantize import quantize_rows, table_bytes
from components.core.catalog import Layout, staging_dir, write_json
from tests.unit.data_fixtures import current_inputs

NUM_CLUSTERS = 4


@dataclass(frozen=True)
class World:
    num_users: int
    num_items: int
    user_cluster: np.ndarray
    item_cluster: np.ndarray


def make_world(num_users: int = 40, num_items: int = 60, seed: int = 0) -> World:
    rng = np.random.default_rng(seed)
    return World(
        num_users,
        num_items,
        rng.integers(0, NUM_CLUSTERS, num_users),
        np.arange(num_items) % NUM_CLUSTERS,
    )


def cluster_embeddings(world: World, dim: int = 8, noise: float = 0.1, seed: int = 1):
    """Embeddings that rank same-cluster items first (a good model)."""
    rng = np.random.default_rng(seed)
    basis = np.eye(NUM_CLUSTERS, dim, dtype=np.float32)
    user = basis[world.user_cluster] + noise * rng.standard_normal((world.num_users, dim)).astype(np.float32)
    item = basis[world.item_cluster] + noise * rng.standard_normal((world.num_items, dim)).astype(np.float32)
    return user.astype(np.float32), item.astype(np.float32)


def random_embeddings(num_users: int, num_items: int, dim: int = 8, seed: int = 2):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((num_users, dim)).astype(np.float32),
        rng.standard_normal((num_items, dim)).astype(np.float32),
    )


def _pairs(world: World, per_user: int, rng: np.random.Generator, exclude: set | None = None):
    users, items = [], []
    for cluster in range(NUM_CLUSTERS):  # loop over 4 clusters, not over users (fixture only)
        members = np.flatnonzero(world.user_cluster == cluster)
        pool = np.flatnonzero(world.item_cluster == cluster)
        if members.size == 0:
            continue
        picks = np.argsort(rng.random((members.size, pool.size)), axis=1)[:, :per_user]
        users.append(np.repeat(members, per_user))
        items.append(pool[picks].ravel())
    pairs = pd.DataFrame({"user": np.concatenate(users), "item": np.concatenate(items)}).drop_duplicates()
    if exclude:
        keys = list(zip(pairs["user"], pairs["item"]))
        pairs = pairs[[k not in exclude for k in keys]]
    return pairs["user"].to_numpy(np.int64), pairs["item"].to_numpy(np.int64)


def make_graph(
    layout: Layout,
    day: str,
    world: World,
    train_per_user: int = 5,
    holdout_per_user: int = 3,
    seed: int = 0,
    cold_users: int = 0,
    repeat_only_users: int = 0,
) -> GraphArtifact:
    """Publish a "graphs" artifact for ``day``: training pairs, holdout pairs, ID maps, stats.

    The last ``cold_users`` users have no training pairs (first seen on the holdout day); the first
    ``repeat_only_users`` users' holdout pairs all repeat training pairs (nothing unseen to recommend).
    """
    dgl = import_dgl()
    rng = np.random.default_rng(seed)
    train_user, train_item = _pairs(world, train_per_user, rng)
    warm = train_user < world.num_users - cold_users
    train_user, train_item = train_user[warm], train_item[warm]
    seen = set(zip(train_user.tolist(), train_item.tolist()))
    hold_user, hold_item = _pairs(world, holdout_per_user, rng, exclude=seen)
    if repeat_only_users:
        keep, repeats = hold_user >= repeat_only_users, train_user < repeat_only_users
        hold_user = np.concatenate([hold_user[keep], train_user[repeats]])
        hold_item = np.concatenate([hold_item[keep], train_item[repeats]])
    weight = np.ones(train_user.shape[0], dtype=np.float32)
    graph = dgl.heterograph(
        {USER_ETYPE: (torch.from_numpy(train_user), torch.from_numpy(train_item)),
         ITEM_ETYPE: (torch.from_numpy(train_item), torch.from_numpy(train_user))},
        num_nodes_dict={"user": world.num_users, "item": world.num_items},
    )
    graph.edges[USER_ETYPE].data["w"] = torch.from_numpy(weight)
    graph.edges[ITEM_ETYPE].data["w"] = torch.from_numpy(weight)
    first = (dt.date.fromisoformat(day) - dt.timedelta(days=7)).isoformat()
    with staging_dir(layout.artifacts("graphs")) as tmp:
        dgl.save_graphs(str(tmp / "graph.bin"), [graph])
        pd.DataFrame({"user_id": [f"u{i}" for i in range(world.num_users)],
                      "idx": np.arange(world.num_users), "first_seen": first}).to_parquet(tmp / "users.parquet")
        pd.DataFrame({"item_id": [f"i{i}" for i in range(world.num_items)],
                      "idx": np.arange(world.num_items), "first_seen": first}).to_parquet(tmp / "items.parquet")
        pd.DataFrame({"user_idx": hold_user, "item_idx": hold_item,
                      "weight": np.ones(hold_user.shape[0], np.float32)}).to_parquet(tmp / "holdout.parquet")
        write_json(tmp / "stats.json", {
            "num_users": world.num_users, "num_items": world.num_items,
            "train_pairs": int(train_user.shape[0]), "holdout": {"pairs": int(hold_user.shape[0])},
        })
        ref = layout.publish("graphs", day, tmp, manifest={"inputs": {"days": [first, day]}})
    return GraphArtifact.load(ref)


def make_model(
    layout: Layout,
    kind: str,
    day: str,
    user_emb: np.ndarray,
    item_emb: np.ndarray,
    graph: GraphArtifact | None = None,
    epochs: int = 3,
    upstream: tuple = (),
    precision: str | None = None,
):
    """Publish a model artifact (models/teacher|student|pruned) in the documented format; with
    ``precision``, a ladder.json whose chosen rung ships at that precision (components/model/ladder.py)."""
    with staging_dir(layout.artifacts(f"models/{kind}")) as tmp:
        if precision is not None:  # a one-rung ladder, unmeasured (no validation split)
            tables = [quantize_rows(e, precision) for e in (user_emb, item_emb)]
            rung = Rung(prune_ratio=0.0, embedding_dim=int(user_emb.shape[1]), precision=precision,
                        num_params_nonzero=int(user_emb.size + item_emb.size),
                        table_bytes=sum(table_bytes(t) for t in tables), latency_p95_ms=0.0, val_ndcg_at_20=None,
                        retention=None)
            write_json(tmp / LADDER_FILE, ladder_record([rung], None, LadderConfig(), 0.0))
        np.savez(tmp / "embeddings.npz", user=user_emb, item=item_emb)
        torch.save({"state_dict": {"user": torch.from_numpy(user_emb), "item": torch.from_numpy(item_emb)},
                    "num_users": user_emb.shape[0], "num_items": item_emb.shape[0],
                    "embedding_dim": user_emb.shape[1], "num_layers": 0, "layer_weights": [1.0],
                    "graph_version": graph.ref.version if graph else None}, tmp / "model.pt")
        write_json(tmp / "metrics.json", {"num_params": int(user_emb.size + item_emb.size)})
        history = [{"epoch": e, "loss": 1.0 / (e + 1), "val_ndcg@20": 0.1 * e, "seconds": 0.1}
                   for e in range(1, epochs + 1)]
        write_json(tmp / "history.json", history)
        # As the real stages: a list of input lineages (graph first, then upstream models).
        inputs = ([graph.ref.as_lineage()] if graph else []) + [ref.as_lineage() for ref in upstream]
        return layout.publish(f"models/{kind}", day, tmp, manifest={"inputs": inputs})


# Gates for the tiny world (40 users): the default file's min_users_evaluated would make every
# tiny day inconclusive; the champion gate is lenient so two good candidates pass against each other.
TINY_GATES = [
    {"metric": "users_evaluated", "kind": "min", "threshold": 10},
    {"metric": "ndcg@20", "kind": "min", "threshold": 0.05},
    {"metric": "ndcg@20", "kind": "min_lift_over", "baseline": "popularity", "threshold": 0.05},
    {"metric": "ndcg@20", "kind": "max_regression_vs", "baseline": "champion", "threshold": 0.5},
    {"metric": "ndcg@20", "kind": "min_ratio_to", "baseline": "teacher", "threshold": 0.5},
    {"metric": "parity_topk_overlap", "kind": "min", "threshold": 0.95},
    {"metric": "latency_p99_ms", "kind": "max", "threshold": 250.0},
]


def tiny_config(tmp_path: Path, **overrides) -> PipelineConfig:
    if "gates_file" not in overrides:
        overrides["gates_file"] = str(write_gates(Path(tmp_path) / "tiny_gates.yaml", TINY_GATES))
    base = {
        "root": str(tmp_path),
        "export.top_k": 5,
        "export.batch_sizes": [1, 4, 16],
        "export.latency_repeats": 1000,  # the latency gates need >= 1000 timed calls
        "eval.ks": [5, 10, 20],
        "engine.runtime": "onnxruntime",
    }
    base.update(overrides)
    return load_config(None, overrides=base)


def write_gates(path: Path, gates: list[dict], **settings) -> Path:
    """A gates file: ``gates`` and top-level ``settings`` (e.g. champion_health={"fallback": "keep"})."""
    import yaml

    path.write_text(yaml.safe_dump({"gates": gates, **settings}))
    return path


def dump(obj) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def run_ship_day(layout: Layout, day: str, cfg: PipelineConfig, world: World, seed: int = 0,
                 candidate: str = "good", gate: bool = True, cold_users: int = 0, run_key: str = "r1",
                 repeat_only_users: int = 0):
    """Graph + teacher + pruned candidate for ``day``, then export, convert, evaluate, gate (run ``run_key``)."""
    from components.decide import gates
    from components.decide.evaluation import run_evaluate
    from components.ship import convert, export

    graph = make_graph(layout, day, world, seed=seed, cold_users=cold_users, repeat_only_users=repeat_only_users)
    teacher = make_model(layout, "teacher", day, *cluster_embeddings(world, seed=seed + 10, noise=0.05), graph)
    if candidate in ("good", "anti"):  # anti: ranks the user's own cluster last (worse than popularity)
        user, item = cluster_embeddings(world, seed=seed + 20, noise=0.2)
        user = user if candidate == "good" else -user
    else:
        user, item = random_embeddings(world.num_users, world.num_items, seed=seed + 30)
    student = make_model(layout, "student", day, user, item, graph, upstream=(teacher,))
    make_model(layout, "pruned", day, user, item, graph, upstream=(student, teacher), precision="int8")
    export.run_export(layout, day, cfg, **current_inputs(layout, "export", day))
    built = convert.run_convert(layout, day, cfg, **current_inputs(layout, "convert", day))
    if not gate:
        return None
    evaluation = run_evaluate(layout, day, cfg, run_key=run_key, candidate={"day": day, "version": built.version})
    return gates.run_gate(layout, day, cfg, run_key=run_key, evaluation=evaluation)


def promoted_champion(root: Path, day: str) -> Layout:
    """A root whose registry serves a champion built and promoted for ``day`` (users u38, u39 are in the
    ID map without training pairs: the popularity segment)."""
    from components.decide.registry import run_promote, run_register

    layout = Layout.at(root)
    cfg = tiny_config(root)
    run_ship_day(layout, day, cfg, make_world(), cold_users=2)
    registration = run_register(layout, day, cfg, run_key="r1")
    assert run_promote(layout, day, cfg, run_key="r1", registration=registration).promoted
    return layout


def write_accepted_events(layout, day, rows):
    """An accepted partition in the validate stage's format (what the features stage reads)."""
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "ts"])
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True).astype("datetime64[us, UTC]")
    frame["event_id"] = [f"e{i}" for i in range(len(frame))]
    frame["event_type"], frame["weight"], frame["late"] = "view", 1.0, False
    part = layout.accepted(day)
    part.mkdir(parents=True, exist_ok=True)
    frame.astype({c: "string" for c in ("event_id", "user_id", "item_id", "event_type")}).to_parquet(
        part / "events.parquet", index=False)
    write_json(part / "manifest.json", {"day": day, "rows_accepted": len(frame)})
