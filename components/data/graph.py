"""Graph stage: the user-item DGL heterograph over a rolling window, with stable IDs.

Nightly semantics: the graph for run day D is built from accepted days [D - window, D - 1] (the
training window); day D's own interactions are kept apart as the fresh holdout that evaluation
and the gates use. ID maps are append-only: IDs seen before keep their index, new IDs (including
those first seen on D) are appended in (first_seen, id) order, so indices are stable across days.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from components.core.config import GraphConfig, PipelineConfig
from components.core.dgl_compat import import_dgl
from components.core.interactions import USER_ETYPE, Interactions
from components.core.refs import AcceptedRef, GraphRef
from components.data.graph_checks import graph_checks
from components.core.catalog import (
    MANIFEST,
    ArtifactRef,
    Layout,
    hash_dir,
    parse_day,
    read_json,
    staging_dir,
    write_json,
)

log = logging.getLogger(__name__)

KIND = "graphs"
ITEM_ETYPE = ("item", "rev_interacts", "user")


@dataclass(frozen=True)
class GraphArtifact:
    """A published graph: where it lives and what it holds.

    Files: graph.bin (DGL heterograph, edge data "w" on both edge types), users.parquet and
    items.parquet (id -> idx, first_seen), holdout.parquet (day D's pairs, indexed), stats.json.
    """

    ref: ArtifactRef
    num_users: int
    num_items: int
    num_train_edges: int
    num_holdout_pairs: int

    @property
    def path(self) -> Path:
        return Path(self.ref.path)

    @classmethod
    def load(cls, ref: ArtifactRef) -> "GraphArtifact":
        stats = read_json(Path(ref.path) / "stats.json")
        return cls(
            ref=ref,
            num_users=stats["num_users"],
            num_items=stats["num_items"],
            num_train_edges=stats["train_pairs"],
            num_holdout_pairs=stats["holdout"]["pairs"],
        )

    def dgl_graph(self):
        dgl = import_dgl()
        graphs, _ = dgl.load_graphs(str(self.path / "graph.bin"))
        return graphs[0]

    def train_interactions(self) -> Interactions:
        graph = self.dgl_graph()
        src, dst = graph.edges(etype=USER_ETYPE)
        weight = graph.edges[USER_ETYPE].data["w"]
        return Interactions(src.numpy().astype(np.int64), dst.numpy().astype(np.int64), weight.numpy())

    def holdout_interactions(self) -> Interactions:
        frame = pd.read_parquet(self.path / "holdout.parquet")
        return Interactions(
            frame["user_idx"].to_numpy(np.int64),
            frame["item_idx"].to_numpy(np.int64),
            frame["weight"].to_numpy(np.float32),
        )

    def user_ids(self) -> pd.DataFrame:
        return pd.read_parquet(self.path / "users.parquet")

    def item_ids(self) -> pd.DataFrame:
        return pd.read_parquet(self.path / "items.parquet")


@dataclass(frozen=True)
class GraphResult:
    """What the DAG passes on (XCom-sized)."""

    day: str
    version: str
    path: str
    num_users: int
    num_items: int
    train_pairs: int
    holdout_pairs: int
    new_users: int
    new_items: int


def _read_days(layout: Layout, partitions: list[AcceptedRef]) -> pd.DataFrame:
    columns = ["user_id", "item_id", "ts", "weight"]
    frames = [pd.read_parquet(layout.partition(ref) / "events.parquet", columns=columns) for ref in partitions]
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in
                             zip(columns, ["string", "string", "datetime64[us, UTC]", "float64"])})
    return pd.concat(frames, ignore_index=True)


def window_days(day: str, gcfg: GraphConfig) -> tuple[str, str]:
    """The first and last day of the training window of run day ``day``: [day - window, day - 1]."""
    run_day = parse_day(day)
    return ((run_day - dt.timedelta(days=gcfg.window_days)).isoformat(),
            (run_day - dt.timedelta(days=1)).isoformat())


def extend_id_map(previous: pd.DataFrame, events: pd.DataFrame, id_column: str) -> pd.DataFrame:
    """Append IDs not in ``previous`` in (first_seen, id) order; existing indices never change."""
    first_seen = (
        events.groupby(id_column, observed=True)["ts"].min().dt.strftime("%Y-%m-%d").rename("first_seen").reset_index()
    )
    new = first_seen[~first_seen[id_column].isin(previous[id_column])]
    new = new.sort_values(["first_seen", id_column], kind="stable")
    new = new.assign(idx=np.arange(len(previous), len(previous) + len(new), dtype=np.int64))
    # An empty part is left out: pandas deprecates concatenating one (its object columns would set dtypes).
    parts = [previous] + ([new[[id_column, "idx", "first_seen"]]] if len(new) else [])
    combined = pd.concat(parts, ignore_index=True)
    return combined.astype({id_column: "string", "idx": "int64", "first_seen": "string"})


def newest_id_maps(layout: Layout) -> GraphRef | None:
    """The graph holding the longest ID maps, of any day and version.

    Every map extends the longest one, so all maps form one append-only chain: a day re-landed and
    re-run after later days extends the newest maps (not its previous day's), so its new IDs
    cannot take indices that a later day already gave to other IDs.
    """
    best, best_size = None, (-1, -1)
    for manifest in layout.artifacts(KIND).glob(f"*/*/{MANIFEST}"):
        stats = read_json(manifest).get("stats", {})
        size = (stats.get("num_users", -1), stats.get("num_items", -1))
        if size > best_size:
            record = read_json(manifest)
            best, best_size = GraphRef(record["day"], record["version"], str(manifest.parent)), size
    return best


def _maps_covering(layout: Layout, ref: GraphRef | None, events: pd.DataFrame) -> GraphRef | None:
    """``ref`` if its ID maps already hold every user and item of ``events``, else None."""
    if ref is None:
        return None
    for name, column in (("users.parquet", "user_id"), ("items.parquet", "item_id")):
        known = pd.read_parquet(Path(layout.artifact(ref).path) / name, columns=[column])[column].astype(str)
        if not events[column].astype(str).isin(known).all():
            return None
    return ref


def _id_map(layout: Layout, base: GraphRef | None, id_column: str) -> pd.DataFrame:
    """The ID map of ``base`` (``id_column``, idx, first_seen), or an empty one to start the chain."""
    if base is None:
        return pd.DataFrame({id_column: pd.Series(dtype="string"), "idx": pd.Series(dtype="int64"),
                             "first_seen": pd.Series(dtype="string")})
    name = "users.parquet" if id_column == "user_id" else "items.parquet"
    return pd.read_parquet(Path(layout.artifact(base).path) / name)[[id_column, "idx", "first_seen"]]


def aggregate_pairs(events: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame,
                    as_of: pd.Timestamp, half_life_days: float | None) -> pd.DataFrame:
    """Sum event weights per (user, item), decayed by age at ``as_of`` (0.5 per half-life)."""
    frame = events.merge(users[["user_id", "idx"]].rename(columns={"idx": "user_idx"}), on="user_id")
    frame = frame.merge(items[["item_id", "idx"]].rename(columns={"idx": "item_idx"}), on="item_id")
    weight = frame["weight"].to_numpy(np.float64)
    if half_life_days is not None:
        age_days = (as_of - frame["ts"]).dt.total_seconds().to_numpy() / 86400.0
        weight = weight * np.power(0.5, np.clip(age_days, 0, None) / half_life_days)
    frame = frame.assign(weight=weight)
    pairs = frame.groupby(["user_idx", "item_idx"], sort=True)["weight"].sum().reset_index()
    return pairs.astype({"user_idx": "int64", "item_idx": "int64", "weight": "float32"})


def build_heterograph(pairs: pd.DataFrame, num_users: int, num_items: int):
    import torch

    dgl = import_dgl()
    users = torch.from_numpy(pairs["user_idx"].to_numpy())
    items = torch.from_numpy(pairs["item_idx"].to_numpy())
    graph = dgl.heterograph(
        {USER_ETYPE: (users, items), ITEM_ETYPE: (items, users)},
        num_nodes_dict={"user": num_users, "item": num_items},
    )
    weight = torch.from_numpy(pairs["weight"].to_numpy(np.float32))
    graph.edges[USER_ETYPE].data["w"] = weight
    graph.edges[ITEM_ETYPE].data["w"] = weight
    return graph


def _percentiles(degrees: np.ndarray) -> dict[str, float]:
    if degrees.size == 0:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0}
    p50, p90, p99 = np.percentile(degrees, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(degrees.max())}


def graph_stats(day: str, train_days: list[str], gcfg: GraphConfig, num_users: int, num_items: int,
                train_events: pd.DataFrame, holdout_events: pd.DataFrame, train_pairs: pd.DataFrame,
                holdout_pairs: pd.DataFrame, yesterday_stats: dict | None) -> dict:
    """The graph's stats.json: sizes, what is new since yesterday's graph, degrees, the holdout's cold users."""
    train_users = np.unique(train_pairs["user_idx"].to_numpy())
    train_items = np.unique(train_pairs["item_idx"].to_numpy())
    cold_user = ~np.isin(holdout_pairs["user_idx"].to_numpy(), train_users)
    cold_item = ~np.isin(holdout_pairs["item_idx"].to_numpy(), train_items)
    return {
        "day": day,
        "train_days": train_days,
        "window_days": gcfg.window_days,
        "decay_half_life_days": gcfg.decay_half_life_days,
        "num_users": num_users,
        "num_items": num_items,
        # New relative to yesterday's graph (the ID maps may extend a longer, later chain link).
        "new_users": num_users - (yesterday_stats["num_users"] if yesterday_stats else 0),
        "new_items": num_items - (yesterday_stats["num_items"] if yesterday_stats else 0),
        "train_events": len(train_events),
        "train_pairs": len(train_pairs),
        "user_degree": _percentiles(np.bincount(train_pairs["user_idx"], minlength=num_users)[train_users]),
        "item_degree": _percentiles(np.bincount(train_pairs["item_idx"], minlength=num_items)[train_items]),
        "holdout": {
            "events": len(holdout_events),
            "pairs": len(holdout_pairs),
            "users": int(holdout_pairs["user_idx"].nunique()),
            "cold_users": int(np.unique(holdout_pairs["user_idx"].to_numpy()[cold_user]).size),
            "pairs_with_cold_user": int(cold_user.sum()),
            "pairs_with_cold_item": int(cold_item.sum()),
        },
    }


def run_graph(layout: Layout, day: str, cfg: PipelineConfig, accepted: AcceptedRef, window: tuple[AcceptedRef, ...],
              id_maps: GraphRef | None, same_day: GraphRef | None, previous: GraphRef | None) -> GraphResult:
    """Build and publish the graph for run day ``day``: trained on the accepted days ``window`` (the
    training window ending the day before, ``window_days``), ``accepted`` (the day) kept as holdout.
    The caller chooses the graphs it builds on: ``same_day`` (the day's current graph: its ID maps are
    kept while they cover the events, so a re-run is byte-identical), else ``id_maps`` (the longest
    maps, ``newest_id_maps``) are extended; ``previous`` (the newest graph of an earlier day) is what
    new users and degree drift are counted against. All of them are recorded in the lineage."""
    gcfg: GraphConfig = cfg.graph
    run_day = parse_day(day)
    first, last = window_days(day, gcfg)
    if accepted.day != day or any(not first <= ref.day <= last for ref in window):
        raise ValueError(f"graph {day}: given accepted {accepted.day} and window {[r.day for r in window]} "
                         f"(expected {day} and days {first}..{last})")
    train_days = [ref.day for ref in window]
    train_events = _read_days(layout, list(window))
    holdout_events = _read_days(layout, [accepted])

    # Holdout IDs are appended too: new users/items of the fresh day get stable indices and are counted.
    all_events = pd.concat([train_events, holdout_events], ignore_index=True)
    base = _maps_covering(layout, same_day, all_events) or id_maps
    users, items = (extend_id_map(_id_map(layout, base, column), all_events, column) for column in ("user_id", "item_id"))

    as_of = pd.Timestamp(run_day, tz="UTC")
    train_pairs = aggregate_pairs(train_events, users, items, as_of, gcfg.decay_half_life_days)
    holdout_pairs = aggregate_pairs(holdout_events, users, items, as_of, None)
    graph = build_heterograph(train_pairs, len(users), len(items))

    yesterday_stats = read_json(Path(layout.artifact(previous).path) / "stats.json") if previous else None
    stats = graph_stats(day, train_days, gcfg, len(users), len(items), train_events, holdout_events, train_pairs,
                        holdout_pairs, yesterday_stats)
    stats.update(graph_checks(layout, day, train_days, train_pairs, holdout_pairs, len(users), len(items),
                              yesterday_stats, cfg.validation))
    dgl = import_dgl()
    with staging_dir(layout.artifacts(KIND)) as tmp:
        dgl.save_graphs(str(tmp / "graph.bin"), [graph])
        users.to_parquet(tmp / "users.parquet", index=False)
        items.to_parquet(tmp / "items.parquet", index=False)
        holdout_pairs.to_parquet(tmp / "holdout.parquet", index=False)
        write_json(tmp / "stats.json", stats)
        inputs = [ref.as_dict() for ref in [*window, accepted]]
        inputs += [ref.as_dict() | {"role": role} for role, ref in (("id_maps", base), ("previous", previous)) if ref]
        # DGL's graph.bin is not byte-stable across saves; version by the edges it encodes instead.
        version = hashlib.sha256(
            (hash_dir(tmp, exclude=(MANIFEST, "graph.bin")) + train_pairs.to_csv(index=False)).encode()
        ).hexdigest()[:12]
        ref = layout.publish(KIND, day, tmp, {"inputs": inputs, "config_hash": cfg.config_hash("graph"), "stats": stats},
                             version=version)
    log.info(
        "graph %s v%s: %d users (%d new), %d items (%d new), %d train pairs from %d days, holdout %d pairs "
        "(%d with cold users, %d with cold items)",
        day, ref.version, stats["num_users"], stats["new_users"], stats["num_items"], stats["new_items"],
        stats["train_pairs"], len(train_days), stats["holdout"]["pairs"], stats["holdout"]["pairs_with_cold_user"],
        stats["holdout"]["pairs_with_cold_item"],
    )
    return GraphResult(day, ref.version, ref.path, stats["num_users"], stats["num_items"], stats["train_pairs"],
                       stats["holdout"]["pairs"], stats["new_users"], stats["new_items"])

