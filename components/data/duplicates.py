"""Duplicate events within the day and across the window: an event id reused with another payload (a
contract violation), content copies under different ids (within tolerance, dropped), redeliveries of
events an earlier day accepted (dropped), and the deduplication that keeps every dropped row with its reason."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd

from components.core.config import PipelineConfig
from components.data.earlier_days import EarlierDays
from components.data.ingest import LINEAGE_COLUMNS
from components.data.streaming import DayKeys, staged_chunks
from components.data.validation_result import SAMPLE_ROWS, RuleResult

PAYLOAD = ("user_id", "item_id", "ts", "event_type")  # what an event says; its id only names it


def _payload(row: pd.Series) -> str:
    ts = row["ts"].strftime("%Y-%m-%dT%H:%M:%S%z") if pd.notna(row["ts"]) else None
    return f"{row['source_file']}:{row['source_row']} ({row['user_id']}, {row['item_id']}, {ts}, {row['event_type']})"


def payload_conflict_rule(rows: pd.DataFrame) -> RuleResult:
    """An event id reused with a different payload (user, item, ts or type): a contract violation,
    never a redelivery to deduplicate (keeping either copy would be a guess)."""
    distinct = rows.drop_duplicates(["event_id", *PAYLOAD])
    conflicting = distinct.loc[distinct["event_id"].duplicated(keep=False) & distinct["event_id"].notna(), "event_id"]
    ids = conflicting.unique()
    samples = []
    for event_id in ids[:SAMPLE_ROWS]:  # at most SAMPLE_ROWS examples, each naming both rows
        first, second = distinct[distinct["event_id"] == event_id].iloc[:2].to_dict("records")
        samples.append(f"event {event_id}: {_payload(first)} vs {_payload(second)}")
    return RuleResult("event_id_payload_conflict", "event_id", len(ids) == 0, unit="event ids",
                      unexpected_count=len(ids) or None, samples=tuple(samples),
                      observed=f"{int(rows['event_id'].isin(ids).sum())} rows" if len(ids) else None,
                      expected="a reused event_id repeats its event exactly (user, item, ts, event_type)")


def earlier_day_payload_rule(earlier_days: EarlierDays, day: str, rows: pd.DataFrame, window_days: int) -> RuleResult:
    """An event id accepted on an earlier day of the window, delivered again with another payload: the
    same contract violation as a reuse within the day (rule ``event_id_payload_conflict``, so the same
    severity setting). The same payload is a redelivery: passes, counted here, dropped by ``deduplicate``.
    Reads only the earlier rows whose id occurs today (a filter in the Parquet scan), never the window."""
    ids = rows["event_id"].dropna().unique().tolist()
    start = (dt.date.fromisoformat(day) - dt.timedelta(days=window_days)).isoformat()
    columns = ["event_id", *PAYLOAD, *LINEAGE_COLUMNS]
    earlier = [pd.read_parquet(path / "events.parquet", columns=columns,
                               filters=[("event_id", "in", ids)]).assign(accepted_day=d)
               for d, path in earlier_days.accepted_since(start)] if ids else []
    earlier = [frame for frame in earlier if len(frame)]
    expected = "an event id accepted on an earlier day repeats that event exactly (user, item, ts, event_type)"
    if not earlier:
        return RuleResult("event_id_payload_conflict", None, True, observed="0 rows redelivered from earlier days",
                          expected=expected)
    matched = rows[columns].merge(pd.concat(earlier, ignore_index=True), on="event_id", suffixes=("", "_earlier"))
    differs = np.zeros(len(matched), dtype=bool)
    for column in PAYLOAD:  # a null on either side counts as different
        differs |= ~matched[column].eq(matched[f"{column}_earlier"]).fillna(False).to_numpy(dtype=bool)
    conflicts = matched[differs]
    samples = tuple(f"event {c['event_id']}: {_payload(c)} vs {c['accepted_day']} "
                    f"{_payload(pd.Series({k: c[f'{k}_earlier'] for k in (*PAYLOAD, *LINEAGE_COLUMNS)}))}"
                    for _, c in conflicts.head(SAMPLE_ROWS).iterrows())
    redelivered = f"{int((~differs).sum())} rows redelivered from earlier days (same event: dropped as duplicates)"
    ids_in_conflict = conflicts["event_id"].nunique()
    return RuleResult("event_id_payload_conflict", None, ids_in_conflict == 0, unit="event ids of earlier days",
                      unexpected_count=ids_in_conflict or None, samples=samples,
                      observed=f"{len(conflicts)} rows; {redelivered}" if ids_in_conflict else redelivered,
                      expected=expected)


def deduplicate(rows: pd.DataFrame, earlier_ids: pd.Series) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(events, duplicates): the first row of each event id (by ts, file, row) that no earlier day
    accepted, then the first of each content (user, item, ts, type) under different event ids.
    ``duplicates`` keeps every dropped row with its ``duplicate_of`` reason: nothing is lost."""
    ordered = rows.sort_values(["ts", "source_file", "source_row"], kind="stable")
    seen_before = ordered["event_id"].isin(earlier_ids)
    id_copy = ordered["event_id"].duplicated(keep="first")
    kept = ordered[~id_copy & ~seen_before]
    content_copy = kept.duplicated(list(PAYLOAD), keep="first")
    reason = pd.Series("event_id", index=ordered.index)
    reason[seen_before & ~id_copy] = "event_id of an earlier day"
    reason[content_copy[content_copy].index] = "content"
    events = kept[~content_copy].copy()
    duplicates = ordered.drop(index=events.index)
    # By position: assigning a Series to an empty frame would adopt the Series' whole index.
    duplicates = duplicates.assign(duplicate_of=reason.loc[duplicates.index].to_numpy())
    return events, duplicates


