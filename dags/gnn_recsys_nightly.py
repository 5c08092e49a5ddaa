"""GraphDistill nightly: ingest -> validate -> features -> graph -> teacher -> distill -> prune ->
export -> convert -> evaluate -> gate -> register -> promote, then the run's report; catalog_inputs hands
validate, features, graph and teacher the earlier days and artifacts they read besides.

Wiring only: every step is a function in components/ (see components/pipeline.py STAGES), run
here for the run's day (components.decide.outcome.run_day: the data interval's start for scheduled and
backfill runs, the ``day`` param for manual runs). A run for day D processes the landing partition
of D, trains on the window ending D-1 and judges the candidate on D. The ops runbook (the DAG's
docs in the UI) is RUNBOOK.md. Heavy libraries are imported inside tasks: this file is parsed over and over.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from airflow.sdk import (AsyncCallback, DeadlineAlert, DeadlineReference, Param, dag,
                         get_current_context, task, teardown)
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # the repo's library, when not pip-installed
    sys.path.insert(0, str(REPO_ROOT))

from components.core.config import default_config_file, default_root, load_config  # noqa: E402  (pydantic + yaml: light)
from components.decide.outcome import schedule_start  # noqa: E402  (standard library + storage paths: light)
from graphdistill_airflow.alerts import DEADLINE_MISSED, GraphDistillNotifier  # noqa: E402
from graphdistill_airflow.assets import CHAMPION, NIGHTLY_OUTCOME  # noqa: E402
from graphdistill_airflow.nightly import (NIGHT_ENDS, announce_champion, context_day, ended_as,  # noqa: E402
                                         fail_for_good, goes_to_promote, publish_outcome)
from graphdistill_airflow.timetable import NightlyTimetable  # noqa: E402  (registered by the plugin)

DAG_ID = "gnn_recsys_nightly"
# The heavy model tasks go to the Celery queue a GPU node serves (the stack's worker-gpu); executors
# without queues (`airflow dags test`, LocalExecutor) ignore it.
GPU_QUEUE = "gpu"
OPS = load_config(default_config_file()).ops  # deadline, timeout, alert connection (config/pipeline.yaml "ops")
# First unpause: catch up from GRAPHDISTILL_START_DATE / ops.start_date / the first landed day, else run
# only the latest night (never one failing run per day since a hard-coded date).
START = schedule_start(os.environ.get("GRAPHDISTILL_START_DATE"), OPS.start_date, default_root())
log = logging.getLogger(__name__)


def _in_run(what: str, work: Callable[[str, Any, str], dict[str, Any]]) -> dict[str, Any]:
    """``work(day, config, run key)`` for this run's day and run (reports/<day>/runs/<run_key>/), mapping
    its outcomes onto Airflow's."""
    from components.core.errors import PermanentStageFailure, StageSkipped
    from components.pipeline import resolve
    from components.core.catalog import run_key_for

    context = get_current_context()
    params = context["params"]
    day = context_day(context)
    try:
        # Inside the try: a broken config or override (ConfigError) fails now, naming the key; no retry.
        cfg = resolve(params.get("root"), params.get("config_file"), params.get("overrides"))
        return work(day, cfg, run_key_for(context["run_id"]))
    except StageSkipped as exc:
        # Logged before raising: Airflow files the skip exception under the collapsed "Post Execute".
        log.warning("SKIPPED %s for %s: %s", what, day, exc)
        raise AirflowSkipException(f"{what} skipped for {day}: {exc}") from exc
    except PermanentStageFailure as exc:
        fail_for_good(exc)


def _run(stage: str, upstream: dict[str, Any] | None = None, reads: dict[str, Any] | None = None,
         **inputs: dict[str, Any]) -> dict[str, Any]:
    """Run a components stage on the upstream tasks' results (``inputs``: what a build stage builds on;
    ``upstream``: what a decision stage decides on; ``reads``: what it reads besides, from the
    catalog_inputs task)."""
    from components.pipeline import run_stage

    return _in_run(stage, lambda day, cfg, run_key: run_stage(stage, day, cfg, run_key=run_key, upstream=upstream,
                                                               inputs=inputs, context=reads))


def _night_ended(kind: str, fails: bool):
    """A terminal task named after one outcome; a night that failed keeps its run failed through it."""

    label = kind.upper().replace("_", " ")

    @task(task_id=kind, on_failure_callback=None,  # the outcome task already alerted, once
          doc_md=f"Runs (the other ends are skipped) when the night ended **{label}**"
                 f"{'; fails, so the run is red' if fails else ''}. See the runbook's outcome table.")
    def ended() -> None:
        if fails:
            raise AirflowFailException(f"the night ended {label}: see the run note and the outcome task's log")

    return ended()


