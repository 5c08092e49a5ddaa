"""The nightly's schedule: Airflow's cron data intervals, with run ids that name the day processed.

Airflow names a scheduled run after its ``run_after`` (the interval's end), so the run that
processes 2026-01-04 was ``scheduled__2026-01-05T00:00:00+00:00``. This timetable names it
``scheduled__day_2026-01-04`` (the day components.decide.outcome.run_day derives from the data
interval); intervals, catch-up and backfill are Airflow's CronDataIntervalTimetable unchanged.
A core timetable: the plugin registers it (GraphDistillPlugin.timetables) so the dag-processor can
serialize it and the scheduler deserialize it.
"""

from __future__ import annotations

from typing import Any

from airflow.timetables.base import DataInterval
from airflow.timetables.interval import CronDataIntervalTimetable
from airflow.utils.types import DagRunType

from components.decide.outcome import day_of_interval

# Run types whose day is their data interval's start (manual runs name theirs in the conf).
_INTERVAL_RUNS = (DagRunType.SCHEDULED, DagRunType.BACKFILL_JOB)


class NightlyTimetable(CronDataIntervalTimetable):
    """Cron data intervals; scheduled (and, where Airflow asks the timetable, backfill) run ids
    ``<type>__day_<YYYY-MM-DD>``. ``day_`` not ``day=``: '=' fails Airflow's run-id pattern
    ([scheduler] allowed_run_id_pattern), checked in create_dagrun."""

    def generate_run_id(self, *, run_type: DagRunType, run_after: Any, data_interval: DataInterval | None,
                        **extra: Any) -> str:
        if run_type in _INTERVAL_RUNS and data_interval is not None:
            return run_type.generate_run_id(suffix=f"day_{day_of_interval(data_interval.start)}")
        return super().generate_run_id(run_type=run_type, run_after=run_after, data_interval=data_interval, **extra)
