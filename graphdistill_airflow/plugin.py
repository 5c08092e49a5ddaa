"""The GraphDistill Airflow UI plugin: a night's decision and its reports one click from the run.

A FastAPI app mounted by the api-server at ``/graphdistill`` (behind Airflow's auth: the UI's
session cookie or an API bearer token, and the user's read access to the nightly's runs; other
DAG ids get 404):

    /graphdistill/runs/{dag_id}/{run_id}                 the run's outcome (HTML; ``.json`` for machines)
    /graphdistill/runs/{dag_id}/{run_id}/report.html     the run report (gates, curves) and its PNGs
    /graphdistill/runs/{dag_id}/{run_id}/validation.html the validation or quarantine report
    /graphdistill/models                                 champion, recent nights, promotion history, rollback

and two external views: "GraphDistill outcome" on every DAG run, "Models" in the navigation. It also
registers the nightly's timetable and refuses, when triggered, a manual run without a ``day``.
Everything it shows comes from components.decide.outcome (the run's day, its outcome, where its files are).
"""

from __future__ import annotations

import html
import json
import urllib.parse
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.core_api.security import requires_access_dag
from airflow.plugins_manager import AirflowPlugin

from graphdistill_airflow.timetable import NightlyTimetable

NIGHTLY_DAG_ID = "gnn_recsys_nightly"
URL_PREFIX = "/graphdistill"
COLOURS = {"promoted": "#1b7f3b", "rejected": "#c0392b", "quarantined": "#8e44ad", "not_promoted": "#d68910",
           "inconclusive": "#7f8c8d", "skipped": "#5d6d7e", "not_run": "#000000", "running": "#1565c0",
           "incomplete": "#b03a2e", "rolled_back": "#6e2c00", "fallback_popularity": "#b9770e"}

# What the list of gates that did not pass means, per outcome (an INCONCLUSIVE night failed none).
GATE_HEADINGS = {"rejected": "Gates that failed (or could not decide)", "inconclusive": "Gates that could not decide",
                 "promoted": "Diagnostic gates overridden by a conclusive win",
                 "not_promoted": "Gates that did not pass",
                 "fallback_popularity": "Gates the candidate failed (popularity serves instead)"}

app = FastAPI(title="GraphDistill", description="Nightly outcomes, run reports and the champion")
# Every page serves the nightly's records, so access is checked for the nightly, whatever DAG id
# the URL names (a reader of another DAG with matching run ids must not read quarantined rows).
ReadRun = Depends(requires_access_dag(method="GET", access_entity=DagAccessEntity.RUN, param_dag_id=NIGHTLY_DAG_ID))


def _dag_run(dag_id: str, run_id: str) -> Any:
    from sqlalchemy import select

    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        run = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
        if run is None:
            raise HTTPException(404, f"no run {run_id!r} of DAG {dag_id!r}")
        session.expunge(run)
        return run


def _run_context(dag_id: str, run_id: str) -> tuple[Any, str]:
    """The run's artifact layout and day, the same way its tasks resolved them."""
    from components.core.config import default_root
    from components.decide.outcome import RunDayError, run_day
    from components.core.remote import hydrated

    if dag_id != NIGHTLY_DAG_ID:
        raise HTTPException(404, f"GraphDistill records belong to DAG {NIGHTLY_DAG_ID!r}, not {dag_id!r}")
    run = _dag_run(dag_id, run_id)
    conf = run.conf or {}
    try:
        day = run_day(str(getattr(run.run_type, "value", run.run_type)), run.data_interval_start, conf.get("day"))
    except RunDayError as exc:
        raise HTTPException(409, str(exc)) from exc
    return hydrated(conf.get("root") or default_root()), day


def _outcome(dag_id: str, run_id: str):
    from components.decide.outcome import run_outcome

    layout, day = _run_context(dag_id, run_id)
    return layout, run_outcome(layout, day, run_id)


def _page(title: str, body: str) -> HTMLResponse:
    style = ("body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1100px;color:#222}"
             "table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px;"
             "text-align:left}.badge{display:inline-block;color:#fff;padding:.25em .7em;border-radius:4px;"
             "font-weight:bold}.big{font-size:1.6em}a{color:#1565c0}code,pre{background:#f4f4f4;padding:2px 4px}")
    return HTMLResponse(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                        f"<style>{style}</style></head><body>{body}</body></html>")


