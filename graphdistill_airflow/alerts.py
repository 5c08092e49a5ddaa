"""The GraphDistill notifier: task failures, quarantined days, a stale champion, a champion worse than
popularity, a missed deadline.

A webhook configured as an Airflow connection (``ops.alert_connection_id``, default
``graphdistill_alerts``; an http(s) URL, e.g. a Slack incoming webhook, or ``extra.webhook_url``)
receives ``{"text": ..., "event": ..., **details}`` as JSON. Without that connection every alert is
one WARNING log line, which is also written when the webhook is reached.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.parse
import urllib.request
from typing import Any

from airflow.sdk import BaseNotifier

log = logging.getLogger(__name__)

TASK_FAILED = "task_failed"
QUARANTINED = "quarantined"
STALE_CHAMPION = "stale_champion"
CHAMPION_WORSE_THAN_POPULARITY = "champion_worse_than_popularity"
DEADLINE_MISSED = "deadline_missed"
DEFAULT_CONNECTION = "graphdistill_alerts"


def webhook_url(conn_id: str) -> str | None:
    """The webhook URL of the alert connection, or None when the connection is not configured."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = Connection.get(conn_id)
    except AirflowNotFoundException:
        return None
    if conn.extra_dejson.get("webhook_url"):
        return conn.extra_dejson["webhook_url"]
    scheme = conn.conn_type if conn.conn_type in ("http", "https") else "https"
    port = f":{conn.port}" if conn.port else ""
    path = f"/{conn.schema}" if conn.schema else ""
    return f"{scheme}://{conn.host}{port}{path}"


def run_url(base_url: str | None, dag_id: str | None, run_id: str | None) -> str | None:
    """The run's page in the Airflow UI (``ops.base_url``), so an alert links to what it is about."""
    if not (base_url and dag_id and run_id):
        return None
    return f"{base_url.rstrip('/')}/dags/{urllib.parse.quote(dag_id)}/runs/{urllib.parse.quote(run_id, safe='')}"


# Failures the night's `outcome` task alerts on itself, once (quarantine, a run without a valid day):
# the failing task's own callback stays quiet so one event is one alert.
OUTCOME_REPORTED = ("DataValidationError", "RunDayError")


def _reported_by_outcome(error: BaseException | None) -> str | None:
    while error is not None:
        if type(error).__name__ in OUTCOME_REPORTED:
            return type(error).__name__
        error = error.__cause__ or error.__context__  # nightly.fail_for_good raises from None
    return None


def send_alert(event: str, text: str, details: dict[str, Any] | None = None,
               conn_id: str = DEFAULT_CONNECTION) -> bool:
    """Log the alert and post it to the webhook if one is configured; True when it was posted."""
    log.warning("GRAPHDISTILL ALERT [%s] %s", event, text)
    url = webhook_url(conn_id)
    if url is None:
        log.info("alert connection %r not configured: the alert above is the only notification", conn_id)
        return False
    body = json.dumps({"text": f"[GraphDistill {event}] {text}", "event": event, **(details or {})},
                      default=str).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:  # an unreachable webhook is an error, not silence
        log.info("alert %s posted to connection %r (HTTP %s)", event, conn_id, response.status)
    return True


class GraphDistillNotifier(BaseNotifier):
    """Airflow notifier for on_failure_callback (sync) and DeadlineAlert (async, in the triggerer)."""

    template_fields = ("message",)

    def __init__(self, event: str = TASK_FAILED, message: str = "", conn_id: str = DEFAULT_CONNECTION,
                 base_url: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.event = event
        self.message = message
        self.conn_id = conn_id
        self.base_url = base_url

    def _text(self, context: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        ti = context.get("task_instance") or context.get("ti")
        dag_run = context.get("dag_run")
        if isinstance(dag_run, dict):  # a deadline callback: the scheduler's JSON snapshot of the run
            dag_id, run_id, state = dag_run.get("dag_id"), dag_run.get("dag_run_id"), dag_run.get("state")
        else:
            dag_id = getattr(dag_run, "dag_id", None) or getattr(ti, "dag_id", None)
            run_id = getattr(dag_run, "run_id", None) or getattr(ti, "run_id", None)
            state = None
        details = {"dag_id": dag_id, "run_id": run_id, "task_id": getattr(ti, "task_id", None),
                   "try_number": getattr(ti, "try_number", None), "run_state": state,
                   "url": run_url(self.base_url, dag_id, run_id)}
        if self.message:
            return f"{self.message} (run {run_id}{f', {state}' if state else ''})", details
        error = context.get("exception")
        return (f"task {details['task_id']} of {dag_id} run {run_id} failed "
                f"(try {details['try_number']}): {error}; the current champion keeps serving"), details

    def notify(self, context: dict[str, Any]) -> None:
        text, details = self._text(context)
        if self.event == DEADLINE_MISSED and details["run_state"] not in (None, "queued", "running"):
            # Airflow 3.3.2 clears a run's deadline only on success: a run that already failed is no news.
            log.info("deadline passed for run %s, which already ended %s: no alert", details["run_id"],
                     details["run_state"])
            return
        reported = _reported_by_outcome(context.get("exception"))
        if self.event == TASK_FAILED and reported and details["task_id"] != "outcome":
            log.info("task %s failed with %s: the run's outcome task sends the one alert for it",
                     details["task_id"], reported)
            return
        send_alert(self.event, text, details, self.conn_id)

    async def async_notify(self, context: dict[str, Any]) -> None:
        await asyncio.to_thread(self.notify, context)
