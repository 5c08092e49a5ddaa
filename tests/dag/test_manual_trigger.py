"""A manual run must name its day, and is refused when triggered without one (issue 18, Why 7: the
natural path through the trigger form ended in a NOT RUN failure); an active run reads RUNNING on the
Models page, not "INCOMPLETE ... a stage failed" (Why 4). A real api-server with the GraphDistill
plugin, on a metadata database that holds the nightly as the dag-processor serializes it."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.parse

import pytest

from components.cli import airflow_env
from graphdistill_airflow.local import api_server
from graphdistill_airflow.stack import free_port
from tests.dag.test_nightly_timetable import SERIALIZE_DAGS

DAG = "gnn_recsys_nightly"
RUNS = f"/api/v2/dags/{DAG}/dagRuns"
SET_RUNNING = """
import sys
from sqlalchemy import select
from airflow.models.dagrun import DagRun
from airflow.utils.session import create_session
from airflow.utils.state import DagRunState
with create_session() as session:
    session.scalar(select(DagRun).where(DagRun.run_id == sys.argv[1])).set_state(DagRunState.RUNNING)
"""


def _python(root, code: str, *args: str) -> None:
    done = subprocess.run([sys.executable, "-c", code, *args], env={**airflow_env(root), "GRAPHDISTILL_ROOT": str(root)},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("trigger")
    with api_server(root, free_port(), root / "api-server.log") as running:
        _python(root, SERIALIZE_DAGS)
        yield root, running, running.token()


def test_the_day_param_comes_first_as_a_date_with_its_rule(server):
    _, api, token = server
    params = api.get_json(f"/api/v2/dags/{DAG}/details", token)["params"]
    assert list(params)[0] == "day"
    day = params["day"]
    assert day["schema"]["format"] == "date" and day["schema"]["title"] == "Day to process (required for manual runs)"
    assert "Manual runs must set it: without it the trigger is refused" in day["description"]


@pytest.mark.parametrize("conf, says", [({}, "a manual run must name its day"),
                                        ({"day": None}, "a manual run must name its day"),
                                        ({"day": "2026-02-30"}, "is not a date (YYYY-MM-DD)")])
def test_a_manual_run_without_a_valid_day_is_refused_when_triggered(server, conf, says):
    _, api, token = server
    status, answer = api.post(RUNS, {"logical_date": None, "conf": conf}, token)
    assert status == 400 and says in answer["detail"]
    assert 'airflow dags trigger gnn_recsys_nightly --run-id "day_D" --conf \'{"day": "D"}\'' in answer["detail"]
    assert api.get_json(RUNS, token)["total_entries"] == 0  # refused: no run was created


def test_a_manual_run_with_its_day_is_created_and_reads_running_while_active(server):
    root, api, token = server
    status, run = api.post(RUNS, {"logical_date": None, "conf": {"day": "2026-03-04", "root": str(root)}}, token)
    assert status == 200 and run["state"] == "queued" and run["conf"]["day"] == "2026-03-04"
    _python(root, SET_RUNNING, run["dag_run_id"])
    assert api.get_json(f"{RUNS}/{urllib.parse.quote(run['dag_run_id'], safe='')}", token)["state"] == "running"
    status, page = api.get("/graphdistill/models", token)
    (row,) = [r for r in re.findall(r"<tr>.*?</tr>", page.decode()) if run["dag_run_id"] in r]
    assert status == 200 and row.startswith("<tr><td>2026-03-04</td>")
    assert ">RUNNING</span>" in row and "running: the decision is recorded when the run ends" in row
    assert "INCOMPLETE" not in row and "stage failed" not in row