@dag(
    dag_id=DAG_ID,
    # Airflow's cron data intervals; run ids name the day processed (scheduled__day_D, not D+1).
    schedule=NightlyTimetable("0 0 * * *", timezone="UTC"),
    start_date=dt.datetime.combine(START.start, dt.time(), tzinfo=dt.timezone.utc),
    catchup=START.catchup,
    max_active_runs=1,
    # A stuck run fails (the champion keeps serving) instead of blocking the next nights.
    dagrun_timeout=dt.timedelta(hours=OPS.run_timeout_hours),
    deadline=DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=dt.timedelta(hours=OPS.run_deadline_hours),
        callback=AsyncCallback(GraphDistillNotifier, kwargs={
            "event": DEADLINE_MISSED, "conn_id": OPS.alert_connection_id, "base_url": OPS.base_url,
            "message": f"{DAG_ID}: a run has not finished {OPS.run_deadline_hours:g} h after it was queued"}),
    ) if os.environ.get("GRAPHDISTILL_DEADLINE_ALERT", "on") != "off" else None,
    # ("off" only for `airflow dags test`, which crashes on DAGs with a deadline: airflow#73428, 3.3.2.)
    default_args={
        # Deployment knob (the demo and tests set 0 so a failing day fails at once).
        "retries": int(os.environ.get("GRAPHDISTILL_TASK_RETRIES", "2")),
        "retry_delay": dt.timedelta(seconds=int(os.environ.get("GRAPHDISTILL_RETRY_DELAY_S", "300"))),
        "retry_exponential_backoff": True,
        # Tasks return small references; their summaries are logged by the stages (no multi-KB "Returned value").
        "show_return_value_in_logs": False,
        "on_failure_callback": GraphDistillNotifier(conn_id=OPS.alert_connection_id, base_url=OPS.base_url),
    },
    params={
        # First in the trigger form. Null is allowed only because Airflow refuses a scheduled DAG whose
        # params lack a valid default; a manual run without a day is refused when triggered (the plugin's
        # RequireManualRunDay: trigger form and REST API) and fails at once otherwise (run_day).
        "day": Param(None, type=["null", "string"], format="date", title="Day to process (required for manual runs)",
                     description="YYYY-MM-DD: the day whose landing partition this run processes (trained on the "
                                 "window ending the day before, judged on this day). Manual runs must set it: "
                                 "without it the trigger is refused. Scheduled and backfill runs leave it empty "
                                 "and process their data interval's start"),
        "root": Param(default_root(), type="string",
                      description="artifact root (landing, accepted, quarantine, features, graphs, models, registry)"),
        "config_file": Param(default_config_file(), type="string",
                             description="pipeline config YAML (gates: config/gates.yaml)"),
        "overrides": Param({}, type="object", description='dotted config overrides, e.g. {"teacher.epochs": 5}'),
    },
    tags=["graphdistill", "recsys"],
    doc_md=(Path(__file__).with_name("RUNBOOK.md")).read_text()
    + f"\n\n**Schedule start**: {START.start} ({START.source}); catch-up {'on' if START.catchup else 'off'}.",
)
def gnn_recsys_nightly():
    # One XCom per stage (multiple_outputs): each task is handed only what it reads.
    @task(multiple_outputs=True)
    def catalog_inputs() -> dict:
        """What validate, features, graph and teacher read besides their upstream results, resolved once
        from the catalog for the night and handed to each as references: validate's history (every
        accepted and quarantined day before the run's day), the training and feature windows (accepted
        days before it), the ID maps and previous graph, the LightGCN teacher's warm start."""
        from components.pipeline import night_inputs

        return _in_run("catalog_inputs", lambda day, cfg, _: night_inputs(day, cfg))

    @task  # idempotent: a transient read error of the landing store is worth a retry
    def ingest() -> dict:
        """Reads every file of the day's landing partition into staging (files read or skipped, with why)."""
        return _run("ingest")

    @task  # a failed validation raises AirflowFailException: quarantined, never retried
    def validate(staged: dict, reads: dict) -> dict:
        """The data contract (Great Expectations) and anomaly checks against the earlier days it is given;
        a failing day is quarantined whole, with its report, and nothing downstream runs on it."""
        return _run("validate", reads=reads, staged=staged)

    @task
    def features(accepted: dict, reads: dict) -> dict:
        """Feast: applies feature_repo/ and materializes the users' recent items into the online store."""
        return _run("features", reads=reads, accepted=accepted)

    @task
    def graph(accepted: dict, reads: dict) -> dict:
        """The user-item graph (DGL) over the rolling window ending the day before, IDs stable across days
        (the window's accepted days and the ID maps it extends are logged and kept in its lineage)."""
        return _run("graph", reads=reads, accepted=accepted)

    @task(execution_timeout=dt.timedelta(hours=6), queue=GPU_QUEUE)
    def teacher(graph: dict, reads: dict) -> dict:
        """The large teacher (graph filter, closed form, or LightGCN) recomputed on the new graph."""
        return _run("teacher", reads=reads, graph=graph)

    @task(execution_timeout=dt.timedelta(hours=3), queue=GPU_QUEUE)
    def distill(graph: dict, teacher: dict) -> dict:
        """The small student, distilled from the teacher's rankings."""
        return _run("distill", graph=graph, teacher=teacher)

    @task(execution_timeout=dt.timedelta(hours=3), queue=GPU_QUEUE)
    def prune(graph: dict, teacher: dict, student: dict) -> dict:
        """Pruning and fine-tuning, and the size ladder: the smallest rung that keeps the teacher ships."""
        return _run("prune", graph=graph, teacher=teacher, student=student)

    @task
    def export(graph: dict, model: dict) -> dict:
        """ONNX export of the shipped student (quantized tables), checked against PyTorch."""
        return _run("export", graph=graph, model=model)

    @task(queue=GPU_QUEUE)
    def convert(export: dict) -> dict:
        """The serving engine: TensorRT on a GPU, else ONNX Runtime (named in every record); parity and latency."""
        return _run("convert", export=export)

    # evaluate judges the engine convert built; gate -> register -> promote hand on what they decided.
    @task
    def evaluate(engine: dict) -> dict:
        """Candidate, teacher, champion and popularity on the same fresh day, as served, per user."""
        return _run("evaluate", engine)

    @task
    def gate(evaluation: dict) -> dict:
        """Writes the blessing: every gate's n, value, interval, threshold and verdict."""
        return _run("gate", evaluation)

    @task
    def register(blessing: dict) -> dict:
        """Registers the judged candidate (blessed or not) under its candidate id, and on a night that
        falls back to popularity the popularity version."""
        return _run("register", blessing)

    @task.short_circuit(ignore_downstream_trigger_rules=False)
    def blessed(registration: dict) -> bool:
        """Short-circuits promote unless the gates blessed the candidate or the night falls back to
        popularity (the champion conclusively lost to it); the report still runs."""
        return goes_to_promote(registration)

    @task(outlets=[CHAMPION])
    def promote(registration: dict) -> dict:
        """Compare-and-swap under the registry lock (of the candidate, or of the night's popularity
        fallback); a version that may not be promoted (stale, historical day, rolled back) skips this
        task with the reason (and no Asset event)."""
        decision = _run("promote", registration)
        if not decision["promoted"]:
            what = ("candidate {} blessed but not promoted" if decision["outcome"] == "not_promoted"
                    else "popularity fallback {} not promoted").format(decision["version"])
            reason = (f"{what}: {decision['reason']}; "
                      f"champion stays {decision['champion_version']}")
            log.warning("SKIPPED promote: %s", reason)
            raise AirflowSkipException(reason)
        announce_champion(get_current_context(), decision)
        return decision

    @task(trigger_rule="none_failed")
    def report() -> dict:
        """The run report (HTML): outcome, gates with intervals, evaluation, curves, lineage."""
        return _run("report")

    # Runs last whatever happened (a teardown does not change the run's state): the decision, visible.
    @teardown
    @task(outlets=[NIGHTLY_OUTCOME])
    def outcome() -> dict:
        """The night's decision: first log line, run note, Asset event, metrics and alerts (once each)."""
        return publish_outcome(get_current_context())

    # The night's decision as a row of the grid: exactly one of these runs (green; red for a night that
    # failed), the others are skipped, so promoted, rejected and inconclusive nights differ at a glance.
    @task.branch(trigger_rule="all_done")
    def decision() -> str:
        """Picks the row of the outcome that happened (from the outcome task's result)."""
        return ended_as(get_current_context())

    ends = [_night_ended(kind, fails) for kind, fails in NIGHT_ENDS]

    # Each task builds on its upstream tasks' results (references: kind, day, version, path). What the
    # night reads besides is resolved once, before validate: validate writes none of it (its history and
    # the windows end the day before), so validating the day changes none of it.
    night = catalog_inputs()
    accepted = validate(ingest(), night["validate"])
    built_graph = graph(accepted, night["graph"])
    features_done = features(accepted, night["features"])
    built_teacher = teacher(built_graph, night["teacher"])
    student = distill(built_graph, built_teacher)
    built_engine = convert(export(built_graph, prune(built_graph, built_teacher, student)))
    registration = register(gate(evaluate(built_engine)))
    reported = report()
    blessed(registration) >> promote(registration) >> reported
    [reported, features_done] >> outcome() >> decision() >> ends


gnn_recsys_nightly()
