"""Champion serving refresh: whenever the nightly DAG promotes a champion (an event on the
``graphdistill_champion`` Asset), write the Triton model repository for it
(components.ship.serving.export_triton_repository) where Triton loads it (``ops.triton_repository``).

It acts on the newest champion event only: queued events can batch into one run (airflow#56050),
and only the newest champion matters for serving. Wiring only; heavy imports inside the task.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import sys
from pathlib import Path

from airflow.sdk import dag, get_current_context, task

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # the repo's library, when not pip-installed
    sys.path.insert(0, str(REPO_ROOT))

from graphdistill_airflow.alerts import GraphDistillNotifier  # noqa: E402
from graphdistill_airflow.assets import CHAMPION  # noqa: E402

log = logging.getLogger(__name__)


@dag(
    dag_id="champion_serving_refresh",
    schedule=[CHAMPION],
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=False,  # serving must follow every promotion from the first one on
    default_args={"retries": 2, "retry_delay": dt.timedelta(minutes=2), "on_failure_callback": GraphDistillNotifier()},
    tags=["graphdistill", "serving"],
    doc_md=__doc__,
)
def champion_serving_refresh():
    @task(inlets=[CHAMPION])
    def export_triton_repository() -> dict:
        from components.core.config import default_config_file, load_config
        from components.decide.registry import champion
        from components.ship.serving import export_triton_repository as export
        from components.ship.triton import triton_repository
        from components.core.remote import hydrated

        context = get_current_context()
        triggering = context["triggering_asset_events"].get(CHAMPION, [])
        newest = context["inlet_events"][CHAMPION].ascending(False).limit(1)
        if not newest:
            raise LookupError("no graphdistill_champion event yet: nothing to serve")
        event = newest[0].extra
        log.info("champion event %s for day %s (newest of %d triggering event(s)); report %s",
                 event["version"], event["day"], len(triggering), event.get("report"))
        layout = hydrated(event["root"])  # an s3:// root: this worker's copy, brought up to date
        serving = champion(layout)
        if serving is None or serving.version != event["version"]:
            # The registry pointer is the truth (e.g. a rollback after the promotion): serve it.
            log.warning("champion pointer is %s, not the event's %s: exporting the pointer's champion",
                        serving.version if serving else None, event["version"])
        out = triton_repository(layout, load_config(default_config_file()).ops.triton_repository)
        models = export(layout, out)
        # Triton in explicit model-control mode (the stack, deploy/docker-compose.yml): load the new version
        # and check it; a failure raises (alert), the previous version keeps serving.
        triton_url = os.environ.get("GRAPHDISTILL_TRITON_URL")
        if triton_url and serving is not None:
            from components.ship.triton import refresh_champion
            models.append(out / refresh_champion(triton_url, out, Path(serving.path), serving.version).model)
        return {"version": serving.version if serving else None, "event_version": event["version"],
                "repository": str(out), "models": [p.name for p in models]}

    export_triton_repository()


champion_serving_refresh()
