"""Ops view of real nights: a real api-server with the GraphDistill plugin, real DAG runs, a real webhook.

The api-server runs on loopback while `airflow dags test` runs four days, so the outcome task writes
each run's note through the public REST API. Days: d0 history only (skipped), d1 bootstraps a
champion (promoted), d2 a shuffled-label candidate (rejected; the champion is then 1 night old,
the stale threshold), d3 corrupted (quarantined). Then everything is read back over HTTP, and the
champion-refresh DAG runs on the champion Asset's newest event.
"""

from __future__ import annotations

import html
import json
import subprocess
import urllib.parse
from pathlib import Path

import pytest

from components.cli import airflow_bin, airflow_env, run_dag_day
from components.core.catalog import Layout, latest_run
from graphdistill_airflow.local import api_server
from graphdistill_airflow.stack import free_port

from tests.e2e.alert_receiver import alert_receiver
from tests.e2e.small_world import land_small_world, write_small_world_gates

pytestmark = pytest.mark.e2e

DAYS = ["2026-04-01", "2026-04-02", "2026-04-03", "2026-04-04"]
SMALL = {"teacher.epochs": 10, "teacher.eval_every": 5, "distill.epochs": 10, "prune.finetune_epochs": 2,
         "ops.stale_champion_nights": 1}
BAD = {**SMALL, "distill.shuffle_labels": True}
DAG = "gnn_recsys_nightly"


@pytest.fixture(scope="module")
def ops(tmp_path_factory):
    root = tmp_path_factory.mktemp("ops")
    layout = Layout.at(root)
    land_small_world(layout, DAYS, seed=5)
    gates = {"gates_file": str(write_small_world_gates(root))}
    with alert_receiver() as (alerts_env, received):
        with api_server(root, free_port(), root / "api-server.log") as server:
            env = {**server.task_env(), **alerts_env}
            rcs = {day: run_dag_day(root, day, {"root": str(root), "overrides": {**(BAD if day == DAYS[2] else SMALL), **gates}},
                                    root / f"{day}.log", extra_env=env) for day in DAYS}
            refresh = subprocess.run([airflow_bin(), "dags", "test", "champion_serving_refresh"],
                                     env={**airflow_env(root), **env}, capture_output=True, text=True)
            token = server.token()
            runs = server.get_json(f"/api/v2/dags/{DAG}/dagRuns?order_by=id", token)["dag_runs"]
            yield {"root": root, "layout": layout, "server": server, "token": token, "rcs": rcs, "refresh": refresh,
                   "runs": {r["conf"]["day"]: r for r in runs}, "alerts": list(received)}


def _outcome(ops, day):
    run_id = urllib.parse.quote(ops["runs"][day]["dag_run_id"], safe="")
    return run_id, ops["server"].get_json(f"/graphdistill/runs/{DAG}/{run_id}.json", ops["token"])


def test_every_run_carries_its_decision_as_a_note(ops):
    root = ops["root"]
    assert [ops["rcs"][d] for d in DAYS[:3]] == [0, 0, 0], (root / f"{DAYS[2]}.log").read_text()[-3000:]
    assert ops["rcs"][DAYS[3]] != 0  # a quarantined day is a failed run
    notes = {day: run["note"] or "" for day, run in ops["runs"].items()}
    assert notes[DAYS[0]].startswith(f"**SKIPPED** day {DAYS[0]}") and "teacher: graph" in notes[DAYS[0]]
    assert notes[DAYS[1]].startswith(f"**PROMOTED** day {DAYS[1]}") and "none (bootstrap) ->" in notes[DAYS[1]]
    assert notes[DAYS[2]].startswith(f"**REJECTED** day {DAYS[2]}") and "failed" in notes[DAYS[2]]
    assert notes[DAYS[3]].startswith(f"**QUARANTINED** day {DAYS[3]}") and "expect_column_to_exist" in notes[DAYS[3]]
    assert ops["runs"][DAYS[2]]["state"] == "success" and ops["runs"][DAYS[3]]["state"] == "failed"


ENDS = ("promoted", "rejected", "inconclusive", "not_promoted", "skipped", "quarantined", "incomplete", "not_run",
        "fallback_popularity")


