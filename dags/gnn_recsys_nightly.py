"""GraphDistill nightly: ingest -> validate -> features -> graph -> teacher -> distill -> prune ->
export -> convert -> evaluate -> gate -> register -> promote, then the run's report.

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


def _run(stage: str, upstream: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run a components stage for this run's day and run (reports/<day>/runs/<run_key>/), on the
    upstream task's result, mapping its outcomes onto Airflow's."""
    import sys

    if str(REPO_ROOT) not in sys.path:  # the repo's library, when not pip-installed
        sys.path.insert(0, str(REPO_ROOT))
    from components.errors import PermanentStageFailure, StageSkipped
    from components.pipeline import resolve, run_stage
    from components.storage import run_key_for

    context = get_current_context()
    params = context["params"]
    day = context["data_interval_start"].date().isoformat()
    cfg = resolve(params.get("root"), params.get("config_file"), params.get("overrides"))
    try:
        return run_stage(stage, day, cfg, run_key=run_key_for(context["run_id"]), upstream=upstream)
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

    # The decision stages pass explicit references: evaluate judges the engine convert built (its
    # lineage pins export, model and graph), gate -> register -> promote hand on what they decided.
    @task
    def evaluate(engine: dict) -> dict:
        return _run("evaluate", engine)

    @task
    def gate(evaluation: dict) -> dict:
        """Writes the blessing: every gate's n, value, interval, threshold and verdict."""
        return _run("gate", evaluation)

    @task
    def register(blessing: dict) -> dict:
        """Registers the judged candidate (blessed or not) under its candidate id."""
        return _run("register", blessing)

    @task.short_circuit(ignore_downstream_trigger_rules=False)
    def blessed(registration: dict) -> bool:
        if not registration["blessed"]:
            log.warning("candidate %s NOT promoted (%s by the gates; judged against %s; champion %s keeps serving)",
                        registration["version"], registration["status"], registration["judged_against"],
                        registration["champion_version"])
        return bool(registration["blessed"])

    @task
    def promote(registration: dict) -> dict:
        """Compare-and-swap under the registry lock; a blessed candidate that may not be promoted
        (stale, historical day, rolled back) skips this task with the reason."""
        decision = _run("promote", registration)
        if not decision["promoted"]:
            raise AirflowSkipException(f"candidate {decision['version']} blessed but not promoted: "
                                       f"{decision['reason']}; champion stays {decision['champion_version']}")
        return decision

    @task(trigger_rule="none_failed")
    def report() -> dict:
        return _run("report")

    ingested = ingest()
    validated = validate()
    built_graph = graph()
    ingested >> validated >> [features(), built_graph]
    built_engine = convert()
    built_graph >> teacher() >> distill() >> prune() >> export() >> built_engine
    registration = register(gate(evaluate(built_engine)))
    blessed(registration) >> promote(registration) >> report()


gnn_recsys_nightly()
