"""Scheduled run ids name the day the run processes (issue 18, Why 2: ``scheduled__2026-01-05...``
processed 2026-01-04). The runs are created by Airflow's own scheduler code
(SchedulerJobRunner._create_dag_runs) from the DAG as the dag-processor serializes it, on a real
metadata database: the plugin-registered timetable must survive serialization, keep catch-up from the
first landed day, and the plugin must still derive each run's day."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from components.cli import airflow_bin, airflow_env

# Runs in its own process: Airflow reads its home, database and plugins folder once per process.
SERIALIZE_DAGS = """
from airflow.dag_processing.bundles.manager import DagBundlesManager
from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
DagBundlesManager().sync_bundles_to_db()
bag = DagBag()
assert not bag.import_errors, bag.import_errors
sync_bag_to_db(bag, "dags-folder", None)  # what the dag-processor does: serialize through the plugin's timetable
"""
CREATE_TWO_SCHEDULED_RUNS = SERIALIZE_DAGS + """
import json
from sqlalchemy import select
from airflow.jobs.job import Job
from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
from airflow.models.dag import DagModel
from airflow.models.dagrun import DagRun
from airflow.models.serialized_dag import SerializedDagModel
from airflow.utils.session import create_session
from airflow.utils.state import DagRunState
from graphdistill_airflow import plugin

DAG = "gnn_recsys_nightly"
runner = SchedulerJobRunner(job=Job())
for night in range(2):
    with create_session() as session:
        model = session.scalar(select(DagModel).where(DagModel.dag_id == DAG))
        model.is_paused = False
        runner._create_dag_runs([model], session)
        session.flush()
        for run in session.scalars(select(DagRun).where(DagRun.dag_id == DAG)):
            run.set_state(DagRunState.SUCCESS)  # the night ended: the next may start (max_active_runs=1)
        session.flush()  # Airflow's sessions do not autoflush
        runner._set_exceeds_max_active_runs(dag_model=model, session=session)
with create_session() as session:
    runs = session.scalars(select(DagRun).where(DagRun.dag_id == DAG).order_by(DagRun.id)).all()
    rows = [[r.run_id, str(getattr(r.run_type, "value", r.run_type)), r.data_interval_start.date().isoformat()] for r in runs]
    timetable = type(SerializedDagModel.get_dag(DAG, session=session).timetable).__name__
print(json.dumps({"timetable": timetable,
                  "runs": [[*row, plugin._run_context(DAG, row[0])[1]] for row in rows]}))
"""


def test_scheduler_created_runs_are_named_after_the_day_they_process(tmp_path):
    for day in ("2026-03-02", "2026-03-03"):  # catch-up starts at the first landed day
        (tmp_path / "landing" / f"date={day}").mkdir(parents=True)
    env = {**airflow_env(tmp_path), "GRAPHDISTILL_ROOT": str(tmp_path)}
    subprocess.run([airflow_bin(), "db", "migrate"], env=env, check=True, capture_output=True)
    done = subprocess.run([sys.executable, "-c", CREATE_TWO_SCHEDULED_RUNS], env=env, capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-4000:]
    created = json.loads(done.stdout.strip().splitlines()[-1])
    assert created["timetable"] == "NightlyTimetable"  # deserialized by the scheduler through the plugin
    # run id, run type, data interval start, the day the plugin (and the tasks: run_day) derive
    assert created["runs"] == [
        ["scheduled__day_2026-03-02", "scheduled", "2026-03-02", "2026-03-02"],
        ["scheduled__day_2026-03-03", "scheduled", "2026-03-03", "2026-03-03"],
    ]


def test_manual_run_ids_stay_airflows():
    """A manual run names its day in the conf, which the timetable never sees: its id stays Airflow's."""
    import pendulum
    from airflow.timetables.base import DataInterval
    from airflow.utils.types import DagRunType

    from graphdistill_airflow.timetable import NightlyTimetable

    timetable = NightlyTimetable("0 0 * * *", timezone="UTC")
    after = pendulum.datetime(2026, 3, 5, 13, 30, tz="UTC")
    interval = DataInterval(pendulum.datetime(2026, 3, 4, tz="UTC"), pendulum.datetime(2026, 3, 5, tz="UTC"))
    assert timetable.generate_run_id(run_type=DagRunType.MANUAL, run_after=after, data_interval=interval) == \
        "manual__2026-03-05T13:30:00+00:00"
    assert timetable.generate_run_id(run_type=DagRunType.BACKFILL_JOB, run_after=after, data_interval=interval) == \
        "backfill__day_2026-03-04"
    assert NightlyTimetable.deserialize(timetable.serialize()).serialize() == timetable.serialize()