def _task_states(ops, run_id: str) -> dict[str, str]:
    path = f"/api/v2/dags/{DAG}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances"
    return {t["task_id"]: t["state"] for t in ops["server"].get_json(path, ops["token"])["task_instances"]}


def test_the_grid_shows_each_nights_decision_as_its_own_row(ops):
    """Exactly one terminal row runs per night, named after its outcome (red when the run failed)."""
    for day, kind in zip(DAYS, ("skipped", "promoted", "rejected", "quarantined")):
        states = _task_states(ops, ops["runs"][day]["dag_run_id"])
        ran = {end: states[end] for end in ENDS if states[end] != "skipped"}
        assert ran == {kind: "failed" if kind == "quarantined" else "success"}, (day, states)


def test_plugin_serves_a_rejected_runs_outcome_and_report_behind_auth(ops):
    server, token = ops["server"], ops["token"]
    run_id, outcome = _outcome(ops, DAYS[2])
    run_dir = Path(latest_run(ops["layout"], DAYS[2])["dir"])
    blessing = json.loads((run_dir / "blessing.json").read_text())
    blocking = [g for g in blessing["gates"] if g["verdict"] in ("fail", "inconclusive")]
    assert outcome["kind"] == "rejected" and len(outcome["failed_gates"]) == len(blocking) and blessing["failed"]
    assert outcome["champion_after"] == outcome["champion_before"] is not None
    assert server.get(f"/graphdistill/runs/{DAG}/{run_id}", None)[0] == 401  # behind Airflow's auth
    status, page = server.get(f"/graphdistill/runs/{DAG}/{run_id}", token)
    assert status == 200 and b"REJECTED" in page and html.escape(outcome["failed_gates"][0]).encode() in page
    status, report = server.get(f"/graphdistill/runs/{DAG}/{run_id}/report.html", token)
    assert status == 200 and report == (run_dir / "report.html").read_bytes()
    status, png = server.get(f"/graphdistill/runs/{DAG}/{run_id}/training_curves.png", token)
    assert status == 200 and png.startswith(b"\x89PNG")
    assert server.get(f"/graphdistill/runs/{DAG}/{run_id}/..%2Fblessing.json", token)[0] == 404


def test_plugin_serves_a_quarantined_days_rules_and_quarantine_report(ops):
    server, token = ops["server"], ops["token"]
    run_id, outcome = _outcome(ops, DAYS[3])
    (attempt,) = list(ops["layout"].quarantine(DAYS[3]).iterdir())
    assert outcome["kind"] == "quarantined" and outcome["rows_quarantined"] > 0
    assert any(r.startswith("expect_column_to_exist") for r in outcome["failed_rules"])
    status, page = server.get(f"/graphdistill/runs/{DAG}/{run_id}/validation.html", token)
    assert status == 200 and page == (attempt / "report.html").read_bytes()


def test_a_quarantined_days_log_says_its_error_once(ops):
    """Issue 18, Why 8: the validate log printed its error three times (the stage's line, the chained
    DataValidationError, the AirflowFailException). One remains, ending Airflow's own traceback
    (Airflow 3.3 logs every AirflowFailException with log.exception, task_runner.py)."""
    log = (ops["root"] / f"{DAYS[3]}.log").read_text()
    assert log.count(f"validation FAILED for {DAYS[3]}") == 1
    assert log.count("  - FAIL expect_column_to_exist(item_id): observed column missing\n") == 1
    assert "direct cause of the following exception" not in log and "During handling of the above" not in log


def test_models_page_lists_the_champion_the_nights_and_how_to_roll_back(ops):
    status, page = ops["server"].get("/graphdistill/models", ops["token"])
    champion = json.loads((ops["root"] / "registry" / "champion.json").read_text())["version"]
    text = page.decode()
    assert status == 200 and f"Champion {champion}" in text and "graphdistill rollback" in text
    assert all(kind in text for kind in ("PROMOTED", "REJECTED", "QUARANTINED", "SKIPPED"))
    assert f"Serving answers with {champion}" in text and "not the champion" not in text  # the refresh exported it
    plugins = ops["server"].get_json("/api/v2/plugins", ops["token"])["plugins"]
    views = {v["name"]: v for p in plugins if p["name"] == "graphdistill" for v in p["external_views"]}
    assert views["GraphDistill outcome"]["destination"] == "dag_run" and views["Models"]["destination"] == "nav"


