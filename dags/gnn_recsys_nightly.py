"""GraphDistill nightly: ingest -> validate -> features -> graph -> teacher -> distill -> prune ->
export -> convert -> evaluate -> gate -> promote, then the run's report.

Wiring only: every step is a function in components/ (see components/pipeline.py STAGES), run
here for the run's day = the data interval's start (UTC). A run for day D processes the landing
partition of D, trains on the window ending D-1 and judges the candidate on D.
Heavy libraries are imported inside tasks: this file is parsed over and over.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path
from typing import Any

from airflow.sdk import CronDataIntervalTimetable, Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

REPO_ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger(__name__)


def _on_failure(context: dict[str, Any]) -> None:
    """One line ops can alert on; the champion keeps serving whatever failed."""
    ti = context.get("task_instance")
    log.error(
        "GraphDistill task failed: dag=%s task=%s day=%s try=%s error=%s; the current champion keeps serving",
        context.get("dag").dag_id if context.get("dag") else "?",
        getattr(ti, "task_id", "?"),
        context.get("data_interval_start"),
        getattr(ti, "try_number", "?"),
        context.get("exception"),
    )


def _run(stage: str) -> dict[str, Any]:
    """Run a components stage for this run's day, mapping its outcomes onto Airflow's."""
    import sys

    if str(REPO_ROOT) not in sys.path:  # the repo's library, when not pip-installed
        sys.path.insert(0, str(REPO_ROOT))
    from components.errors import PermanentStageFailure, StageSkipped
    from components.pipeline import resolve, run_stage

    context = get_current_context()
    params = context["params"]
    day = context["data_interval_start"].date().isoformat()
    cfg = resolve(params.get("root"), params.get("config_file"), params.get("overrides"))
    try:
        return run_stage(stage, day, cfg)
    except StageSkipped as exc:
        raise AirflowSkipException(f"{stage} skipped for {day}: {exc}") from exc
    except PermanentStageFailure as exc:
        raise AirflowFailException(str(exc)) from exc


@dag(
    dag_id="gnn_recsys_nightly",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=True,
    max_active_runs=1,
    default_args={
        # Deployment knob (the demo and tests set 0 so a failing day fails at once).
        "retries": int(os.environ.get("GRAPHDISTILL_TASK_RETRIES", "2")),
        "retry_delay": dt.timedelta(minutes=5),
        "retry_exponential_backoff": True,
        "on_failure_callback": _on_failure,
    },
    params={
        "root": Param(os.environ.get("GRAPHDISTILL_ROOT", str(REPO_ROOT / ".graphdistill")), type="string",
                      description="artifact root (landing, accepted, quarantine, features, graphs, models, registry)"),
        "config_file": Param(os.environ.get("GRAPHDISTILL_CONFIG", str(REPO_ROOT / "config" / "pipeline.yaml")),
                             type="string", description="pipeline config YAML (gates: config/gates.yaml)"),
        "overrides": Param({}, type="object", description='dotted config overrides, e.g. {"teacher.epochs": 5}'),
    },
    tags=["graphdistill", "recsys"],
    doc_md=__doc__,
)
def gnn_recsys_nightly():
    @task  # idempotent: a transient read error of the landing store is worth a retry
    def ingest() -> dict:
        return _run("ingest")

    @task  # a failed validation raises AirflowFailException: quarantined, never retried
    def validate() -> dict:
        return _run("validate")

    @task
    def features() -> dict:
        return _run("features")

    @task
    def graph() -> dict:
        return _run("graph")

    @task(execution_timeout=dt.timedelta(hours=6))
    def teacher() -> dict:
        return _run("teacher")

    @task(execution_timeout=dt.timedelta(hours=3))
    def distill() -> dict:
        return _run("distill")

    @task(execution_timeout=dt.timedelta(hours=3))
    def prune() -> dict:
        return _run("prune")

    @task
    def export() -> dict:
        return _run("export")

    @task
    def convert() -> dict:
        return _run("convert")

    @task
    def evaluate() -> dict:
        return _run("evaluate")

    @task
    def gate() -> dict:
        """Writes the blessing (every gate's value, threshold, verdict) and registers the candidate."""
        blessing = _run("gate")
        _run("register")
        return blessing

    @task.short_circuit(ignore_downstream_trigger_rules=False)
    def blessed(blessing: dict) -> bool:
        if not blessing["blessed"]:
            log.warning("candidate %s NOT promoted (champion %s keeps serving); failing gates: %s; report %s",
                        blessing["candidate_version"], blessing["champion_version"],
                        "; ".join(blessing["failed"]), blessing["path"])
        return bool(blessing["blessed"])

    @task
    def promote() -> dict:
        return _run("promote")

    @task(trigger_rule="none_failed")
    def report() -> dict:
        return _run("report")

    ingested = ingest()
    validated = validate()
    built_graph = graph()
    ingested >> validated >> [features(), built_graph]
    evaluated = evaluate()
    built_graph >> teacher() >> distill() >> prune() >> export() >> convert() >> evaluated
    blessing = gate()
    evaluated >> blessing
    blessed(blessing) >> promote() >> report()


gnn_recsys_nightly()
