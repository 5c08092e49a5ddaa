"""Tiny planted-community interaction data and graph artifacts for the model-plane tests.

Users and items fall into communities; each user interacts with items of its own community (plus a
little noise), so a model that learns communities beats popularity, which cannot tell them apart.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from components.core.interactions import Interactions
from components.data.graph import build_heterograph
from components.core.catalog import ArtifactRef, Layout, staging_dir, write_json


def planted(num_users: int = 120, num_items: int = 80, communities: int = 4, per_user: int = 10,
            holdout_per_user: int = 3, seed: int = 0, noise: float = 0.05) -> tuple[Interactions, Interactions]:
    """(train, holdout) pairs: distinct pairs, holdout disjoint from train."""
    rng = np.random.default_rng(seed)
    user_comm = np.arange(num_users) % communities
    item_comm = np.arange(num_items) % communities
    total = per_user + holdout_per_user
    users, items = [], []
    for c in range(communities):  # loop over a handful of communities, not over interactions
        members = np.flatnonzero(user_comm == c)
        pool = np.flatnonzero(item_comm == c)
        scores = rng.random((members.size, pool.size)) + np.linspace(0.3, 0, pool.size)  # mild popularity
        picks = np.argsort(-scores, axis=1)[:, :total]
        users.append(np.repeat(members, picks.shape[1]))
        items.append(pool[picks].reshape(-1))
    user = np.concatenate(users)
    item = np.concatenate(items)
    swap = rng.random(user.size) < noise
    item[swap] = rng.integers(0, num_items, swap.sum())
    _, first = np.unique(user * num_items + item, return_index=True)  # drop noisy duplicates
    keep = np.sort(first)
    order = keep[np.argsort(user[keep], kind="stable")]  # group by user, keep draw order inside
    user, item = user[order], item[order]
    rank = np.arange(user.size) - np.searchsorted(user, user, side="left")
    counts = np.bincount(user, minlength=num_users)[user]
    is_holdout = rank >= counts - holdout_per_user
    weight = np.ones(user.size, dtype=np.float32)
    pick = lambda m: Interactions(user[m].astype(np.int64), item[m].astype(np.int64), weight[m])  # noqa: E731
    return pick(~is_holdout), pick(is_holdout)


def write_graph(layout: Layout, day: str, train: Interactions, holdout: Interactions, num_users: int,
                num_items: int, new_users: int = 0, new_items: int = 0) -> ArtifactRef:
    """Publish a graph artifact in the graph stage's documented format."""
    from components.core.dgl_compat import import_dgl

    dgl = import_dgl()
    pairs = pd.DataFrame({"user_idx": train.user, "item_idx": train.item, "weight": train.weight})
    graph = build_heterograph(pairs, num_users, num_items)
    stats = {"day": day, "num_users": num_users, "num_items": num_items, "train_pairs": len(train),
             "new_users": new_users, "new_items": new_items,
             "holdout": {"pairs": len(holdout), "users": int(np.unique(holdout.user).size)}}
    with staging_dir(layout.artifacts("graphs")) as tmp:
        dgl.save_graphs(str(tmp / "graph.bin"), [graph])
        pd.DataFrame({"user_id": [f"u{i}" for i in range(num_users)], "idx": np.arange(num_users),
                      "first_seen": day}).to_parquet(tmp / "users.parquet", index=False)
        pd.DataFrame({"item_id": [f"i{i}" for i in range(num_items)], "idx": np.arange(num_items),
                      "first_seen": day}).to_parquet(tmp / "items.parquet", index=False)
        pd.DataFrame({"user_idx": holdout.user, "item_idx": holdout.item,
                      "weight": holdout.weight}).to_parquet(tmp / "holdout.parquet", index=False)
        write_json(tmp / "stats.json", stats)
        return layout.publish("graphs", day, tmp, {"inputs": [], "config_hash": "test", "stats": stats})