def _quote(segment: str) -> str:
    return html.escape(urllib.parse.quote(segment, safe=""))


def _badge(kind: str, big: bool = False) -> str:
    return (f"<span class='badge{' big' if big else ''}' style='background:{COLOURS.get(kind, '#555')}'>"
            f"{html.escape(kind.upper().replace('_', ' '))}</span>")


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


@app.get("/runs/{dag_id}/{run_id}.json", dependencies=[ReadRun])
def run_outcome_json(dag_id: str, run_id: str) -> JSONResponse:
    return JSONResponse(_outcome(dag_id, run_id)[1].as_dict())


@app.get("/runs/{dag_id}/{run_id}", dependencies=[ReadRun], response_class=HTMLResponse)
def run_page(dag_id: str, run_id: str) -> HTMLResponse:
    try:
        _, outcome = _outcome(dag_id, run_id)
    except HTTPException as exc:  # a run without a valid day, an unknown run: a page that says so, not JSON
        page = _page(f"GraphDistill: run {run_id}", f"<p>{_badge('not_run', big=True)} &nbsp;run "
                     f"<code>{html.escape(run_id)}</code></p><p class='big'>{html.escape(str(exc.detail))}</p>")
        page.status_code = exc.status_code
        return page
    base = f"{URL_PREFIX}/runs/{_quote(dag_id)}/{_quote(run_id)}"
    return _page(f"GraphDistill {outcome.day}: {outcome.kind}", outcome_body(outcome, run_id, base))


def outcome_body(outcome, run_id: str, base: str) -> str:
    """The outcome tab's HTML body: the decision, the champion's health, gates with their roles."""
    e = html.escape
    links = []
    if outcome.report:
        links.append("<a href='{0}/report.html' target='_blank'>Run report</a> (gates, evaluation, curves)")
    if outcome.validation_report:
        label = "Quarantine report" if outcome.kind == "quarantined" else "Validation report"
        links.append(f"<a href='{{0}}/validation.html' target='_blank'>{label}</a>")
    links.append(f"<a href='{URL_PREFIX}/models' target='_blank'>Models: champion, history, rollback</a>")
    parts = [f"<p>{_badge(outcome.kind, big=True)} &nbsp;<b>day {e(outcome.day)}</b> &nbsp;run <code>{e(run_id)}</code></p>",
             f"<p class='big'>{e(outcome.reason)}</p>"]
    if outcome.champion_worse_than_popularity:
        health = outcome.champion_health
        parts.append(f"<p class='big'><b>Champion worse than popularity</b>: {e(str(health['champion_version']))} "
                     f"{health['metric']} {health['relative_change']:+.1%} [{health['ci_low']:+.1%}, "
                     f"{health['ci_high']:+.1%}] vs popularity on {health['n']} {e(health['segment'])} users</p>")
    if outcome.failed_gates:  # each says its role ([decision] / [diagnostic]) and whether it was overridden
        heading = GATE_HEADINGS.get(outcome.kind, "Gates that did not pass")
        parts.append(f"<h3>{heading}</h3><ul>" + "".join(f"<li>{e(g)}</li>" for g in outcome.failed_gates) + "</ul>")
    if outcome.gate_roles:
        parts.append("<h3>Gates</h3>" + _table(["gate", "role", "verdict"], [
            [e(label), e(role), e(outcome.gates[label].upper() + (" (overridden)" if label in outcome.overridden_gates
                                                                   else ""))]
            for label, role in outcome.gate_roles.items()]))
    if outcome.failed_rules:
        parts.append("<h3>Failed data rules</h3><ul>" + "".join(f"<li>{e(r)}</li>" for r in outcome.failed_rules) + "</ul>")
    if outcome.metrics:
        names = sorted({k for m in outcome.metrics.values() for k in m})
        parts.append("<h3>Key metrics on the fresh day</h3>" + _table(
            ["model", *names], [[e(model), *(f"{m.get(k, float('nan')):.4f}" for k in names)]
                                for model, m in outcome.metrics.items()]))
    facts = [["candidate", outcome.candidate_version], ["champion before", outcome.champion_before],
             ["champion after", outcome.champion_after], ["rows accepted", outcome.rows_accepted],
             ["rows quarantined", outcome.rows_quarantined], ["engine runtime", outcome.runtime]]
    parts.append(_table(["", ""], [[e(k), e(str(v))] for k, v in facts if v is not None]))
    parts.append("<p>" + " &middot; ".join(link.format(base) for link in links) + "</p>")
    return "".join(parts)


