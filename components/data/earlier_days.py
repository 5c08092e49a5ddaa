"""What validate reads of the earlier days it is given (a ``ValidationHistory``, never a lookup): which
users and items were seen before, the anomaly history's profiles, and the event ids accepted in the window."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from components.core.catalog import MANIFEST, Layout, quarantine_attempts, read_json
from components.core.config import ANOMALY_METRICS, PipelineConfig
from components.core.refs import ValidationHistory
from components.data.streaming import DayKeys, in_sorted, mark_seen, staged_chunks, text_keys
from components.data.validation_result import WARN

@dataclass(frozen=True)
class EarlierDays:
    """The days a ``ValidationHistory`` names, located once under the root (``Layout.partition`` checks
    each against its version): accepted partitions, and quarantined days with their attempts, oldest first."""

    accepted: tuple[tuple[str, Path], ...]
    quarantined: tuple[tuple[str, tuple[Path, ...]], ...]

    @classmethod
    def located(cls, layout: Layout, day: str, history: ValidationHistory) -> "EarlierDays":
        later = [r.day for r in (*history.accepted, *history.quarantined) if r.day >= day]
        if later:
            raise ValueError(f"validate {day}: the history must hold earlier days only, got {sorted(set(later))}")
        return cls(accepted=tuple((r.day, layout.partition(r)) for r in history.accepted),
                   quarantined=tuple((r.day, tuple(quarantine_attempts(layout.partition(r))))
                                     for r in history.quarantined))

    def accepted_since(self, start: str) -> list[tuple[str, Path]]:
        return [(d, path) for d, path in self.accepted if start <= d]

    def __bool__(self) -> bool:  # any earlier day at all: only then can a user or item be new
        return bool(self.accepted or self.quarantined)


def _present_keys(chunk: pd.DataFrame, column: str) -> np.ndarray:
    keys, present = text_keys(chunk[column])
    return keys[present]


def seen_before(earlier_days: EarlierDays, keys: DayKeys, chunk_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row: was its user / item seen on any earlier day, accepted or quarantined.

    Quarantined rows count as seen: the people behind a held day are not new the day after, so one
    bad day cannot make the following days look new (no cascade). Bounded: the day's own distinct
    keys, marked while earlier days stream past a chunk at a time (a 64-bit hash collision could
    count one new user as seen: ~1e-5 per 20 M-row day, in an anomaly share only)."""
    sources = [path / "events.parquet" for _, path in earlier_days.accepted]
    sources += [a / "rows.parquet" for _, attempts in earlier_days.quarantined for a in attempts
                if (a / "rows.parquet").exists()]
    marks = {}
    for column, ids, present in (("user_id", keys.user, keys.user_present), ("item_id", keys.item, keys.item_present)):
        unique = np.unique(ids[present])
        seen = np.zeros(unique.size, dtype=bool)
        for path in sources:
            if column in pq.read_schema(path).names:  # a quarantined day may lack the column
                mark_seen(unique, seen, (_present_keys(c, column) for c in staged_chunks(path, chunk_rows, [column])))
        marks[column] = present & in_sorted(unique[seen], ids)
    return marks["user_id"], marks["item_id"]


def profile_history(earlier_days: EarlierDays, day: str, cfg: PipelineConfig) -> tuple[list[tuple[str, dict[str, Any]]], int]:
    """Profiles of the days in the lookback, and how many of them were quarantined.

    A quarantined day broke the contract, yet its distribution may be perfectly normal (a broken
    timestamp column says nothing about who came): its metrics that were judged normal stay in the
    history, those that warned are left out. Dropping the whole day would shift every band and
    could flag a later borderline day because of it."""
    start = (dt.date.fromisoformat(day) - dt.timedelta(days=cfg.validation.anomaly_lookback_days)).isoformat()
    accepted = earlier_days.accepted_since(start)
    history = [(d, read_json(path / MANIFEST).get("profile")) for d, path in accepted]
    quarantined = 0
    for d, attempts in earlier_days.quarantined:
        if d < start or d in {a for a, _ in accepted}:
            continue
        records = sorted((a / "validation.json" for a in attempts if (a / "validation.json").exists()),
                         key=lambda p: p.stat().st_mtime)
        result = read_json(records[-1])["result"] if records else {}
        if not result.get("profile"):
            continue
        warned = {r["rule"] for r in result["rules"] if r["rule"] in ANOMALY_METRICS and r.get("severity") == WARN
                  and not r["success"] and not r.get("skipped")}
        mix_normal = "event_type_mix_shift" not in warned
        history.append((d, {k: v for k, v in result["profile"].items()
                            if k not in warned and (mix_normal or k != "event_type_mix")}))
        quarantined += 1
    return sorted((d, p) for d, p in history if p), quarantined


def earlier_event_ids(earlier_days: EarlierDays, day: str, keys: DayKeys, cfg: PipelineConfig
                       ) -> tuple[np.ndarray, pd.Series]:
    """(rows whose event id hash an earlier day of the window accepted, those earlier ids exactly):
    one chunk of an earlier day at a time against the day's own distinct ids, then only the hits
    re-read as text."""
    start = (dt.date.fromisoformat(day) - dt.timedelta(days=cfg.graph.window_days)).isoformat()
    paths = [path / "events.parquet" for _, path in earlier_days.accepted_since(start)]
    unique = np.unique(keys.event_id[keys.event_id_present])
    seen = np.zeros(unique.size, dtype=bool)
    chunk_rows = cfg.validation.chunk_rows
    for path in paths:
        mark_seen(unique, seen, (_present_keys(c, "event_id") for c in staged_chunks(path, chunk_rows, ["event_id"])))
    hits = unique[seen]
    exact = [c["event_id"][in_sorted(hits, text_keys(c["event_id"])[0]) & c["event_id"].notna().to_numpy()]
             for path in (paths if hits.size else []) for c in staged_chunks(path, chunk_rows, ["event_id"])]
    ids = pd.concat(exact, ignore_index=True) if exact else pd.Series([], dtype="string")
    return keys.event_id_present & in_sorted(hits, keys.event_id), ids
