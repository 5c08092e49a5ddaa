"""Write a DAG-run note through Airflow's public REST API (v2), the only way a task can set one.

Airflow 3's task SDK has no call to set a note, so the pipeline authenticates like any API client:
``POST /auth/token`` with the user of the connection ``ops.api_connection_id`` (default
``graphdistill_api``, e.g. ``http://graphdistill:<password>@airflow-apiserver:8080``), then
``PATCH /api/v2/dags/{dag_id}/dagRuns/{run_id}?update_mask=note``.
"""

from __future__ import annotations

import logging

from components.core.airflow_api import AirflowApi

log = logging.getLogger(__name__)


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
    api = AirflowApi(f"{scheme}://{conn.host}{f':{conn.port}' if conn.port else ''}", conn.login, conn.password)
    api.set_run_note(dag_id, run_id, note)
    log.info("DAG-run note written for %s/%s through %s", dag_id, run_id, api.base)
    return True