@app.get("/runs/{dag_id}/{run_id}/validation.html", dependencies=[ReadRun])
def validation_page(dag_id: str, run_id: str) -> FileResponse:
    from components.decide.outcome import validation_report

    layout, day = _run_context(dag_id, run_id)
    path = validation_report(layout, day)
    if path is None:
        raise HTTPException(404, f"no validation or quarantine report for {day}")
    return FileResponse(path, media_type="text/html")


@app.get("/runs/{dag_id}/{run_id}/{name}", dependencies=[ReadRun])
def report_file(dag_id: str, run_id: str, name: str) -> FileResponse:
    """The run report and the files it links to (PNGs, gates.html), from the run's report folder."""
    from components.decide.outcome import run_report_dir

    layout, day = _run_context(dag_id, run_id)
    folder = run_report_dir(layout, day, run_id)
    path = folder / name
    if Path(name).name != name or not path.is_file():
        raise HTTPException(404, f"{name!r} not found in the report folder of {day}")
    return FileResponse(path)


@app.get("/models", dependencies=[ReadRun], response_class=HTMLResponse)
def models_page(limit: Annotated[int, "recent runs to list"] = 14) -> HTMLResponse:
    from sqlalchemy import select

    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from components.core.config import default_root
    from components.decide.outcome import champion_day, run_outcome
    from components.decide.registry import champion, history, rolled_back
    from components.core.remote import hydrated

    e = html.escape
    with create_session() as session:
        runs = session.scalars(select(DagRun).where(DagRun.dag_id == NIGHTLY_DAG_ID)
                               .order_by(DagRun.id.desc()).limit(limit)).all()
        run_states = [(r.run_id, str(getattr(r.state, "value", r.state))) for r in runs]
    layout = hydrated(default_root())
    taken_back = rolled_back(layout)
    rows = []
    for run_id, state in run_states:
        link = f"<a href='{URL_PREFIX}/runs/{NIGHTLY_DAG_ID}/{_quote(run_id)}'>{e(run_id)}</a>"
        try:
            _, day = _run_context(NIGHTLY_DAG_ID, run_id)
        except HTTPException as exc:  # no valid day: the run never ran (its note says so too)
            rows.append(["–", _badge("not_run"), e(str(exc.detail)[:220]), link])
            continue
        if state in ("queued", "running"):  # no decision yet: say so instead of "a stage failed"
            rows.append([e(day), _badge("running"), f"{e(state)}: the decision is recorded when the run ends", link])
            continue
        badges, reason = night_cells(run_outcome(layout, day, run_id), taken_back)
        rows.append([e(day), badges, e(reason), link])
    current = champion(layout)
    parts = []
    if current:
        parts.append(f"<h2>Champion {e(current.version)}</h2><p>trained for day {e(str(champion_day(layout)))}, "
                     f"promoted {e(current.promoted_at)} ({e(current.reason)}); previous: "
                     f"{e(', '.join(current.previous) or 'none')}</p>")
    else:
        parts.append(f"<h2>No champion yet</h2><p>root {e(str(layout.root))}</p>")
    parts.append(_serving_html(layout, current.version if current else None))
    parts.append("<h2>Recent nights</h2>" + _table(["day", "outcome", "reason", "run"], rows))
    events = [[e(h.get("at", "")), e(h.get("event", "")), e(str(h.get("previous"))), e(h.get("version", "")),
               e(h.get("reason", ""))] for h in reversed(history(layout))]
    parts.append("<h2>Promotion history</h2>" + _table(["at", "event", "from", "to", "reason"], events))
    parts.append("<h2>Roll back</h2><p>Restore the champion the current one replaced (atomic, audited):</p>"
                 f"<pre>graphdistill rollback --root {e(str(layout.root))} --reason \"...\"</pre>"
                 "<p>or promote a specific blessed version: <code>graphdistill promote &lt;version&gt; "
                 "--reason \"...\"</code>. Both tell serving (a champion Asset event through "
                 "<code>GRAPHDISTILL_API_URL</code>); the champion-refresh DAG then exports the new champion.</p>")
    return _page("GraphDistill models", "<h1>GraphDistill models</h1>" + "".join(parts))


