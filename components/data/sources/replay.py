"""Replay a timestamped public dataset as daily landing partitions, so the pipeline can run on
real data day by day.

Understands MovieLens ``u.data`` (tab separated), ``ratings.dat`` (``::`` separated),
``ratings.csv`` (userId,movieId,rating,timestamp), RecBole atomic ``.inter`` files
(``user_id:token<TAB>item_id:token<TAB>rating:float<TAB>timestamp:float``), a packaged public log
by name (``ml-100k``, see components/data/sources/public_logs.py), and any CSV/TSV log as it ships, its
columns named (user, item, time and an optional event-type column with a value mapping, e.g. a
RetailRocket ``events.csv``: ``timestamp,visitorid,event,itemid`` with millisecond times and
``view/addtocart/transaction``). Ratings, where present and no event column is named, become event
types (5 -> purchase, 4 -> cart, 3 -> click, else view). Timestamps follow the contract's rules
(components/data/coercion.py): epoch s/ms/us/ns by magnitude or declared, or ISO 8601, one form per file.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.data.sources.synthetic import write_log

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplayResult:
    days: tuple[str, ...]
    rows: int
    landing_files: tuple[str, ...]


TIME_UNITS = ("auto", "s", "ms", "us", "ns", "iso")


def parse_type_map(text: str | None) -> dict[str, str]:
    """``"1=view,2=cart,3=purchase"`` -> {"1": "view", ...} (the CLI's --type-map)."""
    if not text:
        return {}
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    bad = [p[0] for p in pairs if len(p) != 2 or not p[0].strip() or not p[1].strip()]
    if bad:
        raise ValueError(f"--type-map: expected RAW=TYPE pairs separated by commas, got {bad!r} in {text!r}")
    return {raw.strip(): kind.strip() for raw, kind in pairs}


def _timestamps(path: Path, values: pd.Series, unit: str) -> pd.Series:
    """The contract's timestamp rules (components/data/coercion.py: one form per file, epoch unit by
    magnitude or declared); the first bad value raises naming its line, raw value and cause."""
    from components.data.coercion import ValueIssues, parse_timestamps

    epoch = values.astype("string").str.fullmatch(r"[+-]?\d+(\.\d+)?").fillna(False).to_numpy()
    if unit == "iso" and epoch.any():
        first = int(np.flatnonzero(epoch)[0])
        raise ValueError(f"{path}: line {first + 2}: timestamp {values.iloc[first]!r} is an epoch number; --time-unit iso expects ISO 8601")
    issues = ValueIssues()
    parsed, _ = parse_timestamps(values, "auto" if unit == "iso" else unit, issues)
    if issues.frames:
        first = pd.concat(issues.frames).sort_values("source_row").iloc[0]
        raise ValueError(f"{path}: line {int(first['source_row']) + 1}: timestamp {first['raw']!r}: {first['cause']}")
    missing = np.flatnonzero(values.isna().to_numpy())
    if missing.size:
        raise ValueError(f"{path}: line {int(missing[0]) + 2}: missing timestamp")
    return parsed


def read_timestamped(
    path: Path | str, user_col: str = "user", item_col: str = "item", ts_col: str = "timestamp",
    type_col: str | None = None, type_map: dict[str, str] | None = None, time_unit: str = "auto",
    sep: str | None = None,
) -> pd.DataFrame:
    """Read a dataset into columns user_id, item_id, ts (UTC), rating (NaN if absent) and, when
    ``type_col`` names the log's event column, event_type (its values mapped through ``type_map``;
    values the map does not name must already be contract types, else ValueError naming them).

    ``time_unit``: epoch s/ms/us/ns, iso, or auto (epoch unit by magnitude, ISO strings as such).
    ``sep``: the generic file's separator (default: tab for .tsv, else comma)."""
    from components.data.sources.public_logs import PUBLIC_LOGS, public_log

    if time_unit not in TIME_UNITS:
        raise ValueError(f"time unit {time_unit!r}; known: {', '.join(TIME_UNITS)}")
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
        # Ids stay text as they ship (an id column read as float would turn 13 into "13.0").
        raw = pd.read_csv(path, sep=sep or ("\t" if name.endswith(".tsv") else ","), dtype=str, keep_default_na=False,
                          na_values=[""])
        renames = {"userId": "user", "movieId": "item"}
        raw = raw.rename(columns={k: v for k, v in renames.items() if k in raw.columns and k not in (user_col, item_col)})
        raw = raw.rename(columns={user_col: "user", item_col: "item", ts_col: "timestamp",
                                  **({type_col: "event"} if type_col else {})})
        if "rating" in raw.columns:
            raw["rating"] = pd.to_numeric(raw["rating"], errors="coerce")
    wanted = ("user", "item", "timestamp", *(("event",) if type_col else ()))
    missing = [c for c in wanted if c not in raw.columns]
    if missing:
        asked = {"user": user_col, "item": item_col, "timestamp": ts_col, "event": type_col}
        raise ValueError(f"{path}: missing column(s) {[asked[c] if asked[c] not in ('user', 'item', 'timestamp') else c for c in missing]}; "
                         f"found {list(raw.columns)} (name them with --user-col/--item-col/--time-col/--type-col)")
    ts = _timestamps(path, raw["timestamp"], time_unit)
    rating = raw["rating"] if "rating" in raw.columns else pd.Series(np.nan, index=raw.index)
    frame = pd.DataFrame({"user_id": raw["user"].astype(str), "item_id": raw["item"].astype(str), "ts": ts, "rating": rating})
    if type_col:
        frame["event_type"] = _event_types(path, raw["event"].astype("string").str.strip(), type_map or {})
    return frame


def _event_types(path: Path, values: pd.Series, type_map: dict[str, str]) -> pd.Series:
    from components.core.config import DataConfig

    known = set(DataConfig().event_weights)
    wrong_targets = sorted(set(type_map.values()) - known)
    if wrong_targets:
        raise ValueError(f"--type-map maps to {wrong_targets}, not event types of the contract ({', '.join(sorted(known))})")
    mapped = values.map(type_map).fillna(values)
    unknown = ~mapped.isin(known)
    if unknown.any():
        counts = values[unknown].value_counts(dropna=False)
        first = int(np.flatnonzero(unknown.to_numpy())[0])
        raise ValueError(f"{path}: event type(s) {', '.join(f'{v!r} ({n} rows)' for v, n in counts.items())} are not "
                         f"contract types ({', '.join(sorted(known))}) and not in --type-map; first at line {first + 2}")
    return mapped.astype(str)


def to_events(frame: pd.DataFrame) -> pd.DataFrame:
    """Map rows to the interaction-log contract (stable event ids from the row's content). The
    log's own event type wins; else ratings map to types (5 purchase, 4 cart, 3 click, else view)."""
    if "event_type" in frame.columns:
        event_type = frame["event_type"].to_numpy()
    else:
        rating = frame["rating"].to_numpy(dtype=float)
        event_type = np.select([rating >= 5, rating >= 4, rating >= 3], ["purchase", "cart", "click"], "view")
    # Stable ids from the row's content (vectorized 64-bit hash of user, item, time and the log's own type).
    key = ["user_id", "item_id", "ts", *(["event_type"] if "event_type" in frame.columns else [])]
    hashed = pd.util.hash_pandas_object(frame[key], index=False).to_numpy()
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
    **options: Any,
) -> ReplayResult:
    """Split ``source`` into ``landing_root/date=YYYY-MM-DD/events.<fmt>`` partitions.

    ``shift_to`` moves the whole history so its first day lands on that date (keeps weekdays
    only if the shift is a multiple of 7 days; it is exact otherwise). Idempotent: a partition is
    rewritten with identical bytes. ``options``: read_timestamped's column names, type map, time unit.
    """
    frame = read_timestamped(source, **options)
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
