"""Features stage: snapshot values, offline Parquet, Feast apply/materialize, online reads through Feast.

One module-scoped pipeline run (days D1..D3, then a re-run of D3 and a backfill of D2) feeds the
Feast tests, because each Feast call costs seconds. Expected values are recomputed here from the
event rows with calendar dates, independently of components.data.features' age arithmetic.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from components.core.config import PipelineConfig
from components.data.features import (
    compute_item_features,
    compute_user_features,
    repo_config_data,
    run_features,
    sync_feature_repo,
)
from components.core.catalog import Layout, write_json
from tests.unit.data_fixtures import current_inputs, read_online_features

# dask (under Feast's file offline store) warns about a pandas downcast it does internally.
pytestmark = pytest.mark.filterwarnings("ignore:Downcasting object dtype arrays:FutureWarning")

D1, D2, D3 = "2024-03-01", "2024-03-02", "2024-03-03"
OLD = "2024-02-03"  # 27 days before D1: in D1's 28-day window, D2's extra (zero) day, gone by D3
WINDOWS = (1, 7, 28)
WEIGHTS = {"view": 1.0, "click": 2.0, "cart": 3.0, "purchase": 5.0}
USER_FEATURES = ["events_1d", "events_7d", "events_28d", "weighted_7d", "distinct_items_28d", "days_since_last_event"]
ITEM_FEATURES = ["events_1d", "events_7d", "events_28d", "distinct_users_7d", "item_age_days"]

# (partition day, user, item, event_type, ts): u2 is active on D1 only; "late" rows land a day after
# their ts; the clock-skewed row in D3's partition is stamped after D3 ends.
ROWS = [
    (OLD, "u_old", "i_old", "purchase", "2024-02-03T12:00"),
    (OLD, "u1", "i1", "view", "2024-02-03T13:00"),
    (D1, "u1", "i1", "view", "2024-03-01T08:00"),
    (D1, "u1", "i2", "click", "2024-03-01T09:30"),
    (D1, "u2", "i1", "purchase", "2024-03-01T10:00"),
    (D1, "u2", "i3", "cart", "2024-03-01T23:59"),
    (D1, "u3", "i2", "view", "2024-03-01T00:00"),
    (D2, "u1", "i1", "click", "2024-03-02T07:00"),
    (D2, "u3", "i3", "view", "2024-03-01T22:00"),  # late: counts on D1 by event time
    (D2, "u3", "i2", "purchase", "2024-03-02T18:00"),
    (D2, "u4", "i4", "view", "2024-03-02T12:00"),
    (D3, "u1", "i4", "cart", "2024-03-03T01:00"),
    (D3, "u3", "i1", "view", "2024-03-03T05:00"),
    (D3, "u4", "i4", "click", "2024-03-03T23:00"),
    (D3, "u5", "i5", "view", "2024-03-04T01:00"),  # clock skew: after D3 ends, not in D3's snapshot
]


def event_frame(rows=ROWS) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["partition", "user_id", "item_id", "event_type", "ts"])
    frame["ts"] = pd.to_datetime(frame["ts"]).dt.tz_localize("UTC").astype("datetime64[us, UTC]")
    frame["event_id"] = [f"e{i}" for i in range(len(frame))]
    frame["weight"] = frame["event_type"].map(WEIGHTS).astype("float64")
    frame["late"] = frame["ts"].dt.strftime("%Y-%m-%d") != frame["partition"]
    return frame


def write_accepted(layout: Layout, days: list[str]) -> None:
    """Accepted partitions in the validate stage's contract (events.parquet + manifest.json)."""
    events = event_frame()
    columns = ["event_id", "user_id", "item_id", "event_type", "ts", "weight", "late"]
    for day in days:
        part = layout.accepted(day)
        part.mkdir(parents=True, exist_ok=True)
        rows = events.loc[events["partition"] == day, columns].reset_index(drop=True)
        rows = rows.astype({c: "string" for c in ("event_id", "user_id", "item_id", "event_type")})
        rows.to_parquet(part / "events.parquet", index=False)
        write_json(part / "manifest.json", {"day": day, "rows_accepted": len(rows)})


def _lookback(day: str, visible: list[str]):
    """(day, events of the visible partitions dated within 28 days up to day, their dates)."""
    events = event_frame()
    events = events[events["partition"].isin(visible)]
    d = dt.date.fromisoformat(day)
    date = events["ts"].dt.date
    events = events[(date <= d) & (date >= d - dt.timedelta(days=28))]
    return d, events, events["ts"].dt.date


