"""Feast on the stack's stores: the features stage applies to the SQL registry on the stack's Postgres and
materializes into its Redis; serving's and evaluation's reads go through them and answer what the
default stores (SQLite registry file and online store) answer for the same days. Real servers on
loopback, started with the stack's own code (Postgres and Redis only); opt-in (`-m stack`) like the stack suite."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
import redis
import sqlalchemy

from components.core.catalog import Layout
from components.core.config import PipelineConfig
from components.data.features import (feature_repo_path, online_history, recent_items_as_of,
                                      run_features)
from graphdistill_airflow import stack as stack_mod
from tests.unit.data.test_features import ALL_ITEMS, ALL_USERS, D1, D2, D3, OLD, write_accepted
from tests.unit.data_fixtures import current_inputs, read_online_features


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """The stack's Postgres and Redis in a temporary state folder (installed first where missing, as
    `make stack` does: on a fresh machine this module runs before any test that starts the stack)."""
    stack_mod.ensure_installed()
    with stack_mod.services(tmp_path_factory.mktemp("feast-stores"), stack_mod.start_postgres,
                            stack_mod.start_redis) as stack:
        yield stack


@pytest.mark.stack
def test_features_serving_and_evaluation_read_through_redis_and_the_postgres_registry(stores, tmp_path):
    section = stores.feature_stores()
    assert section["registry_url"].endswith("/feast_registry") and section["redis_connection_string"].endswith(",db=1")
    runs, reads = {}, {}
    for label, features in (("default", {}), ("stack", section)):
        root = tmp_path / label
        layout, cfg = Layout.at(root), PipelineConfig(root=str(root), features=features)
        write_accepted(layout, [OLD, D1, D2, D3])
        runs[label] = [run_features(layout, day, cfg, **current_inputs(layout, "features", day, cfg))
                       for day in (D1, D2, D3)]
        users, items = read_online_features(layout, cfg, ALL_USERS, ALL_ITEMS)
        reads[label] = (users.sort_values("user_id").reset_index(drop=True),
                        items.sort_values("item_id").reset_index(drop=True),
                        online_history(layout, cfg)(ALL_USERS),  # serving's read
                        recent_items_as_of(layout, cfg, ALL_USERS, pd.Timestamp(D3, tz="UTC")))  # evaluation's read
        registry_file = feature_repo_path(layout) / "data" / "registry.db"
        assert registry_file.exists() == (label == "default")  # the stack's registry is in Postgres, not a file
    assert [r.materialized_rows for r in runs["stack"]] == [r.materialized_rows for r in runs["default"]]
    pd.testing.assert_frame_equal(reads["stack"][0], reads["default"][0])
    pd.testing.assert_frame_equal(reads["stack"][1], reads["default"][1])
    assert reads["stack"][2] == reads["default"][2] and any(reads["stack"][2])
    assert reads["stack"][3] == reads["default"][3]

    # The rows are where the stack's config says: feature views in Postgres, entity rows in Redis db 1.
    engine = sqlalchemy.create_engine(section["registry_url"])
    with engine.connect() as connection:
        views = {row[0] for row in connection.execute(sqlalchemy.text(
            "SELECT feature_view_name FROM feature_views WHERE project_id = 'graphdistill'"))}
    engine.dispose()
    assert views == {"user_activity", "item_popularity"}
    online = redis.Redis(port=stores.ports["redis"], db=1)
    users, items = reads["stack"][:2]  # one Redis key per entity ever materialized (Feast's hash per entity key)
    assert online.dbsize() == users["events_28d"].notna().sum() + items["events_28d"].notna().sum() > 0
    assert redis.Redis(port=stores.ports["redis"], db=0).dbsize() == 0  # db 0 is Celery's broker

    # A second checkout of the repo (another worker) reads the same registry: no file to copy around.
    other = tmp_path / "other-worker"
    shutil.copytree(tmp_path / "stack", other)
    shutil.rmtree(feature_repo_path(Layout.at(other)) / "data", ignore_errors=True)
    users, _ = read_online_features(Layout.at(other), PipelineConfig(root=str(other), features=section),
                                    ALL_USERS, ALL_ITEMS)
    pd.testing.assert_frame_equal(users.sort_values("user_id").reset_index(drop=True), reads["stack"][0])


def test_the_stacks_pipeline_config_puts_feast_on_its_stores(tmp_path):
    stack = stack_mod.Stack(tmp_path, stack_mod.load_settings(), {name: 10000 + i for i, name in
                                                                   enumerate(stack_mod.PORTS)})
    from components.core.config import load_config

    cfg = load_config(stack.write_pipeline_config())
    assert cfg.features.online_store == "redis" and cfg.features.registry_store == "sql"
    assert cfg.features.redis_connection_string == f"127.0.0.1:{stack.ports['redis']},db=1"
    assert cfg.features.registry_url == f"{stack.postgres_url}/feast_registry"
    assert stack.airflow_env()["GRAPHDISTILL_CONFIG"] == str(stack.pipeline_config)