def test_champion_asset_has_one_event_per_promotion_with_metadata(ops):
    server, token = ops["server"], ops["token"]
    events = server.get_json("/api/v2/assets/events?order_by=timestamp&limit=100", token)["asset_events"]
    champion_events = [e for e in events if e["name"] == "graphdistill_champion"]
    outcome_events = [e for e in events if e["name"] == "graphdistill_nightly_outcome"]
    (event,) = champion_events  # one promotion (d1): one event
    champion = json.loads((ops["root"] / "registry" / "champion.json").read_text())["version"]
    assert event["extra"]["version"] == champion and event["extra"]["day"] == DAYS[1]
    assert event["extra"]["metrics"]["candidate"]["ndcg@20"] > 0 and event["extra"]["gates"]
    assert event["extra"]["runtime"] == "onnxruntime" and event["extra"]["report"].endswith("/report.html")
    assert [e["extra"]["kind"] for e in outcome_events] == ["skipped", "promoted", "rejected", "quarantined"]


def test_champion_refresh_dag_exports_the_newest_champion_for_triton(ops):
    refresh = ops["refresh"]
    assert refresh.returncode == 0, refresh.stdout[-3000:] + refresh.stderr[-3000:]
    exported = json.loads((ops["root"] / "serving" / "triton_repository" / "graphdistill_version.json").read_text())
    champion = json.loads((ops["root"] / "registry" / "champion.json").read_text())["version"]
    assert exported["version"] == champion and exported["models"]


def test_alerts_reach_the_webhook_for_quarantine_stale_champion_and_failure(ops):
    alerts = ops["alerts"]
    by_event = {}
    for alert in alerts:
        by_event.setdefault(alert["event"], []).append(alert)
    assert [a["day"] for a in by_event["quarantined"]] == [DAYS[3]]
    assert "expect_column_to_exist" in by_event["quarantined"][0]["text"]
    # The champion (trained for d1) is 1 night old on d2 and 2 on d3; the threshold is 1.
    assert [(a["day"], a["nights"]) for a in by_event["stale_champion"]] == [(DAYS[2], 1), (DAYS[3], 2)]
    # One alert per event: the quarantine is alerted by outcome only, not again as validate's task failure.
    assert "task_failed" not in by_event, by_event.get("task_failed")


def test_a_manual_run_without_a_day_fails_at_once_and_says_how_to_run_a_day(ops):
    root, server = ops["root"], ops["server"]
    # `airflow dags trigger -l 2026-04-05...` without a day: Airflow would hand the run a data
    # interval from the trigger time; the run must refuse instead of processing some other day.
    done = subprocess.run([airflow_bin(), "dags", "test", DAG, "2026-04-05T00:00:00+00:00", "--conf",
                           json.dumps({"root": str(root)})], env={**airflow_env(root), **server.task_env()},
                          capture_output=True, text=True)
    assert done.returncode != 0
    assert "must name its day" in done.stdout + done.stderr and '--conf \'{"day": "D"}\'' in done.stdout + done.stderr
    runs = server.get_json(f"/api/v2/dags/{DAG}/dagRuns?order_by=id", ops["token"])["dag_runs"]
    assert runs[-1]["state"] == "failed" and runs[-1]["note"].startswith("**NOT RUN**")
    models = ops["server"].get("/graphdistill/models", ops["token"])[1].decode()
    assert "NOT RUN" in models and "must name its day" in models  # not "INCONCLUSIVE" with day "?"
    status, tab = server.get(f"/graphdistill/runs/{DAG}/{urllib.parse.quote(runs[-1]['dag_run_id'], safe='')}",
                             ops["token"])
    assert status == 409 and tab.startswith(b"<!doctype html>") and b"must name its day" in tab  # a page, not JSON
    states = _task_states(ops, runs[-1]["dag_run_id"])
    assert {end for end in ENDS if states[end] != "skipped"} == {"not_run"} and states["not_run"] == "failed"