def expected_users(day: str, visible: list[str]) -> pd.DataFrame:
    """Recompute user features with calendar dates: window w holds event dates in [D-w+1, D]."""
    d, events, date = _lookback(day, visible)
    rows = {}
    for user, group in events.groupby("user_id"):
        gdate = date[group.index]
        def within(w, g=group, gd=gdate):
            return g[gd >= d - dt.timedelta(days=w - 1)]
        rows[user] = {
            "events_1d": len(within(1)), "events_7d": len(within(7)), "events_28d": len(within(28)),
            "weighted_7d": float(within(7)["weight"].sum()),
            "distinct_items_28d": within(28)["item_id"].nunique(),
            "days_since_last_event": min((d - gdate.max()).days, 28),
            "recent_items": list(dict.fromkeys(within(28).sort_values(["ts", "item_id"], ascending=[False, True])["item_id"])),
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def expected_items(day: str, visible: list[str]) -> pd.DataFrame:
    d, events, date = _lookback(day, visible)
    rows = {}
    for item, group in events.groupby("item_id"):
        gdate = date[group.index]
        def within(w, g=group, gd=gdate):
            return g[gd >= d - dt.timedelta(days=w - 1)]
        rows[item] = {
            "events_1d": len(within(1)), "events_7d": len(within(7)), "events_28d": len(within(28)),
            "distinct_users_7d": within(7)["user_id"].nunique(),
            "item_age_days": min((d - gdate.min()).days, 28),
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def assert_frame_values(actual: pd.DataFrame, expected: pd.DataFrame, key: str, columns: list[str]) -> None:
    got = actual.set_index(key).loc[expected.index]
    if "recent_items" in expected:
        assert [list(v) for v in got["recent_items"]] == expected["recent_items"].tolist()
    for column in columns:
        np.testing.assert_array_equal(got[column].to_numpy(dtype="float64"),
                                      expected[column].to_numpy(dtype="float64"), err_msg=column)


# --- pure computation (no Feast) ----------------------------------------------------------------


def test_compute_features_match_calendar_recomputation():
    events = event_frame()
    for day, visible in ((D1, [OLD, D1]), (D2, [OLD, D1, D2]), (D3, [OLD, D1, D2, D3])):
        subset = events[events["partition"].isin(visible)]
        users = compute_user_features(subset, day, WINDOWS)
        items = compute_item_features(subset, day, WINDOWS)
        exp_u, exp_i = expected_users(day, visible), expected_items(day, visible)
        assert sorted(users["user_id"]) == sorted(exp_u.index), day
        assert sorted(items["item_id"]) == sorted(exp_i.index), day
        assert_frame_values(users, exp_u, "user_id", USER_FEATURES)
        assert_frame_values(items, exp_i, "item_id", ITEM_FEATURES)
        assert (users["event_timestamp"] == pd.Timestamp(day, tz="UTC") + pd.Timedelta(days=1)).all()

    d3 = compute_user_features(events, D3, WINDOWS).set_index("user_id")
    assert "u5" not in d3.index  # clock-skewed event waits for D3 + 1
    assert "u_old" not in d3.index  # 29 days idle: out of the lookback
    d2 = compute_user_features(events[events["partition"] <= D2], D2, WINDOWS).set_index("user_id")
    # u_old's last snapshot: every window at zero, days capped at 28
    assert d2.loc["u_old", ["events_1d", "events_7d", "events_28d", "distinct_items_28d"]].tolist() == [0, 0, 0, 0]
    assert d2.loc["u_old", "days_since_last_event"] == 28
    # u3's late row (D2 partition, ts on D1) counts on D1, not as a D2 event
    assert d2.loc["u3", "events_1d"] == 1 and d2.loc["u3", "events_7d"] == 3


def test_repo_config_selects_redis_from_config(tmp_path):
    repo = sync_feature_repo(Layout.at(tmp_path))
    sqlite = repo_config_data(repo, PipelineConfig())
    assert sqlite["online_store"] == {"type": "sqlite", "path": "data/online.db"}
    assert sqlite["registry"] == {"registry_type": "file", "path": "data/registry.db",
                                  "registry_store_type": "components.data.feast_registry.AtomicFileRegistryStore"}
    assert sqlite["entity_key_serialization_version"] == 3
    redis_cfg = PipelineConfig(features={"online_store": "redis", "redis_connection_string": "redis:6380,db=1"})
    redis = repo_config_data(repo, redis_cfg)
    assert redis["online_store"] == {"type": "redis", "connection_string": "redis:6380,db=1"}
    assert {k: v for k, v in redis.items() if k != "online_store"} == {
        k: v for k, v in sqlite.items() if k != "online_store"}
    url = "postgresql+psycopg2://postgres:pw@127.0.0.1:5433/feast_registry"
    sql = repo_config_data(repo, PipelineConfig(features={"registry_store": "sql", "registry_url": url}))
    assert sql["registry"] == {"registry_type": "sql", "path": url, "cache_ttl_seconds": 0,
                               "sqlalchemy_config_kwargs": {"pool_pre_ping": True}}
    with pytest.raises(ValueError, match="registry_store 'sql' needs registry_url"):
        PipelineConfig(features={"registry_store": "sql"})


# --- the stage through Feast --------------------------------------------------------------------

ALL_USERS = ["u1", "u2", "u3", "u4", "u5", "u_old", "nobody"]
ALL_ITEMS = ["i1", "i2", "i3", "i4", "i5", "i_old"]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    layout = Layout.at(root)
    cfg = PipelineConfig(root=str(root))
    write_accepted(layout, [OLD, D1, D2, D3])
    runs, online = {}, {}
    cwd = os.getcwd()
    for label, day in (("d1", D1), ("d2", D2), ("d3", D3), ("d3_again", D3), ("d2_backfill", D2)):
        runs[label] = run_features(layout, day, cfg, **current_inputs(layout, "features", day, cfg))
        online[label] = read_online_features(layout, cfg, ALL_USERS, ALL_ITEMS)
    assert os.getcwd() == cwd  # unlike `feast apply`'s code path, the stage never chdirs
    return layout, cfg, runs, online


def test_online_values_through_feast_match_recomputation(pipeline):
    layout, cfg, runs, online = pipeline
    visible = {"d1": [OLD, D1], "d2": [OLD, D1, D2], "d3": [OLD, D1, D2, D3]}
    for label, day in (("d1", D1), ("d2", D2), ("d3", D3)):
        users, items = online[label]
        exp_u, exp_i = expected_users(day, visible[label]), expected_items(day, visible[label])
        assert_frame_values(users, exp_u, "user_id", USER_FEATURES)
        assert_frame_values(items, exp_i, "item_id", ITEM_FEATURES)
        assert runs[label].users == len(exp_u) and runs[label].items == len(exp_i)
    assert [runs[k].materialize_mode for k in ("d1", "d2", "d3")] == ["first", "incremental", "incremental"]
    assert runs["d1"].materialized_rows == {"user_activity": 4, "item_popularity": 4}


def test_idle_entities_zero_then_keep_last_snapshot(pipeline):
    """A user idle today but active in the window reads zeros for the short windows; an entity
    leaving the lookback gets one all-zero snapshot (D2) which online keeps afterwards (D3), since
    Feast's online read does not expire rows. A never-seen key reads as missing (NaN)."""
    _, _, _, online = pipeline
    users_d2 = online["d2"][0].set_index("user_id")
    assert users_d2.loc["u2", ["events_1d", "events_7d", "days_since_last_event"]].tolist() == [0, 2, 1]
    for label in ("d2", "d3"):
        users, items = (frame.set_index(frame.columns[0]) for frame in online[label])
        assert users.loc["u_old", USER_FEATURES].tolist() == [0, 0, 0, 0.0, 0, 28], label
        assert items.loc["i_old", ITEM_FEATURES].tolist() == [0, 0, 0, 0, 28], label
        assert len(users.loc["u_old", "recent_items"]) == 0, label  # serving must not exclude stale items
    users_d3 = online["d3"][0].set_index("user_id")
    assert users_d3.loc[["u5", "nobody"], USER_FEATURES].isna().all().all()  # u5 only after D3 ends


def test_rerun_and_backfill_are_idempotent(pipeline):
    layout, _, runs, online = pipeline
    repo = Path(runs["d3"].repo_path)
    files = sorted(p.name for p in (repo / "data" / "user_features").iterdir())
    assert files == [f"{D1}.parquet", f"{D2}.parquet", f"{D3}.parquet"]  # no temp files left either
    table = pq.read_table(repo / "data" / "user_features").to_pandas()
    assert len(table) == runs["d1"].users + runs["d2"].users + runs["d3"].users  # re-runs replaced, not added
    assert not table.duplicated(["user_id", "event_timestamp"]).any()
    assert runs["d3_again"].materialize_mode == "rerun" and runs["d2_backfill"].materialize_mode == "rerun"
    for label in ("d3_again", "d2_backfill"):  # online stays at the newest day's values
        pd.testing.assert_frame_equal(online[label][0], online["d3"][0])
        pd.testing.assert_frame_equal(online[label][1], online["d3"][1])
    assert runs["d2_backfill"].materialized_end == runs["d3"].materialized_end
    assert asdict(runs["d3_again"])["accepted_days_used"] == (OLD, D1, D2, D3)


def test_feast_cli_applies_a_copy_of_the_pipeline_repo_from_another_directory(pipeline, tmp_path):
    """A person's `feast apply` on a copy of the pipeline's repo, run from another directory, uses
    the copy's registry, sources and online store (paths are repo-relative, not cwd-relative)."""
    from feast import FeatureStore

    _, _, runs, online = pipeline
    feast = Path(sys.executable).with_name("feast")
    repo = Path(runs["d3"].repo_path)
    copy = tmp_path / "person_repo"
    shutil.copytree(repo, copy)
    original_registry = (repo / "data" / "registry.db").read_bytes()
    done = subprocess.run([str(feast), "-c", str(copy), "apply"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    # Existing objects were found in the copy's registry: nothing is created anew.
    assert "Created feature view" not in done.stdout and "Created entity" not in done.stdout, done.stdout
    assert "does not exist" not in done.stdout + done.stderr  # FileSource dirs resolved inside the copy
    assert (repo / "data" / "registry.db").read_bytes() == original_registry
    assert (copy / "data" / "registry.db").read_bytes() != original_registry
    store = FeatureStore(repo_path=str(copy))
    features = [f"user_activity:{name}" for name in [*USER_FEATURES, "recent_items"]]
    users = store.get_online_features(features=features, entity_rows={"user_id": ALL_USERS}).to_df()
    pd.testing.assert_frame_equal(users[online["d3"][0].columns], online["d3"][0])


class Killed(Exception):
    pass


class _KilledWhileSerializing:
    """A registry proto whose bytes never come: a kill at the instant the registry is written."""

    def __init__(self, proto):
        self._proto = proto

    def __getattr__(self, name):
        return getattr(self._proto, name)

    def SerializeToString(self):  # noqa: N802 (protobuf's name)
        raise Killed("killed while writing the registry")


@pytest.mark.parametrize("store_class, survives", [("feast", False), ("atomic", True)])
def test_a_kill_while_the_registry_is_written_leaves_the_last_registry(pipeline, tmp_path, store_class,
                                                                          survives):
    """Feast's own store truncates registry.db before it has the bytes (the 0-byte registry of
    issue 20); the pipeline's store keeps the last registry whole."""
    from feast.infra.registry.file import FileRegistryStore
    from feast.protos.feast.core.Registry_pb2 import Registry as RegistryProto
    from feast.repo_config import RegistryConfig

    from components.data.feast_registry import AtomicFileRegistryStore

    _, _, runs, _ = pipeline
    repo = tmp_path / "repo"
    shutil.copytree(runs["d3"].repo_path, repo)
    registry_db = repo / "data" / "registry.db"
    last = registry_db.read_bytes()
    cls = {"feast": FileRegistryStore, "atomic": AtomicFileRegistryStore}[store_class]
    store = cls(RegistryConfig(path="data/registry.db"), repo)
    proto = store.get_registry_proto()
    with pytest.raises(Killed):
        store.update_registry_proto(_KilledWhileSerializing(proto))
    assert (registry_db.read_bytes() == last) is survives
    if not survives:
        assert registry_db.stat().st_size == 0
        return
    parsed = RegistryProto()
    parsed.ParseFromString(registry_db.read_bytes())
    assert {v.spec.name for v in parsed.feature_views} == {"user_activity", "item_popularity"}


def test_a_features_run_failing_at_the_registry_write_keeps_serving(pipeline, tmp_path, monkeypatch):
    """A fault after the registry's new bytes are written but before they are in place (fsync of
    the temporary file): the run fails, and online reads through Feast still answer D3's values."""
    import errno

    layout, cfg, _, online = pipeline
    root = tmp_path / "root"
    shutil.copytree(layout.root, root)
    copy, copy_cfg = Layout.at(root), PipelineConfig(root=str(root))
    real_fsync = os.fsync

    def fsync(fd):
        if ".registry.db." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError, match="No space left"):
        run_features(copy, D3, copy_cfg, **current_inputs(copy, "features", D3, copy_cfg))
    monkeypatch.undo()
    users, items = read_online_features(copy, copy_cfg, ALL_USERS, ALL_ITEMS)
    pd.testing.assert_frame_equal(users, online["d3"][0])
    pd.testing.assert_frame_equal(items, online["d3"][1])


def test_windows_that_differ_from_the_repo_are_named(tmp_path):
    layout = Layout.at(tmp_path)
    write_accepted(layout, [D1])
    cfg = PipelineConfig(root=str(tmp_path), features={"windows_days": (1, 3, 14)})
    with pytest.raises(ValueError, match=r"user_activity.*events_14d"):
        run_features(layout, D1, cfg, **current_inputs(layout, "features", D1, cfg))
    assert not (tmp_path / "features" / "repo" / "data" / "user_features").exists()  # nothing written
