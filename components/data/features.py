"""Features stage: daily user/item snapshots into Feast's offline store, then into the online store.

Semantics (event time, as of the end of ``day`` D, UTC):
- A window of w days holds events with ``ts`` in [D - (w-1), D + 1) (midnight bounds): the 1-day
  window is the day itself. Events are read from the accepted partitions of the largest window plus
  two days, so late events (landing in a later partition than their ``ts``) count where their
  ``ts`` falls; clock-skewed events stamped after D's end wait for D + 1's snapshot.
- A snapshot row exists for every entity with an event in the largest window *plus one day*. The
  extra day is the entity's last snapshot, with every window count at zero: it overwrites the
  online values, which otherwise would keep the last non-zero counts forever (Feast's SQLite/Redis
  reads do not expire rows). ``days_since_last_event`` and ``item_age_days`` are whole days, capped
  at the largest window (the lookback: 28 means "none within it").
- ``event_timestamp`` is the instant D ends (D + 1 00:00 UTC): the snapshot is valid from then on,
  so point-in-time joins never see a day's values before the day is over. ``created_timestamp`` is
  when the row was computed.

Storage: ``<root>/features/repo`` is a copy of ``feature_repo/`` (feature_store.yaml + the one
definitions module, refreshed each run) with its data under ``repo/data``: one Parquet file per day
in ``user_features/`` and ``item_features/`` (the file offline store reads a directory as one
dataset, so re-running a day atomically replaces its file and never duplicates rows), the file
registry and the SQLite online store. Feast 0.67 resolves all three relative paths against the repo
directory (FileRegistryStore, SqliteOnlineStore._get_db_path, FileSource.get_uri_for_file_path), so
the same files work for a person's ``feast apply`` in any copy.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import importlib.util
import io
import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from components.core.config import REPO_ROOT, PipelineConfig
from components.core.catalog import Layout, atomic_write_bytes, parse_day, write_json
from components.core.refs import AcceptedRef

log = logging.getLogger(__name__)

FEATURE_REPO = REPO_ROOT / "feature_repo"
DEFINITIONS_MODULE = "graphdistill_features.py"
REPO_FILES = ("feature_store.yaml", DEFINITIONS_MODULE, ".gitignore")
USER_VIEW, ITEM_VIEW = "user_activity", "item_popularity"
USER_DIR, ITEM_DIR = "data/user_features", "data/item_features"
# Late events may sit in a partition up to late_tolerance_hours (<= 48 h) after their ts.
LATE_PARTITION_DAYS = 2
EVENT_COLUMNS = ["user_id", "item_id", "ts", "weight"]
TS_TYPE = pa.timestamp("us", tz="UTC")
REGISTRY_STORE = "components.data.feast_registry.AtomicFileRegistryStore"


@dataclass(frozen=True)
class FeatureResult:
    """What the features stage did for ``day`` (JSON-serializable via ``dataclasses.asdict``).

    users / items: snapshot rows written for the day. user_features_path / item_features_path: the
    day's offline Parquet files. repo_path: the Feast repo the pipeline runs (``FeatureStore(repo_path)``).
    feature_views: views applied and materialized. materialize_mode: "first" (nothing materialized
    before: [D end - ttl, D end]), "incremental" (materialize_incremental to D's end) or "rerun"
    (D at or before the last materialized end: [D end, last end] explicitly, so online keeps the
    newest values). materialized_rows: entity rows per view in the materialized interval.
    online_store: "sqlite" or "redis". accepted_days_used: partitions read. With day, ``version`` (a
    hash of the accepted versions read and the features config) and ``path`` (this run's record,
    features/runs/<day>.json) it is a FeaturesRef.
    """

    day: str
    version: str
    path: str
    users: int
    items: int
    user_features_path: str
    item_features_path: str
    repo_path: str
    feature_views: tuple[str, ...]
    materialize_mode: str
    materialized_start: str
    materialized_end: str
    materialized_rows: dict[str, int]
    online_store: str
    accepted_days_used: tuple[str, ...]


# --- pure feature computation -------------------------------------------------------------------


def day_end(day: str | dt.date) -> pd.Timestamp:
    """The instant ``day`` ends: the next midnight, UTC (the snapshot's event_timestamp)."""
    return pd.Timestamp(parse_day(day), tz="UTC") + pd.Timedelta(days=1)


def _median_window(windows: tuple[int, ...]) -> int:
    # weighted_* and distinct_users_* use the week-scale window: the median of the configured ones.
    ordered = sorted(windows)
    return ordered[len(ordered) // 2]


def _lookback(events: pd.DataFrame, day: str, windows: tuple[int, ...]) -> pd.DataFrame:
    """Events of the largest window plus one day, with ``age`` = whole days before D's end."""
    if not windows or min(windows) < 1:
        raise ValueError(f"windows_days must be positive day counts, got {windows}")
    missing = [c for c in EVENT_COLUMNS if c not in events.columns]
    if missing:
        raise ValueError(f"events lack columns {missing}; got {list(events.columns)}")
    end = day_end(day)
    horizon = max(windows) + 1
    ts = pd.to_datetime(events["ts"], utc=True)
    keep = (ts >= end - pd.Timedelta(days=horizon)) & (ts < end)
    recent = events.loc[keep, EVENT_COLUMNS].copy()
    # Calendar days before D (0 = D itself); from the floored date, so 00:00 on D is still age 0.
    recent["age"] = ((end - pd.Timedelta(days=1) - ts[keep].dt.floor("D")) // pd.Timedelta(days=1)).astype("int64")
    return recent


def _stamp(frame: pd.DataFrame, day: str, created_at: pd.Timestamp | None) -> pd.DataFrame:
    frame["event_timestamp"] = day_end(day)
    frame["created_timestamp"] = created_at if created_at is not None else pd.Timestamp.now(tz="UTC")
    for column in ("event_timestamp", "created_timestamp"):
        frame[column] = frame[column].astype("datetime64[us, UTC]")
    return frame


def _window_counts(recent: pd.DataFrame, key: str, windows: tuple[int, ...]) -> pd.DataFrame:
    flags = pd.DataFrame({f"events_{w}d": (recent["age"] < w).astype("int64") for w in sorted(windows)})
    flags[key] = recent[key].to_numpy()
    return flags.groupby(key, sort=True).sum()


def _distinct_within(recent: pd.DataFrame, key: str, other: str, window: int) -> pd.Series:
    pairs = recent.loc[recent["age"] < window, [key, other]].drop_duplicates()
    return pairs.groupby(key).size()


def _recent_items(recent: pd.DataFrame, users: pd.Index, window: int, limit: int) -> pd.Series:
    """Per user (in ``users`` order): up to ``limit`` distinct items of the last ``window`` days,
    most recent first (ties by item id), as lists built in one Arrow ListArray (no per-user loop)."""
    within = recent.loc[recent["age"] < window, ["user_id", "item_id", "ts"]]
    ordered = within.sort_values(["user_id", "ts", "item_id"], ascending=[True, False, True], kind="stable")
    ordered = ordered.drop_duplicates(["user_id", "item_id"], keep="first")
    kept = ordered[ordered.groupby("user_id", sort=False).cumcount().to_numpy() < limit]
    counts = kept.groupby("user_id", sort=True).size()
    per_user = np.zeros(len(users), dtype=np.int32)
    # Both sides are sorted by user_id, so kept's rows are already in the users' order.
    per_user[users.get_indexer(counts.index)] = counts.to_numpy()
    offsets = np.concatenate([[0], np.cumsum(per_user)]).astype(np.int32)
    lists = pa.ListArray.from_arrays(pa.array(offsets), pa.array(kept["item_id"].astype(str).to_numpy()))
    return pd.Series(lists.to_pandas().to_numpy(), index=users)


def compute_user_features(
    events: pd.DataFrame, day: str, windows: tuple[int, ...], created_at: pd.Timestamp | None = None,
    recent_items: int = 50,
) -> pd.DataFrame:
    """User snapshot as of the end of ``day``: one row per user active in the largest window + 1 day.

    Columns: user_id, events_{w}d per window, weighted_{median w}d, distinct_items_{max w}d,
    days_since_last_event (capped at max w), recent_items (up to ``recent_items`` distinct item ids
    of the largest window, most recent first: what serving excludes and folds cold users in from),
    event_timestamp, created_timestamp.
    """
    recent = _lookback(events, day, windows)
    mid, top = _median_window(windows), max(windows)
    users = _window_counts(recent, "user_id", windows)
    weighted = (recent["weight"] * (recent["age"] < mid)).groupby(recent["user_id"]).sum()
    users[f"weighted_{mid}d"] = weighted.reindex(users.index).astype("float64")
    distinct = _distinct_within(recent, "user_id", "item_id", top)
    users[f"distinct_items_{top}d"] = distinct.reindex(users.index, fill_value=0).astype("int64")
    users["days_since_last_event"] = recent.groupby("user_id")["age"].min().clip(upper=top).astype("int64")
    users["recent_items"] = _recent_items(recent, users.index, top, recent_items)
    return _stamp(users.reset_index(), day, created_at)


def compute_item_features(
    events: pd.DataFrame, day: str, windows: tuple[int, ...], created_at: pd.Timestamp | None = None
) -> pd.DataFrame:
    """Item snapshot as of the end of ``day``: one row per item with an event in the largest window + 1 day.

    Columns: item_id, events_{w}d per window, distinct_users_{median w}d, item_age_days (days since
    its first event in the lookback, capped at max w), event_timestamp, created_timestamp.
    """
    recent = _lookback(events, day, windows)
    mid, top = _median_window(windows), max(windows)
    items = _window_counts(recent, "item_id", windows)
    distinct = _distinct_within(recent, "item_id", "user_id", mid)
    items[f"distinct_users_{mid}d"] = distinct.reindex(items.index, fill_value=0).astype("int64")
    items["item_age_days"] = recent.groupby("item_id")["age"].max().clip(upper=top).astype("int64")
    return _stamp(items.reset_index(), day, created_at)


# --- Feast repo ---------------------------------------------------------------------------------


def feature_repo_path(layout: Layout) -> Path:
    return layout.features() / "repo"


def sync_feature_repo(layout: Layout, source: Path = FEATURE_REPO) -> Path:
    """Copy the definitions and feature_store.yaml into the pipeline's repo; its data/ is kept."""
    repo = feature_repo_path(layout)
    for name in REPO_FILES:
        if not (source / name).exists():
            raise FileNotFoundError(f"feature repo file {source / name} is missing")
        atomic_write_bytes(repo / name, (source / name).read_bytes())
    # A stale module left from an older layout would also be imported by `feast apply`.
    for stray in set(p.name for p in repo.glob("*.py")) - set(REPO_FILES):
        (repo / stray).unlink()
    shutil.rmtree(repo / "__pycache__", ignore_errors=True)
    return repo


def repo_config_data(repo: Path, cfg: PipelineConfig) -> dict[str, Any]:
    """feature_store.yaml as a mapping, with the online store and the registry chosen by
    ``cfg.features`` (a file registry is written atomically: components.data.feast_registry)."""
    import yaml

    data = yaml.safe_load((repo / "feature_store.yaml").read_text())
    if cfg.features.registry_store == "sql":
        # No cache: a worker that applies and one that serves read the same rows (the stack's Postgres).
        data["registry"] = {"registry_type": "sql", "path": cfg.features.registry_url, "cache_ttl_seconds": 0,
                            "sqlalchemy_config_kwargs": {"pool_pre_ping": True}}
    else:
        data["registry"] = {"registry_type": "file", "path": data["registry"], "registry_store_type": REGISTRY_STORE}
    if cfg.features.online_store == "redis":
        data["online_store"] = {"type": "redis", "connection_string": cfg.features.redis_connection_string}
    return data


def open_store(layout: Layout, cfg: PipelineConfig):
    """The pipeline's FeatureStore; ``repo_path`` is set so relative paths resolve against the repo."""
    from feast import FeatureStore, RepoConfig

    repo = feature_repo_path(layout)
    if not (repo / "feature_store.yaml").exists():
        raise FileNotFoundError(f"no Feast repo at {repo}: run the features stage first")
    config = RepoConfig(repo_path=repo, **repo_config_data(repo, cfg))
    return FeatureStore(repo_path=str(repo), config=config)


def load_definitions(repo: Path) -> list[Any]:
    """The Feast objects (entities, data sources, feature views) the repo's module defines."""
    from feast import Entity, FeatureView
    from feast.data_source import DataSource

    spec = importlib.util.spec_from_file_location("graphdistill_feature_repo", repo / DEFINITIONS_MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    kinds = (Entity, DataSource, FeatureView)
    return [obj for obj in vars(module).values() if isinstance(obj, kinds)]


def _columns(view) -> list:
    # FeatureView.schema is a set (unordered); entity columns then features keeps file order stable.
    return [*view.entity_columns, *view.features]


def _check_schema(view, snapshot: pd.DataFrame, cfg: PipelineConfig) -> None:
    declared = {f.name for f in _columns(view)}
    computed = set(snapshot.columns) - {"event_timestamp", "created_timestamp"}
    if declared != computed:
        raise ValueError(
            f"feature view {view.name!r} declares {sorted(declared)} but windows_days="
            f"{cfg.features.windows_days} computes {sorted(computed)}; update feature_repo/{DEFINITIONS_MODULE}"
        )


# --- stage --------------------------------------------------------------------------------------


def lookback_days(day: str, windows: tuple[int, ...]) -> tuple[str, str]:
    """The first and last day whose accepted partitions the snapshot of ``day`` reads."""
    first = parse_day(day) - dt.timedelta(days=max(windows) + 1 + LATE_PARTITION_DAYS)
    return first.isoformat(), day


def _read_accepted(layout: Layout, partitions: list[AcceptedRef]) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(layout.partition(ref) / "events.parquet", columns=EVENT_COLUMNS)
                      for ref in partitions], ignore_index=True)


def _write_snapshot(directory: Path, day: str, snapshot: pd.DataFrame, view) -> Path:
    """Atomically (re)write the day's file with the view's Arrow types (all files share one schema)."""
    types = {"String": pa.string(), "Int64": pa.int64(), "Float64": pa.float64(),
             "Array(String)": pa.list_(pa.string())}
    fields = [pa.field(f.name, types[str(f.dtype)]) for f in _columns(view)]
    fields += [pa.field("event_timestamp", TS_TYPE), pa.field("created_timestamp", TS_TYPE)]
    schema = pa.schema(fields)
    table = pa.Table.from_pandas(snapshot[schema.names], schema=schema, preserve_index=False)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    # The temporary name starts with "." so dataset readers (pyarrow, dask) skip it.
    path = directory / f"{day}.parquet"
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _count_in_interval(directory: Path, key: str, start: pd.Timestamp, end: pd.Timestamp) -> int:
    table = pq.read_table(directory, columns=[key, "event_timestamp"])
    ts = table.column("event_timestamp").to_pandas()
    within = (ts >= start) & (ts <= end)  # Feast's file store filters inclusive on both ends
    return int(table.column(key).to_pandas()[within.to_numpy()].nunique())


def _materialize(store, views: list, end: pd.Timestamp) -> tuple[str, pd.Timestamp, pd.Timestamp]:
    """Bring the online store up to ``end`` (see FeatureResult.materialize_mode)."""
    names = [v.name for v in views]
    current = [store.get_feature_view(n) for n in names]
    last = [v.most_recent_end_time for v in current]
    end_dt = end.to_pydatetime()
    if any(t is None for t in last):
        # materialize_incremental would start at now - ttl: wrong for any backfilled or past day.
        start = end - pd.Timedelta(max(v.ttl for v in current))
        store.materialize(start.to_pydatetime(), end_dt, feature_views=names)
        return "first", start, end
    newest = pd.Timestamp(max(last)).tz_convert("UTC")
    if end > newest:
        store.materialize_incremental(end_dt, feature_views=names)
        return "incremental", pd.Timestamp(min(last)).tz_convert("UTC"), end
    # Re-run or backfill: this day's rows and every later snapshot in one pass; Feast keeps the
    # newest row per entity, so online values stay those of the latest materialized day.
    store.materialize(end_dt, newest.to_pydatetime(), feature_views=names)
    return "rerun", end, newest


def run_features(layout: Layout, day: str, cfg: PipelineConfig, accepted: AcceptedRef,
                 window: tuple[AcceptedRef, ...]) -> FeatureResult:
    """Compute the snapshots of the accepted day ``accepted`` from it and the earlier accepted days of its
    lookback (``window``: ``lookback_days``, chosen by the caller), write them offline, apply the Feast repo,
    materialize online."""
    day = parse_day(day).isoformat()
    if accepted.day != day or any(not ref.day < day for ref in window):
        raise ValueError(f"features {day}: given accepted {accepted.day} and window {[r.day for r in window]} "
                         f"(expected {day} and earlier days)")
    windows = tuple(cfg.features.windows_days)
    partitions = [*window, accepted]
    events, used = _read_accepted(layout, partitions), [ref.day for ref in partitions]
    created_at = pd.Timestamp.now(tz="UTC")
    users = compute_user_features(events, day, windows, created_at, cfg.features.recent_items)
    items = compute_item_features(events, day, windows, created_at)

    repo = sync_feature_repo(layout)
    definitions = load_definitions(repo)
    views = {getattr(o, "name", None): o for o in definitions}
    user_view, item_view = views[USER_VIEW], views[ITEM_VIEW]
    _check_schema(user_view, users, cfg)
    _check_schema(item_view, items, cfg)
    user_path = _write_snapshot(repo / USER_DIR, day, users, user_view)
    item_path = _write_snapshot(repo / ITEM_DIR, day, items, item_view)
    log.info("features %s: %d users, %d items from %d accepted days (%d events)",
             day, len(users), len(items), len(used), len(events))

    store = open_store(layout, cfg)
    store.apply(definitions)
    mode, start, end = _materialize(store, [user_view, item_view], day_end(day))
    materialized = {
        USER_VIEW: _count_in_interval(repo / USER_DIR, "user_id", start, end),
        ITEM_VIEW: _count_in_interval(repo / ITEM_DIR, "item_id", start, end),
    }
    log.info("features %s: materialized (%s) %s..%s into %s: %s", day, mode, start, end,
             cfg.features.online_store, materialized)
    inputs = [ref.as_dict() for ref in partitions]
    config_hash = cfg.config_hash("features")
    record = layout.features() / "runs" / f"{day}.json"
    result = FeatureResult(
        day=day, version=hashlib.sha256(json.dumps([inputs, config_hash], sort_keys=True).encode()).hexdigest()[:12],
        path=str(record), users=len(users), items=len(items),
        user_features_path=str(user_path), item_features_path=str(item_path), repo_path=str(repo),
        feature_views=(USER_VIEW, ITEM_VIEW), materialize_mode=mode,
        materialized_start=start.isoformat(), materialized_end=end.isoformat(),
        materialized_rows=materialized, online_store=cfg.features.online_store,
        accepted_days_used=tuple(used),
    )
    write_json(record, {"result": asdict(result), "config_hash": config_hash, "inputs": inputs})
    return result


# --- serving reads ------------------------------------------------------------------------------

RECENT_ITEMS = "recent_items"


def read_recent_items(store, user_ids: Sequence[str]) -> list[list[str]]:
    """``user_activity:recent_items`` per user from the online store ([] for users without a row)."""
    if not user_ids:
        return []
    values = store.get_online_features(features=[f"{USER_VIEW}:{RECENT_ITEMS}"],
                                       entity_rows={"user_id": [str(u) for u in user_ids]}).to_dict()[RECENT_ITEMS]
    return [list(v) if v is not None else [] for v in values]


def online_history(layout: Layout, cfg: PipelineConfig) -> Callable[[Sequence[str]], list[list[str]]]:
    """What serving knows of users right now: their recent items in the Feast online store."""
    return functools.partial(read_recent_items, open_store(layout, cfg))


def recent_items_as_of(
    layout: Layout, cfg: PipelineConfig, user_ids: Sequence[str], as_of: pd.Timestamp
) -> list[list[str]]:
    """The recent items the online store held at ``as_of``, through Feast's point-in-time join on
    the offline snapshots: evaluating day D "as served" reads them as of D's start (the snapshot
    of D - 1), never D's own events, which the online store already holds when D is evaluated."""
    if not user_ids:
        return []
    store = open_store(layout, cfg)
    entities = pd.DataFrame({"user_id": [str(u) for u in user_ids],
                             "event_timestamp": pd.Timestamp(as_of).tz_convert("UTC")})
    frame = store.get_historical_features(entity_df=entities,
                                          features=[f"{USER_VIEW}:{RECENT_ITEMS}"]).to_df()
    # The join may reorder rows; map back by user id (entity rows are one per user).
    lists = dict(zip(frame["user_id"], frame[RECENT_ITEMS]))
    return [list(v) if isinstance(v, (list, np.ndarray)) else [] for v in (lists.get(str(u)) for u in user_ids)]
