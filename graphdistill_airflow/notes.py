"""Write a DAG-run note through Airflow's public REST API (v2), the only way a task can set one.

Airflow 3's task SDK has no call to set a note, so the pipeline authenticates like any API client:
``POST /auth/token`` with the user of the connection ``ops.api_connection_id`` (default
``graphdistill_api``, e.g. ``http://graphdistill:<password>@airflow-apiserver:8080``), then
``PATCH /api/v2/dags/{dag_id}/dagRuns/{run_id}?update_mask=note``.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
import urllib.request

log = logging.getLogger(__name__)


def _call(method: str, url: str, body: dict, token: str | None = None) -> dict:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method=method)
    with urllib.request.urlopen(request, timeout=20) as response:
        return json.loads(response.read() or b"{}")


def write_run_note(dag_id: str, run_id: str, note: str, conn_id: str) -> bool:
    """Set the run's note; False (with a log line saying why) when no API connection is configured."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = Connection.get(conn_id)
    except AirflowNotFoundException:
        log.info("DAG-run note not written: Airflow connection %r (the api-server URL with a user) is not "
                 "configured; the outcome is in this log, the run report and the GraphDistill plugin view", conn_id)
        return False
    scheme = conn.conn_type if conn.conn_type in ("http", "https") else "http"
    base = f"{scheme}://{conn.host}{f':{conn.port}' if conn.port else ''}"
    token = _call("POST", f"{base}/auth/token", {"username": conn.login, "password": conn.password})["access_token"]
    url = (f"{base}/api/v2/dags/{urllib.parse.quote(dag_id, safe='')}/dagRuns/"
           f"{urllib.parse.quote(run_id, safe='')}?update_mask=note")
    _call("PATCH", url, {"note": note}, token)
    log.info("DAG-run note written for %s/%s through %s", dag_id, run_id, base)
    return True
