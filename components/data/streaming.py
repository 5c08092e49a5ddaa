"""Bounded-memory passes over a staged day: chunks, compact per-row keys, a sorted chunked write.

A day of 20 M rows does not fit in memory as a pandas frame of Python strings (OOM at 8 GB, issue
20); what crosses chunks is kept as numpy arrays of 8-byte keys per row (hashes of ids and of an
event's content, its time), about 60 bytes a row whatever the ids' length. Hashes only pick
*candidates*: rows whose key occurs twice (or on an earlier day) are re-read and judged on their
exact values, so a hash collision can add a candidate, never merge two distinct ids.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

NAT_LAST = np.iinfo(np.int64).max  # a null time sorts last, as pandas' sort_values puts NaT
MIX = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant (golden ratio): multiply-xor mixing of keys


def staged_chunks(path: Path, chunk_rows: int, columns: list[str] | None = None) -> Iterator[pd.DataFrame]:
    """A parquet file in frames of at most ``chunk_rows`` rows, indexed by their position in the file
    (so a row keeps one label in every pass). An empty file yields one empty frame with its columns."""
    parquet = pq.ParquetFile(path)
    start = 0
    for batch in parquet.iter_batches(batch_size=chunk_rows, columns=columns):
        frame = pa.Table.from_batches([batch]).to_pandas()  # the table keeps pandas' dtypes (metadata)
        frame.index = pd.RangeIndex(start, start + len(frame))
        start += len(frame)
        yield frame
    if start == 0:
        schema = parquet.schema_arrow
        yield schema.empty_table().select(columns or schema.names).to_pandas()


def text_keys(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(uint64 hash, present) per value, from its text: the same id hashes alike whichever dtype
    (``string``, object) a file or day was read with."""
    present = values.notna().to_numpy()
    text = values.astype(object).where(present, "").to_numpy()
    return pd.util.hash_array(text, categorize=False), present


def time_keys(ts: pd.Series) -> np.ndarray:
    """int64 microseconds since the epoch (UTC), a null time as ``NAT_LAST``."""
    micros = ts.astype("datetime64[us, UTC]").to_numpy(dtype="datetime64[us]").astype(np.int64)
    return np.where(ts.isna().to_numpy(), NAT_LAST, micros)


def repeated(keys: np.ndarray, present: np.ndarray | None = None) -> np.ndarray:
    """Mask of the rows whose (present) key occurs more than once."""
    rows = np.flatnonzero(present) if present is not None else np.arange(keys.size)
    order = rows[np.argsort(keys[rows], kind="stable")]
    same = keys[order][1:] == keys[order][:-1]
    mask = np.zeros(keys.size, dtype=bool)
    mask[order[1:][same]] = True
    mask[order[:-1][same]] = True
    return mask


