"""What the nightly DAG's tasks do around the pipeline stages: the run's day, the champion Asset
event, and the night's outcome published where ops look. Called from dags/gnn_recsys_nightly.py
with the task's Airflow context; the decisions themselves come from components.decide.outcome."""

from __future__ import annotations

import logging
from typing import Any, NoReturn

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from graphdistill_airflow.assets import CHAMPION, NIGHTLY_OUTCOME

log = logging.getLogger(__name__)


def fail_for_good(error: Exception) -> NoReturn:
    """Fail the task now (no retry) with ``error``'s message, once. Called while handling ``error``:
    raised from None, because the chained traceback printed the message twice more; the alert
    notifier still finds ``error`` (``__context__``)."""
    raise AirflowFailException(str(error)) from None


def context_day(context: dict[str, Any]) -> str:
    """The day this run processes (components.decide.outcome.run_day); a manual run without a day fails here."""
    from components.decide.outcome import RunDayError, run_day

    run = context["dag_run"]
    try:
        return run_day(str(getattr(run.run_type, "value", run.run_type)), context.get("data_interval_start"),
                       context["params"].get("day"))
    except RunDayError as exc:
        fail_for_good(exc)


# The grid's terminal rows: (outcome kind, whether the run fails with it). NOT RUN is a run that never
# knew its day or config (components.decide.outcome has no record for it).
NOT_RUN = "not_run"
NIGHT_ENDS = (("promoted", False), ("rejected", False), ("inconclusive", False), ("not_promoted", False),
              ("skipped", False), ("quarantined", True), ("incomplete", True), (NOT_RUN, True),
              ("fallback_popularity", False))


def ended_as(context: dict[str, Any]) -> str:
    """The terminal task of the night's outcome (the outcome task's result), NOT RUN without one."""
    published = context["ti"].xcom_pull(task_ids="outcome")
    kind = published["kind"] if isinstance(published, dict) else NOT_RUN
    log.info("the night ended %s: row %r of the grid", kind.upper(), kind)
    return kind


def goes_to_promote(registration: dict[str, Any]) -> bool:
    """Whether the promote task runs on the register task's result: a blessed candidate, or the
    night's popularity fallback (registered when the champion conclusively lost to popularity, or
    there is none yet, and the candidate did not qualify); otherwise the champion keeps serving, said
    in the log."""
    if registration.get("fallback_version"):
        log.warning("candidate %s %s and champion %s: promote decides the popularity fallback %s",
                    registration["version"], registration["status"],
                    f"{registration['judged_against']} worse than popularity" if registration["judged_against"]
                    else "none yet", registration["fallback_version"])
        return True
    if not registration["blessed"]:
        log.warning("candidate %s NOT promoted (%s by the gates; judged against %s; champion %s keeps serving)",
                    registration["version"], registration["status"], registration["judged_against"],
                    registration["champion_version"])
    return bool(registration["blessed"])


def announce_champion(context: dict[str, Any], promotion: dict[str, Any]) -> None:
    """Attach the new champion's metadata to the promote task's CHAMPION Asset event; a promotion
    that moved nothing (re-run of a promoted day) is skipped, with its reason, and emits no event."""
    from components.core.config import default_root
    from components.decide.outcome import run_outcome
    from components.core.remote import hydrated

    if not promotion["promoted"]:
        reason = f"champion unchanged ({promotion['reason']}); no champion Asset event"
        log.warning("SKIPPED promote event for %s: %s", promotion["day"], reason)
        raise AirflowSkipException(reason)
    root = context["params"].get("root") or default_root()
    layout = hydrated(root)
    outcome = run_outcome(layout, promotion["day"], context["run_id"])
    context["outlet_events"][CHAMPION].extra = {
        "version": promotion["version"], "day": promotion["day"], "previous": promotion["previous_champion"],
        "outcome": outcome.kind,  # promoted, or fallback_popularity (the popularity version serves)
        "metrics": outcome.metrics, "gates": outcome.gates, "runtime": outcome.runtime,
        "registry": str(layout.registry()), "root": str(root),  # s3://...: its URI, not this worker's copy
        "report": f"/graphdistill/runs/{context['dag'].dag_id}/{context['run_id']}/report.html",
    }
    log.info("champion Asset event: %s -> %s for %s", promotion["previous_champion"], promotion["version"],
             promotion["day"])


