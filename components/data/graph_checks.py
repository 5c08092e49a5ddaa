"""Graph-level checks after the graph is built: written to the graph's stats.json ("checks").

Degree-distribution drift against the previous graph, the share of isolated nodes (no training
edge) and of cold holdout pairs, duplicate edges, and leakage (an event of the run day inside its
training window). Leakage is a pipeline bug, never a property of the data: it raises. The others
warn (logged, recorded, shown in the run report); thresholds live in ValidationConfig.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from components.core.config import ValidationConfig
from components.core.catalog import Layout

log = logging.getLogger(__name__)


class GraphLeakage(RuntimeError):
    """Events of the run day are inside its training window."""


def degree_histogram(degrees: np.ndarray) -> list[float]:
    """Share of nodes (with at least one edge) per log2 degree bin: [1], [2,3], [4,7], ..."""
    present = degrees[degrees > 0]
    if present.size == 0:
        return []
    counts = np.bincount(np.floor(np.log2(present)).astype(np.int64))
    return [round(float(c), 6) for c in counts / present.size]


def histogram_drift(today: list[float], previous: list[float]) -> float:
    """Total variation distance between two binned distributions (0 = same, 1 = disjoint)."""
    size = max(len(today), len(previous))
    a = np.pad(np.asarray(today, dtype=float), (0, size - len(today)))
    b = np.pad(np.asarray(previous, dtype=float), (0, size - len(previous)))
    return round(float(0.5 * np.abs(a - b).sum()), 6)


def _check(name: str, value: float, threshold: float | None, detail: str, skipped: str = "") -> dict[str, Any]:
    verdict = "skipped" if skipped else ("pass" if threshold is None or value <= threshold else "WARN")
    return {"check": name, "value": value, "threshold": threshold, "verdict": verdict, "detail": skipped or detail}


def leaked_events(layout: Layout, day: str, train_days: list[str]) -> int:
    """Events of ``day``'s partition that also sit in a training day (by event_id)."""
    if day in train_days:
        return int(pd.read_parquet(layout.accepted(day) / "events.parquet", columns=["event_id"]).shape[0])
    if not train_days:
        return 0
    fresh = pd.read_parquet(layout.accepted(day) / "events.parquet", columns=["event_id"])["event_id"]
    train = pd.concat([pd.read_parquet(layout.accepted(d) / "events.parquet", columns=["event_id"])["event_id"]
                       for d in train_days], ignore_index=True)
    return int(fresh.isin(train).sum())


def graph_checks(layout: Layout, day: str, train_days: list[str], train_pairs: pd.DataFrame,
                 holdout_pairs: pd.DataFrame, num_users: int, num_items: int,
                 previous_stats: dict[str, Any] | None, cfg: ValidationConfig) -> dict[str, Any]:
    """The checks and the degree histograms to add to the graph's stats; raises GraphLeakage."""
    user_deg = np.bincount(train_pairs["user_idx"].to_numpy(), minlength=num_users)
    item_deg = np.bincount(train_pairs["item_idx"].to_numpy(), minlength=num_items)
    hist = {"user": degree_histogram(user_deg), "item": degree_histogram(item_deg)}
    checks = []
    prev_hist = (previous_stats or {}).get("degree_hist")
    if prev_hist and hist["user"] and hist["item"]:
        drift = max(histogram_drift(hist[k], prev_hist[k]) for k in ("user", "item"))
        checks.append(_check("degree_drift", drift, cfg.graph_max_degree_drift,
                             f"max over users/items of the total variation of log2-degree histograms vs {previous_stats['day']}"))
    else:
        checks.append(_check("degree_drift", 0.0, cfg.graph_max_degree_drift, "",
                             skipped="no previous graph (or an empty one) to compare with"))
    nodes = num_users + num_items
    isolated = int((user_deg == 0).sum() + (item_deg == 0).sum())
    checks.append(_check("isolated_share", round(isolated / nodes, 6) if nodes else 0.0, cfg.graph_max_isolated_share,
                         f"{isolated} of {nodes} nodes have no training edge (new on the day, or out of the window)"))
    hold_u = holdout_pairs["user_idx"].to_numpy()
    hold_i = holdout_pairs["item_idx"].to_numpy()
    cold = (user_deg[hold_u] == 0) | (item_deg[hold_i] == 0)
    checks.append(_check("cold_share", round(float(cold.mean()), 6) if cold.size else 0.0, cfg.graph_max_cold_share,
                         f"{int(cold.sum())} of {cold.size} holdout pairs have a user or item without a training edge"))
    keys = train_pairs["user_idx"].to_numpy() * max(num_items, 1) + train_pairs["item_idx"].to_numpy()
    duplicates = int(keys.size - np.unique(keys).size)
    checks.append(_check("duplicate_edges", duplicates, 0, "user-item edges present more than once"))
    leaked = leaked_events(layout, day, train_days)
    checks.append(_check("leaked_events", leaked, 0, f"events of {day} inside its training window"))
    if leaked:
        raise GraphLeakage(f"graph {day}: {leaked} events of the run day are inside its training window {train_days}")
    for c in checks:
        if c["verdict"] == "WARN":
            log.warning("graph %s: check %s WARN: %s > %s (%s)", day, c["check"], c["value"], c["threshold"], c["detail"])
    return {"checks": checks, "degree_hist": hist}