def in_sorted(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Mask of ``keys`` found in ``sorted_keys`` (sorted, unique)."""
    if sorted_keys.size == 0:
        return np.zeros(keys.size, dtype=bool)
    at = np.minimum(np.searchsorted(sorted_keys, keys), sorted_keys.size - 1)
    return sorted_keys[at] == keys


def mark_seen(sorted_keys: np.ndarray, seen: np.ndarray, chunks: Iterator[np.ndarray]) -> None:
    """Set ``seen[i]`` for each ``sorted_keys[i]`` that occurs in any chunk of keys (bounded: one
    chunk at a time against the day's own unique keys, never a set of every earlier key)."""
    for keys in chunks:
        hit = in_sorted(sorted_keys, keys)
        seen[np.searchsorted(sorted_keys, keys[hit])] = True


@dataclass(frozen=True)
class Tally:
    """Distinct values of a key and the most frequent one (ties: the first to occur in the day)."""

    distinct: int
    top_count: int
    top_position: int  # row of its first occurrence; -1 when there is no value


def tally(keys: np.ndarray, present: np.ndarray) -> Tally:
    rows = np.flatnonzero(present)
    if rows.size == 0:
        return Tally(0, 0, -1)
    unique, first, counts = np.unique(keys[rows], return_index=True, return_counts=True)
    best = np.flatnonzero(counts == counts.max())
    winner = best[np.argmin(first[best])]
    return Tally(int(unique.size), int(counts[winner]), int(rows[first[winner]]))


@dataclass
class DayKeys:
    """The compact per-row state of a staged day, filled chunk by chunk (arrays preallocated: 8 bytes
    per row and key, plus a byte per presence mask)."""

    rows: int
    event_id: np.ndarray = field(init=False)
    event_id_present: np.ndarray = field(init=False)
    content: np.ndarray = field(init=False)  # (user, item, ts, event_type): hashed together
    user: np.ndarray = field(init=False)
    user_present: np.ndarray = field(init=False)
    item: np.ndarray = field(init=False)
    item_present: np.ndarray = field(init=False)
    ts: np.ndarray = field(init=False)  # time_keys
    event_types: dict[str, int] = field(default_factory=dict)  # non-null type -> rows

    def __post_init__(self) -> None:
        for name in ("event_id", "content", "user", "item"):
            setattr(self, name, np.zeros(self.rows, dtype=np.uint64))
        for name in ("event_id_present", "user_present", "item_present"):
            setattr(self, name, np.zeros(self.rows, dtype=bool))
        self.ts = np.full(self.rows, NAT_LAST, dtype=np.int64)

    def add(self, chunk: pd.DataFrame) -> None:
        """Record one chunk (indexed by row position); columns it lacks stay absent."""
        at = slice(chunk.index.start, chunk.index.stop) if len(chunk) else slice(0, 0)
        for column, keys, present in (("event_id", self.event_id, self.event_id_present),
                                      ("user_id", self.user, self.user_present),
                                      ("item_id", self.item, self.item_present)):
            if column in chunk.columns:
                keys[at], present[at] = text_keys(chunk[column])
        if "ts" in chunk.columns:
            self.ts[at] = time_keys(chunk["ts"])
        if {"user_id", "item_id", "ts", "event_type"} <= set(chunk.columns):
            # The payload's keys mixed (numpy, no second pass over the text): equal payloads, equal keys.
            parts = [self.user[at], self.item[at], self.ts[at].view(np.uint64), text_keys(chunk["event_type"])[0]]
            content = np.zeros(len(chunk), dtype=np.uint64)
            for part in parts:
                content = (content ^ part) * MIX
            self.content[at] = content
        if "event_type" in chunk.columns:
            for name, count in chunk["event_type"].value_counts().items():
                self.event_types[str(name)] = self.event_types.get(str(name), 0) + int(count)

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, n).nbytes for n in ("event_id", "event_id_present", "content", "user",
                                                        "user_present", "item", "item_present", "ts"))


def write_in_order(chunks: Iterator[pd.DataFrame], rank: np.ndarray, chunk_rows: int, spill: Path,
                   outputs: dict[Path, Callable[[pd.DataFrame], pd.DataFrame]]) -> None:
    """Write the rows of ``chunks`` (frames indexed by day position) in the order of ``rank`` (each
    row's output position) to each output path as ``outputs[path](rows)``, one row group per
    ``chunk_rows``, in bounded memory: each chunk is spilled to the bucket of its ranks, then each
    bucket is sorted and appended. Same input, same bytes; no rows: an empty file with the columns."""
    spill.mkdir(parents=True)
    spilled: dict[int, pq.ParquetWriter] = {}
    empty = None
    try:
        for frame in chunks:
            empty = frame.iloc[:0] if empty is None else empty
            ranks = rank[frame.index.to_numpy()]
            bucket = ranks // chunk_rows
            for b in np.unique(bucket):
                table = pa.Table.from_pandas(frame[bucket == b].assign(_rank=ranks[bucket == b]), preserve_index=False)
                if b not in spilled:
                    spilled[b] = pq.ParquetWriter(spill / f"{b:06d}.parquet", table.schema)
                spilled[b].write_table(table.cast(spilled[b].schema))
    finally:
        for writer in spilled.values():
            writer.close()
    writers: dict[Path, pq.ParquetWriter] = {}
    try:
        for b in sorted(spilled):
            path = spill / f"{b:06d}.parquet"
            part = pd.read_parquet(path).sort_values("_rank").drop(columns="_rank").reset_index(drop=True)
            path.unlink()
            for out, select in outputs.items():
                table = pa.Table.from_pandas(select(part), preserve_index=False)
                if out not in writers:
                    writers[out] = pq.ParquetWriter(out, table.schema)
                writers[out].write_table(table.cast(writers[out].schema), row_group_size=chunk_rows)
    finally:
        for writer in writers.values():
            writer.close()
    for out, select in outputs.items():
        if out not in writers and empty is not None:
            select(empty.reset_index(drop=True)).to_parquet(out, index=False)
    shutil.rmtree(spill)