def publish_outcome(context: dict[str, Any]) -> dict[str, Any]:
    """The night's decision, first in the log, then where ops look: the run note, the nightly-outcome
    Asset event, metrics, and alerts (quarantined day, stale champion, champion worse than popularity)."""
    from components.core.config import ConfigError, default_config_file, load_config
    from components.decide.outcome import champion_day, note_markdown, run_outcome
    from components.pipeline import resolve
    from components.core.remote import hydrated
    from graphdistill_airflow import alerts
    from graphdistill_airflow.metrics import emit_outcome_metrics
    from graphdistill_airflow.notes import write_run_note

    params, dag_id, run_id = context["params"], context["dag"].dag_id, context["run_id"]
    try:
        cfg = resolve(params.get("root"), params.get("config_file"), params.get("overrides"))
    except ConfigError as exc:  # a typo in the run's overrides: the run never ran, say which key
        ops = load_config(default_config_file()).ops
        write_run_note(dag_id, run_id, f"**NOT RUN** {exc}"[:1000], ops.api_connection_id)
        fail_for_good(exc)
    try:
        day = context_day(context)
    except AirflowFailException as exc:  # a misuse (no or wrong day): say so on the run itself
        write_run_note(dag_id, run_id, f"**NOT RUN** {exc}"[:1000], cfg.ops.api_connection_id)
        raise
    layout = hydrated(cfg.root)
    outcome = run_outcome(layout, day, run_id)
    log.info("OUTCOME %s", outcome.headline)
    if outcome.report or outcome.validation_report:
        log.info("reports: %s", ", ".join(filter(None, (outcome.report, outcome.validation_report))))
    context["outlet_events"][NIGHTLY_OUTCOME].extra = outcome.as_dict()
    try:
        write_run_note(dag_id, run_id, note_markdown(outcome), cfg.ops.api_connection_id)
    except OSError as exc:  # HTTP and connection errors: the note is one display of many, keep going
        log.error("DAG-run note NOT written through connection %r: %s (the Asset event, metrics and alerts "
                  "still go out; check the connection's URL, user and password)", cfg.ops.api_connection_id, exc)
    emit_outcome_metrics(outcome)
    url = alerts.run_url(cfg.ops.base_url, dag_id, run_id)
    for event, text, details in night_alerts(outcome, run_id, champion_day(layout), cfg, url):
        alerts.send_alert(event, text, details, cfg.ops.alert_connection_id)
    return outcome.as_dict()


def night_alerts(outcome, run_id: str, trained_for: str | None, cfg,
                 url: str | None = None) -> list[tuple[str, str, dict[str, Any]]]:
    """The night's alerts as (event, text, details), each at most once per run (publish_outcome is
    the run's last task): a quarantined day, a stale champion (``trained_for``: its day), a champion
    that conclusively lost to popularity on the day (with the numbers). ``url``: the run in the UI."""
    from components.decide.outcome import QUARANTINED, nights_since_promotion
    from graphdistill_airflow import alerts

    day = outcome.day
    details = {"day": day, "run_id": run_id, "kind": outcome.kind, "url": url}
    out = []
    if outcome.kind == QUARANTINED:
        out.append((alerts.QUARANTINED, outcome.headline, details))
    nights = nights_since_promotion(trained_for, day)
    if nights is not None and nights >= cfg.ops.stale_champion_nights:
        out.append((alerts.STALE_CHAMPION, f"the champion was trained for {trained_for}, {nights} nights before {day} "
                    f"(alert at {cfg.ops.stale_champion_nights}); last night: {outcome.headline}",
                    {**details, "nights": nights}))
    if outcome.champion_worse_than_popularity:
        health = outcome.champion_health
        kept = outcome.champion_after == health["champion_version"]
        out.append((alerts.CHAMPION_WORSE_THAN_POPULARITY,
                    f"champion worse than popularity on {day}: champion {health['champion_version']} as served, "
                    f"{health['metric']} {health['value']:.4f} vs popularity {health['baseline_value']:.4f} "
                    f"({health['relative_change']:+.1%}, {cfg.gates.confidence_level:.0%} CI "
                    f"[{health['ci_low']:+.1%}, {health['ci_high']:+.1%}], {health['n']} {health['segment']} users); "
                    f"{'it keeps serving' if kept else 'replaced by ' + str(outcome.champion_after)}; "
                    f"last night: {outcome.headline}",
                    {**details, "champion": health["champion_version"], "champion_after": outcome.champion_after,
                     "champion_health": health}))
    return out
