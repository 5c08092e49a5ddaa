"""The DAG's deadline alert run through Airflow's own triggerer callback, the notifier's fallback,
and the outcome gauges received by a StatsD socket through Airflow's [metrics] settings."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


class _Webhook(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self):  # noqa: N802
        self.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        """Silent: the tests read the received payloads, not http.server's access log."""


@pytest.fixture
def webhook(monkeypatch):
    server = HTTPServer(("127.0.0.1", 0), _Webhook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Webhook.received = []
    monkeypatch.setenv("AIRFLOW_CONN_GRAPHDISTILL_ALERTS", f"http://127.0.0.1:{server.server_port}/alerts")
    yield _Webhook.received
    server.shutdown()


@pytest.fixture(scope="module")
def nightly_dag(tmp_path_factory):
    os.environ.setdefault("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow_home")))
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags")).dags["gnn_recsys_nightly"]


def test_deadline_alert_fires_the_notifier_as_the_triggerer_runs_it(nightly_dag, webhook):
    from airflow.triggers.callback import CallbackTrigger

    (deadline,) = nightly_dag.deadline if isinstance(nightly_dag.deadline, list) else [nightly_dag.deadline]
    # What the scheduler hands the triggerer when the deadline passes: the callback's path and kwargs.
    trigger = CallbackTrigger(deadline.callback.path, dict(deadline.callback.kwargs))

    async def collect():
        return [event.payload async for event in trigger.run()]

    events = asyncio.run(collect())
    assert [e["state"] for e in events] == ["running", "success"], events
    from components.config import load_config

    hours = load_config().ops.run_deadline_hours
    (alert,) = webhook
    assert alert["event"] == "deadline_missed" and f"has not finished {hours:g} h after it was queued" in alert["text"]


def test_task_failure_notifier_posts_the_task_and_error(nightly_dag, webhook):
    notifier = nightly_dag.default_args["on_failure_callback"]

    class TI:  # the fields of a RuntimeTaskInstance the notifier reads
        dag_id, run_id, task_id, try_number = "gnn_recsys_nightly", "day_2026-01-06", "teacher", 1

    notifier({"ti": TI(), "task_instance": TI(), "exception": RuntimeError("CUDA out of memory")})
    (alert,) = webhook
    assert alert["event"] == "task_failed" and alert["task_id"] == "teacher"
    assert "CUDA out of memory" in alert["text"] and "champion keeps serving" in alert["text"]


def _deadline_events(nightly_dag, state):
    """Run the deadline callback as the triggerer does, with the run snapshot the scheduler attaches."""
    from airflow.triggers.callback import CallbackTrigger

    (deadline,) = nightly_dag.deadline if isinstance(nightly_dag.deadline, list) else [nightly_dag.deadline]
    snapshot = {"dag_id": "gnn_recsys_nightly", "dag_run_id": "scheduled__2026-01-06T00:00:00+00:00", "state": state}
    trigger = CallbackTrigger(deadline.callback.path,
                              {**deadline.callback.kwargs, "base_url": "http://airflow.example:8080",
                               "context": {"dag_run": snapshot, "deadline": {"id": "d1"}}})

    async def collect():
        return [event.payload async for event in trigger.run()]

    return asyncio.run(collect())


def test_deadline_alert_names_the_run_and_links_it(nightly_dag, webhook):
    events = _deadline_events(nightly_dag, "running")
    assert events[-1]["state"] == "success", events
    (alert,) = webhook
    assert alert["dag_id"] == "gnn_recsys_nightly" and alert["run_id"] == "scheduled__2026-01-06T00:00:00+00:00"
    assert alert["url"] == ("http://airflow.example:8080/dags/gnn_recsys_nightly/runs/"
                            "scheduled__2026-01-06T00%3A00%3A00%2B00%3A00")
    assert "scheduled__2026-01-06T00:00:00+00:00, running" in alert["text"]


def test_no_deadline_alert_for_a_run_that_already_failed(nightly_dag, webhook):
    events = _deadline_events(nightly_dag, "failed")
    assert events[-1]["state"] == "success", events
    assert webhook == []  # Airflow 3.3.2 keeps the deadline of a failed run; the notifier drops it


def test_one_alert_per_quarantine_and_per_run_without_a_day(nightly_dag, webhook):
    """validate's failure (quarantine) and ingest's (no day) stay quiet: the outcome task alerts once."""
    from airflow.sdk.exceptions import AirflowFailException

    from components.outcome import RunDayError
    from components.validate import DataValidationError

    notifier = nightly_dag.default_args["on_failure_callback"]

    def ti(task):
        return type("TI", (), {"dag_id": "gnn_recsys_nightly", "run_id": "r1", "task_id": task, "try_number": 1})()

    for task, cause in (("validate", DataValidationError("2026-01-04 quarantined", "r.html")),
                        ("ingest", RunDayError("a manual run must name its day"))):
        try:
            raise AirflowFailException(str(cause)) from cause
        except AirflowFailException as exc:
            notifier({"ti": ti(task), "task_instance": ti(task), "exception": exc})
    assert webhook == []
    try:
        raise AirflowFailException("a manual run must name its day") from RunDayError("no day")
    except AirflowFailException as exc:
        notifier({"ti": ti("outcome"), "task_instance": ti("outcome"), "exception": exc})
    (alert,) = webhook
    assert alert["task_id"] == "outcome" and "must name its day" in alert["text"]


def test_without_a_connection_an_alert_is_one_warning_line(monkeypatch, caplog):
    from graphdistill_airflow.alerts import send_alert

    monkeypatch.delenv("AIRFLOW_CONN_GRAPHDISTILL_ALERTS", raising=False)
    with caplog.at_level(logging.INFO):
        assert send_alert("quarantined", "2026-01-04: QUARANTINED - rules") is False
    assert any(r.levelno == logging.WARNING and "GRAPHDISTILL ALERT [quarantined]" in r.getMessage()
               for r in caplog.records)


def test_outcome_gauges_reach_statsd_through_airflow_metrics_settings(tmp_path):
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(20)
    code = (
        "from components.outcome import Outcome\n"
        "from graphdistill_airflow.metrics import emit_outcome_metrics\n"
        "emit_outcome_metrics(Outcome(day='2026-01-05', run_id='r', kind='rejected', reason='r',\n"
        "    metrics={'candidate': {'ndcg@20': 0.25}, 'champion': {'ndcg@20': 0.5}},\n"
        "    gates={'ndcg@20 max_regression_vs champion': 'fail'}, rows_accepted=700, rows_quarantined=0))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "AIRFLOW_HOME": str(tmp_path),
           "AIRFLOW__METRICS__STATSD_ON": "True", "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
           "AIRFLOW__METRICS__STATSD_PORT": str(receiver.getsockname()[1]), "AIRFLOW__METRICS__STATSD_PREFIX": "airflow"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    packets = set()
    try:
        while len(packets) < 12:  # 7 outcome kinds, 2 metrics, 1 gate, 2 row counts
            packets.add(receiver.recv(4096).decode())
    except socket.timeout:
        pass
    assert "airflow.graphdistill.candidate.ndcg_at_20:0.25|g" in packets
    assert "airflow.graphdistill.champion.ndcg_at_20:0.5|g" in packets
    assert "airflow.graphdistill.outcome.rejected:1.0|g" in packets
    assert "airflow.graphdistill.gate.ndcg_20_max_regression_vs_champion:0.0|g" in packets
    assert "airflow.graphdistill.rows.accepted:700.0|g" in packets
