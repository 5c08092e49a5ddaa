"""A rollback from the CLI reaches serving: the champion Asset event goes through a real api-server's
REST API, queues the serving-refresh DAG, and that DAG exports the rolled-back-to champion."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from components.cli import airflow_bin, airflow_env
from components.decide.registry import champion, run_promote
from components.core.catalog import Layout
from graphdistill_airflow.local import api_server
from graphdistill_airflow.stack import free_port

from tests.unit.ship_fixtures import make_world, run_ship_day, tiny_config

pytestmark = pytest.mark.e2e
DAYS = ("2024-01-08", "2024-01-09")


def _cli(args, env):
    return subprocess.run([sys.executable, "-m", "components.cli", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def test_rollback_emits_the_champion_event_and_serving_follows(tmp_path):
    from tests.unit.decide.test_registry import judge

    root = tmp_path / "root"
    root.mkdir()
    layout, cfg = Layout.at(root), tiny_config(root)
    world = make_world()
    versions = []
    for i, day in enumerate(DAYS):  # two promotions: v0 (bootstrap), then v1 replaces it
        run_ship_day(layout, day, cfg, world, seed=i, candidate="good", gate=False)
        registration = judge(layout, cfg, day, "r")
        assert run_promote(layout, day, cfg, run_key="r", registration=registration).promoted
        versions.append(registration.version)
    with api_server(root, free_port(), tmp_path / "api-server.log") as server:
        env = {**airflow_env(root), **server.task_env()}
        parsed = subprocess.run([airflow_bin(), "dags", "reserialize"], env=env, capture_output=True, text=True)
        assert parsed.returncode == 0, parsed.stderr[-2000:]  # the DAGs (and their Assets) are known

        # Without the API address the rollback stands, and the CLI says serving was not told and how to finish.
        quiet = {k: v for k, v in env.items() if k != "GRAPHDISTILL_API_URL"}
        undone = _cli(["rollback", "--root", str(root), "--reason", "bad metrics in prod"], quiet)
        assert undone.returncode == 0 and "NOT announced" in undone.stderr and "graphdistill announce" in undone.stderr
        assert champion(layout).version == versions[0]
        # Configured but unreachable: the change stands, exit 3 says serving was not told.
        down = _cli(["announce", "--root", str(root)], {**quiet, "GRAPHDISTILL_API_URL": "http://u:p@127.0.0.1:9"})
        assert down.returncode == 3 and "NOT announced through http://127.0.0.1:9" in down.stderr

        api_env = {**env, "GRAPHDISTILL_API_URL": f"http://{server.user}:{server.password}@"
                                                  f"{server.base_url.split('://', 1)[1]}"}
        announced = _cli(["announce", "--root", str(root), "--reason", "after the rollback"], api_env)
        assert announced.returncode == 0, announced.stderr[-2000:]
        assert f"champion Asset event" in announced.stdout and versions[0] in announced.stdout

        token = server.token()
        events = server.get_json("/api/v2/assets/events?order_by=timestamp&limit=100", token)["asset_events"]
        (event,) = [e for e in events if e["name"] == "graphdistill_champion"]
        assert event["extra"]["version"] == versions[0] and event["extra"]["event"] == "announce"
        assert event["extra"]["root"] == str(root)
        queued = server.get_json("/api/v2/dags/champion_serving_refresh/assets/queuedEvents", token)
        assert queued["total_entries"] == 1  # the scheduler starts the refresh on its next loop

        refresh = subprocess.run([airflow_bin(), "dags", "test", "champion_serving_refresh"], env=env,
                                 capture_output=True, text=True)
        assert refresh.returncode == 0, refresh.stdout[-3000:] + refresh.stderr[-3000:]
    exported = json.loads((root / "serving" / "triton_repository" / "graphdistill_version.json").read_text())
    assert exported["version"] == versions[0]