def content_duplicate_rule(rows: pd.DataFrame, cfg: PipelineConfig, day_rows: int | None = None) -> RuleResult:
    """The same (user, item, ts, type) under different event ids: deduplicated up to the same
    tolerance as redelivered ids (``validation.max_duplicate_share``), beyond it the day stops.
    ``rows``: the day, or every row of it whose event id or content repeats (``day_rows`` in all)."""
    _, duplicates = deduplicate(rows, pd.Series([], dtype="string"))
    copies = duplicates[duplicates["duplicate_of"] == "content"]
    share = len(copies) / max(len(rows) if day_rows is None else day_rows, 1)
    samples = []
    for _, copy in copies.head(SAMPLE_ROWS).iterrows():  # examples only
        same = rows[list(PAYLOAD)].eq(copy[list(PAYLOAD)]).fillna(False).all(axis=1) & (rows["event_id"] != copy["event_id"])
        original = rows[same].sort_values(["ts", "source_file", "source_row"]).iloc[0]
        samples.append(f"{copy['source_file']}:{copy['source_row']} (event {copy['event_id']}) repeats "
                       f"{original['source_file']}:{original['source_row']} (event {original['event_id']}): "
                       f"{copy['user_id']}, {copy['item_id']}, {copy['ts']}, {copy['event_type']}")
    limit = cfg.validation.max_duplicate_share
    return RuleResult("content_duplicates", None, share <= limit, unexpected_count=len(copies) or None,
                      observed=round(share, 4), samples=tuple(samples),
                      expected=f"share <= {limit} (validation.max_duplicate_share); within it the copies are dropped")


def gather(path: Path, rows: np.ndarray, chunk_rows: int) -> pd.DataFrame:
    """The staged rows selected by the mask ``rows``, every column, indexed by their day position."""
    return pd.concat([c[rows[c.index.start:c.index.stop]] if len(c) else c for c in staged_chunks(path, chunk_rows)])


def duplicate_rules(earlier_days: EarlierDays, day: str, cfg: PipelineConfig, staged: Path, keys: DayKeys,
                    repeats: pd.DataFrame, earlier_rows: np.ndarray) -> list[RuleResult]:
    """Event ids reused within the day or from an earlier day with another payload, and content copies:
    judged exactly on the rows read back (``repeats``; ``earlier_rows``: rows whose id an earlier day accepted)."""
    hits = gather(staged, earlier_rows, cfg.validation.chunk_rows) if earlier_rows.any() else repeats.iloc[:0]
    return [payload_conflict_rule(repeats), earlier_day_payload_rule(earlier_days, day, hits, cfg.graph.window_days),
            content_duplicate_rule(repeats, cfg, day_rows=keys.rows)]
