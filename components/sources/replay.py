"""Replay a timestamped public dataset as daily landing partitions, so the pipeline can run on
real data day by day.

Understands MovieLens ``u.data`` (tab separated), ``ratings.dat`` (``::`` separated),
``ratings.csv`` (userId,movieId,rating,timestamp), RecBole atomic ``.inter`` files
(``user_id:token<TAB>item_id:token<TAB>rating:float<TAB>timestamp:float``), a packaged public log
by name (``ml-100k``, see components/sources/public_logs.py), and any CSV with user, item and
timestamp columns (names given). Ratings, where present, become event types (5 -> purchase, 4 -> cart,
3 -> click, else view). Timestamps are epoch seconds or ISO strings.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from components.sources.synthetic import write_log

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplayResult:
    days: tuple[str, ...]
    rows: int
    landing_files: tuple[str, ...]


def read_timestamped(
    path: Path | str, user_col: str = "user", item_col: str = "item", ts_col: str = "timestamp"
) -> pd.DataFrame:
    """Read a dataset into columns user_id, item_id, ts (UTC), rating (NaN if absent)."""
    from components.sources.public_logs import PUBLIC_LOGS, public_log

    path = public_log(str(path)) if str(path) in PUBLIC_LOGS else Path(path)
    name = path.name.lower()
    if name.endswith(".inter"):
        raw = pd.read_csv(path, sep="\t")
        raw.columns = [c.split(":", 1)[0] for c in raw.columns]
        raw = raw.rename(columns={"user_id": "user", "item_id": "item"})
    elif name == "u.data":
        raw = pd.read_csv(path, sep="\t", names=["user", "item", "rating", "timestamp"])
    elif name.endswith(".dat"):
        raw = pd.read_csv(path, sep="::", engine="python", names=["user", "item", "rating", "timestamp"])
    else:
        raw = pd.read_csv(path)
        renames = {"userId": "user", "movieId": "item"}
        raw = raw.rename(columns={k: v for k, v in renames.items() if k in raw.columns})
        raw = raw.rename(columns={user_col: "user", item_col: "item", ts_col: "timestamp"})
    missing = [c for c in ("user", "item", "timestamp") if c not in raw.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {list(raw.columns)}")
    ts_raw = raw["timestamp"]
    ts = (
        pd.to_datetime(ts_raw, unit="s", utc=True)
        if pd.api.types.is_numeric_dtype(ts_raw)
        else pd.to_datetime(ts_raw, utc=True, errors="coerce")
    )
    bad = ts.isna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0]) + 2  # header line + 1-based
        raise ValueError(f"{path}: row {row}: unparsable timestamp {ts_raw[bad].iloc[0]!r}")
    rating = raw["rating"] if "rating" in raw.columns else pd.Series(np.nan, index=raw.index)
    return pd.DataFrame(
        {"user_id": raw["user"].astype(str), "item_id": raw["item"].astype(str), "ts": ts, "rating": rating}
    )


def to_events(frame: pd.DataFrame) -> pd.DataFrame:
    """Map rows to the interaction-log contract (stable event ids from the row's content)."""
    rating = frame["rating"].to_numpy(dtype=float)
    event_type = np.select([rating >= 5, rating >= 4, rating >= 3], ["purchase", "cart", "click"], "view")
    # Stable ids from the row's content (vectorized 64-bit hash of user, item and time).
    hashed = pd.util.hash_pandas_object(frame[["user_id", "item_id", "ts"]], index=False).to_numpy()
    event_id = np.char.add("r", np.char.zfill(hashed.astype(str), 20))
    return pd.DataFrame(
        {"event_id": event_id, "user_id": frame["user_id"], "item_id": frame["item_id"],
         "event_type": event_type, "ts": frame["ts"]}
    )


def replay(
    source: Path | str,
    landing_root: Path,
    shift_to: dt.date | None = None,
    max_days: int | None = None,
    fmt: str = "parquet",
    **columns: str,
) -> ReplayResult:
    """Split ``source`` into ``landing_root/date=YYYY-MM-DD/events.<fmt>`` partitions.

    ``shift_to`` moves the whole history so its first day lands on that date (keeps weekdays
    only if the shift is a multiple of 7 days; it is exact otherwise). Idempotent: a partition is
    rewritten with identical bytes.
    """
    frame = read_timestamped(source, **columns)
    if shift_to is not None:
        first = frame["ts"].min().normalize()
        frame["ts"] = frame["ts"] + (pd.Timestamp(shift_to, tz="UTC") - first)
    events = to_events(frame).sort_values(["ts", "event_id"], kind="stable")
    day = events["ts"].dt.strftime("%Y-%m-%d")
    days = sorted(day.unique())[: max_days or None]
    files = []
    for d in days:  # one write per day: the loop is over partitions, not rows
        part = events[day == d].reset_index(drop=True)
        files.append(str(write_log(part, Path(landing_root) / f"date={d}" / f"events.{fmt}")))
    log.info("replayed %s: %d rows into %d daily partitions (%s .. %s)", source, len(events), len(days),
             days[0] if days else "-", days[-1] if days else "-")
    return ReplayResult(days=tuple(days), rows=int((day.isin(days)).sum()), landing_files=tuple(files))
