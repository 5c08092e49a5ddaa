"""The DAG's deadline alert run through Airflow's own triggerer callback, the notifier's fallback,
and the outcome gauges received by a StatsD socket through Airflow's [metrics] settings."""

from __future__ import annotations

import asyncio
import dataclasses
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
    from components.core.config import load_config

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

    from components.decide.outcome import RunDayError
    from components.data.validation_result import DataValidationError
    from graphdistill_airflow.nightly import fail_for_good

    notifier = nightly_dag.default_args["on_failure_callback"]

    def ti(task):
        return type("TI", (), {"dag_id": "gnn_recsys_nightly", "run_id": "r1", "task_id": task, "try_number": 1})()

    for task, cause in (("validate", DataValidationError("2026-01-04 quarantined", "r.html")),
                        ("ingest", RunDayError("a manual run must name its day"))):
        try:  # as the DAG's tasks fail: from None (the message once), the cause kept as __context__
            try:
                raise cause
            except type(cause) as error:
                fail_for_good(error)
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
        "from components.decide.outcome import Outcome\n"
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
        while len(packets) < 13:  # 8 outcome kinds, 2 metrics, 1 gate, 2 row counts
            packets.add(receiver.recv(4096).decode())
    except socket.timeout:
        pass
    assert "airflow.graphdistill.candidate.ndcg_at_20:0.25|g" in packets
    assert "airflow.graphdistill.champion.ndcg_at_20:0.5|g" in packets
    assert "airflow.graphdistill.outcome.rejected:1.0|g" in packets
    assert "airflow.graphdistill.gate.ndcg_20_max_regression_vs_champion:0.0|g" in packets
    assert "airflow.graphdistill.rows.accepted:700.0|g" in packets


def _weak_champion_outcome(champion_after: str):
    from components.decide.outcome import Outcome

    health = {"subject": "champion", "baseline": "popularity", "metric": "ndcg@20", "segment": "history",
              "rule": "relative change >= -0", "n": 812, "value": 0.031, "baseline_value": 0.052,
              "relative_change": -0.404, "ci_low": -0.52, "ci_high": -0.27, "verdict": "fail", "note": "",
              "champion_version": "2026-01-02-weak"}
    return Outcome(day="2026-01-09", run_id="r", kind="rejected", reason="failed gates: x",
                   champion_before="2026-01-02-weak", champion_after=champion_after,
                   gates={"ndcg@20 min_ratio_to teacher": "fail", "ndcg@20 max_regression_vs champion [history]": "pass"},
                   gate_roles={"ndcg@20 min_ratio_to teacher": "diagnostic",
                               "ndcg@20 max_regression_vs champion [history]": "decision"},
                   overridden_gates=("ndcg@20 min_ratio_to teacher",),
                   champion_health=health, champion_worse_than_popularity=True)


def test_a_champion_worse_than_popularity_raises_one_alert_with_the_day_and_numbers():
    from components.core.config import load_config
    from graphdistill_airflow.alerts import CHAMPION_WORSE_THAN_POPULARITY
    from graphdistill_airflow.nightly import night_alerts

    cfg = load_config()
    alerts = night_alerts(_weak_champion_outcome("2026-01-02-weak"), "r", "2026-01-08", cfg)
    (event, text, details), = [a for a in alerts if a[0] == CHAMPION_WORSE_THAN_POPULARITY]
    assert text.startswith("champion worse than popularity on 2026-01-09: champion 2026-01-02-weak as served, "
                           "ndcg@20 0.0310 vs popularity 0.0520 (-40.4%, 90% CI [-52.0%, -27.0%], 812 history users); "
                           "it keeps serving")
    assert details["champion"] == "2026-01-02-weak" and details["champion_health"]["n"] == 812
    replaced = night_alerts(_weak_champion_outcome("2026-01-09-new"), "r", "2026-01-09", cfg)
    assert [a[0] for a in replaced] == [CHAMPION_WORSE_THAN_POPULARITY] and "replaced by 2026-01-09-new" in replaced[0][1]
    healthy = dataclasses.replace(_weak_champion_outcome("2026-01-02-weak"), champion_worse_than_popularity=False)
    assert night_alerts(healthy, "r", "2026-01-08", cfg) == []


def test_the_outcome_tab_shows_roles_overrides_and_the_champions_health():
    from graphdistill_airflow.plugin import outcome_body

    body = outcome_body(_weak_champion_outcome("2026-01-02-weak"), "r", "/graphdistill/runs/d/r")
    assert "<b>Champion worse than popularity</b>: 2026-01-02-weak ndcg@20 -40.4% [-52.0%, -27.0%]" in body
    assert "<td>ndcg@20 min_ratio_to teacher</td><td>diagnostic</td><td>FAIL (overridden)</td>" in body
    assert "<td>decision</td><td>PASS</td>" in body


def test_the_models_page_marks_a_promotion_rolled_back_since():
    from graphdistill_airflow.plugin import night_cells

    promoted = dataclasses.replace(_weak_champion_outcome("2026-01-09-new"), kind="promoted", reason="champion a -> b")
    badges, reason = night_cells(promoted, {"2026-01-09-new": {"at": "2026-01-10T08:00", "reason": "bad in prod"}})
    assert "PROMOTED" in badges and "ROLLED BACK" in badges
    assert reason == "rolled back 2026-01-10T08:00 (bad in prod); was: champion a -> b"
    badges, reason = night_cells(promoted, {})  # not rolled back: no mark
    assert "ROLLED BACK" not in badges and reason == "champion a -> b"


def test_a_popularity_fallback_shows_as_its_own_end_in_the_tab_and_on_the_models_page():
    from graphdistill_airflow.nightly import NIGHT_ENDS
    from graphdistill_airflow.plugin import night_cells, outcome_body

    assert ("fallback_popularity", False) in NIGHT_ENDS  # its own green row of the grid
    fallback = dataclasses.replace(_weak_champion_outcome("2026-01-09-popularity-abc"), kind="fallback_popularity",
                                   reason="champion 2026-01-02-weak -> 2026-01-09-popularity-abc (popularity)",
                                   failed_gates=("[decision] ndcg@20 min_lift_over popularity: +1.0% (INCONCLUSIVE)",))
    body = outcome_body(fallback, "r", "/graphdistill/runs/d/r")
    assert "FALLBACK POPULARITY</span>" in body and "<h3>Gates the candidate failed (popularity serves instead)</h3>" in body
    badges, reason = night_cells(fallback, {"2026-01-09-popularity-abc": {"at": "2026-01-10T08:00", "reason": "ops"}})
    assert "FALLBACK POPULARITY" in badges and "ROLLED BACK" in badges
    assert reason.startswith("rolled back 2026-01-10T08:00 (ops); was: champion 2026-01-02-weak -> ")


def test_promote_runs_for_a_blessed_candidate_or_a_popularity_fallback_only():
    from graphdistill_airflow.nightly import goes_to_promote

    registration = {"version": "2026-01-09-c", "status": "rejected", "blessed": False, "judged_against": "w",
                    "champion_version": "w", "fallback_version": None}
    assert goes_to_promote(registration) is False
    assert goes_to_promote({**registration, "fallback_version": "2026-01-09-popularity-abc"}) is True
    assert goes_to_promote({**registration, "status": "blessed", "blessed": True}) is True