def night_cells(outcome, taken_back: dict[str, dict[str, Any]]) -> tuple[str, str]:
    """A night's badges and reason on the Models page; a promotion undone since is marked ROLLED BACK."""
    badges, reason = _badge(outcome.kind), outcome.reason[:220]
    if outcome.kind in ("promoted", "fallback_popularity") and outcome.champion_after in taken_back:
        undo = taken_back[outcome.champion_after]
        badges += " " + _badge("rolled_back")
        reason = f"rolled back {undo.get('at', '')} ({undo.get('reason', '')}); was: {reason}"
    return badges, reason


def _serving_html(layout, champion_version: str | None) -> str:
    """Which version serving answers with: the serving refresh's record in the Triton repository."""
    from components.core.config import default_config_file, load_config
    from components.ship.serving import served_version
    from components.ship.triton import triton_repository

    e = html.escape
    repository = triton_repository(layout, load_config(default_config_file()).ops.triton_repository)
    served = served_version(repository)
    if served is None:
        return f"<p><b>Serving</b>: nothing exported to {e(str(repository))} yet.</p>"
    text = (f"<p><b>Serving answers with {e(served['version'])}</b> (Triton repository {e(str(repository))}, "
            f"exported {e(served.get('exported_at', '?'))})")
    if served["version"] != champion_version:
        text += (f" — <b>not the champion</b>: the serving refresh has not run since the champion changed "
                 f"(it runs on the champion Asset event; <code>graphdistill announce</code> emits one)")
    return text + "</p>"


TRIGGER_PATH = f"/api/v2/dags/{NIGHTLY_DAG_ID}/dagRuns"


def manual_run_refusal(body: bytes) -> str | None:
    """Why a trigger request (the POST body of ``TRIGGER_PATH``) must be refused: a manual run without
    a valid ``day`` in its conf (components.decide.outcome.run_day); None to let Airflow handle it
    (a body that is not JSON: Airflow answers 422 itself)."""
    from components.decide.outcome import RunDayError, run_day

    try:
        request = json.loads(body or b"{}")
    except ValueError:
        return None
    conf = request.get("conf") if isinstance(request, dict) else None
    try:
        run_day("manual", None, conf.get("day") if isinstance(conf, dict) else None)
    except RunDayError as exc:
        return str(exc)
    return None


class RequireManualRunDay:
    """Refuses a manual run of the nightly without a valid ``day`` when it is triggered (HTTP 400, the
    trigger form shows the message), instead of a NOT RUN failure once it runs.

    Why a middleware and not the Param's schema: Airflow validates every run's params with the same
    schema, scheduled runs with the defaults, and refuses a scheduled DAG whose params have no valid
    default (airflow/sdk/definitions/dag.py, DAG._validate_params), so ``day`` must accept null. The UI
    form and REST clients create runs through this endpoint; ``airflow dags trigger`` and ``dags test``
    write to the database directly, and their runs still fail at once naming the command to use."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].endswith(TRIGGER_PATH):
            await self.app(scope, receive, send)
            return
        messages, more = [], True
        while more:  # the whole body, then replayed to Airflow unchanged
            message = await receive()
            messages.append(message)
            more = message.get("type") == "http.request" and message.get("more_body", False)
        refusal = manual_run_refusal(b"".join(m.get("body", b"") for m in messages))
        if refusal:
            await JSONResponse({"detail": refusal}, status_code=400)(scope, receive, send)
            return

        async def replay() -> dict:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


class GraphDistillPlugin(AirflowPlugin):
    name = "graphdistill"
    timetables = [NightlyTimetable]  # the nightly's schedule (run ids name the day processed)
    fastapi_root_middlewares = [{"middleware": RequireManualRunDay, "name": "graphdistill_manual_run_day"}]
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "GraphDistill"}]
    external_views = [
        {"name": "GraphDistill outcome", "href": "graphdistill/runs/{DAG_ID}/{RUN_ID}", "destination": "dag_run",
         "url_route": "graphdistill_outcome"},
        {"name": "Models", "href": "graphdistill/models", "destination": "nav", "url_route": "graphdistill_models",
         "category": "browse"},
    ]
