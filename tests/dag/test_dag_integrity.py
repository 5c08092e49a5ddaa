"""The DAG parses, has the expected tasks and edges, and imports nothing heavy at parse time."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAG_FILE = REPO / "dags" / "gnn_recsys_nightly.py"
EXPECTED_EDGES = {
    ("ingest", "validate"), ("validate", "features"), ("validate", "graph"), ("graph", "teacher"),
    # what they read besides their upstream results, resolved once for the night (references)
    ("catalog_inputs", "validate"), ("catalog_inputs", "features"), ("catalog_inputs", "graph"),
    ("catalog_inputs", "teacher"),
    ("teacher", "distill"), ("distill", "prune"), ("prune", "export"), ("export", "convert"),
    # data edges: distill, prune and export build on the graph too, prune on the teacher too
    ("graph", "distill"), ("graph", "prune"), ("graph", "export"), ("teacher", "prune"),
    ("convert", "evaluate"), ("evaluate", "gate"), ("gate", "register"), ("register", "blessed"),
    ("register", "promote"), ("blessed", "promote"), ("promote", "report"), ("report", "outcome"),
    ("features", "outcome"), ("outcome", "decision"),
    *{("decision", kind) for kind in ("promoted", "rejected", "inconclusive", "not_promoted", "skipped",
                                      "quarantined", "incomplete", "not_run", "fallback_popularity")},
}


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow_home")
    os.environ.setdefault("AIRFLOW_HOME", str(home))
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    from airflow.dag_processing.dagbag import DagBag

    # A root whose first landed day is 2026-03-02: the schedule starts there (not on a hard-coded date).
    root = tmp_path_factory.mktemp("root")
    for day in ("2026-03-05", "2026-03-02"):
        (root / "landing" / f"date={day}").mkdir(parents=True)
    saved = {k: os.environ.pop(k, None) for k in ("GRAPHDISTILL_ROOT", "GRAPHDISTILL_START_DATE")}
    os.environ["GRAPHDISTILL_ROOT"] = str(root)
    try:
        return DagBag(dag_folder=str(DAG_FILE.parent))
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None)
            if value is not None:
                os.environ[key] = value


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert "gnn_recsys_nightly" in dagbag.dags


def test_tasks_and_edges(dagbag):
    dag = dagbag.dags["gnn_recsys_nightly"]
    edges = {(t.task_id, d) for t in dag.tasks for d in t.downstream_task_ids}
    assert edges == EXPECTED_EDGES
    assert dag.task_dict["report"].trigger_rule == "none_failed"
    assert dag.task_dict["blessed"].ignore_downstream_trigger_rules is False  # report still runs


def test_schedule_catchup_and_params(dagbag):
    dag = dagbag.dags["gnn_recsys_nightly"]
    assert dag.catchup is True and dag.max_active_runs == 1
    assert dag.start_date.date().isoformat() == "2026-03-02"  # the first landed day
    assert "Schedule start**: 2026-03-02 (first landed day" in dag.doc_md
    assert type(dag.timetable).__name__ == "NightlyTimetable"  # run ids name the day (test_nightly_timetable)
    assert list(dag.params.keys()) == ["day", "root", "config_file", "overrides"]  # day first in the form
    assert dag.params["day"] is None  # scheduled runs take their data interval; manual runs must name it


def test_alerts_deadline_timeout_and_assets(dagbag):
    from components.core.config import load_config
    from graphdistill_airflow.alerts import DEADLINE_MISSED, GraphDistillNotifier

    dag = dagbag.dags["gnn_recsys_nightly"]
    ops = load_config().ops  # config/pipeline.yaml
    failure = dag.default_args["on_failure_callback"]
    assert isinstance(failure, GraphDistillNotifier) and failure.conn_id == ops.alert_connection_id
    assert dag.dagrun_timeout.total_seconds() == ops.run_timeout_hours * 3600
    (deadline,) = dag.deadline if isinstance(dag.deadline, list) else [dag.deadline]
    assert type(deadline.reference).__name__ == "DagRunQueuedAtDeadline"
    assert deadline.interval.total_seconds() == ops.run_deadline_hours * 3600
    # The triggerer imports the notifier by path and awaits it with these kwargs.
    assert deadline.callback.path == "graphdistill_airflow.alerts.GraphDistillNotifier"
    assert deadline.callback.kwargs["event"] == DEADLINE_MISSED
    assert [a.name for a in dag.task_dict["promote"].outlets] == ["graphdistill_champion"]
    outcome = dag.task_dict["outcome"]
    assert outcome.is_teardown and [a.name for a in outcome.outlets] == ["graphdistill_nightly_outcome"]
    assert "Run one day by hand" in dag.doc_md and "Roll back" in dag.doc_md


def test_champion_refresh_dag_is_scheduled_on_the_champion_asset(dagbag):
    dag = dagbag.dags["champion_serving_refresh"]
    assert [a.name for a in dag.timetable.asset_condition.objects] == ["graphdistill_champion"]
    assert [a.name for a in dag.task_dict["export_triton_repository"].inlets] == ["graphdistill_champion"]
    assert dag.is_paused_upon_creation is False  # serving follows promotions without a manual unpause


def test_dag_file_imports_no_heavy_library_at_parse_time():
    code = (
        "import runpy, sys; runpy.run_path(sys.argv[1]);"
        "heavy = [m for m in ('torch', 'dgl', 'feast', 'great_expectations', 'onnx', 'pandas') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(DAG_FILE)], capture_output=True, text=True,
                         env={**os.environ, "AIRFLOW__CORE__LOAD_EXAMPLES": "False"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1:] in ([], [""]), f"heavy imports at parse time: {out.stdout}"


def test_components_never_import_airflow():
    offenders = [
        str(p) for p in (REPO / "components").rglob("*.py")
        if any(line.lstrip().startswith(("import airflow", "from airflow")) for line in p.read_text().splitlines())
    ]
    assert offenders == []


def test_every_task_has_docs_and_no_task_logs_its_return_value(dagbag):
    dag = dagbag.dags["gnn_recsys_nightly"]
    undocumented = [t.task_id for t in dag.tasks if not (t.doc_md or t.doc)]
    assert undocumented == []
    assert {t.task_id: t.show_return_value_in_logs for t in dag.tasks if t.show_return_value_in_logs is not False} == {}
