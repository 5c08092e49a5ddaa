"""The popularity fallback through the real DAG (`airflow dags test`), read back where ops look: a
serving champion conclusively worse than popularity and a night whose candidate is not blessed put
the popularity version in service (champion_health.fallback: popularity, the default).

Before the night, through the stage commands and the real registry (`graphdistill run`, no DAG
time): d0 accepted (history), d1 a real, deliberately bad version bootstrapped as champion under
absolute floors only: a student distilled from shuffled labels without propagation (distill.
num_layers 0) for one epoch. On the night d2 (one DAG run) the candidate trains normally and fails
an absolute floor it cannot reach (NDCG@20 >= 0.99), while the champion as served loses to
popularity on the users with history. Measured on this world (seed 11, 59 history users): champion
vs popularity NDCG@20 -33.6%, 90% CI [-49.2%, -17.0%] (seed 5: [-49.9%, -7.7%]); with the shuffled
student's three propagation layers the interval reached 0 on seed 5, so that champion was not used.
The champion Asset event's consumer, the serving-refresh DAG, is run after the night as the scheduler
would start it; `graphdistill recommend` then answers from the popularity version.
"""

from __future__ import annotations

import html
import json
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
import yaml

from components.cli import airflow_bin, airflow_env, main, run_dag_day
from components.core.catalog import Layout, latest_run, read_json
from components.core.refs import GraphRef
from components.data.graph import GraphArtifact
from components.decide.registry import champion, history, version_dir
from graphdistill_airflow.local import api_server
from graphdistill_airflow.nightly import NIGHT_ENDS
from graphdistill_airflow.stack import free_port

from tests.e2e.alert_receiver import alert_receiver
from tests.e2e.small_world import SMALL_WORLD_GATES, land_small_world

pytestmark = pytest.mark.e2e

DAYS = ["2026-05-04", "2026-05-05", "2026-05-06"]
DAG = "gnn_recsys_nightly"
BAD_CHAMPION = {"distill.shuffle_labels": True, "distill.num_layers": 0, "distill.epochs": 1,
                "prune.finetune_epochs": 1}
NIGHT = {"distill.epochs": 5, "prune.finetune_epochs": 1}
FALLBACK = "popularity"  # champion_health.fallback; with "keep" these tests fail (the champion keeps serving)
UNREACHABLE_FLOOR = 0.99  # NDCG@20: no candidate of this world reaches it (good ones measure ~0.4)


def _gates_files(root: Path) -> tuple[Path, Path]:
    """(the bootstrap's gates: users and NDCG@20 floors only; the night's: the small-world gates with
    the NDCG@20 floor at UNREACHABLE_FLOOR and champion_health.fallback FALLBACK)."""
    floors = [g for g in SMALL_WORLD_GATES["gates"] if g["kind"] == "min" and g["metric"] != "parity_topk_overlap"]
    night = [{**g, "threshold": UNREACHABLE_FLOOR} if (g["metric"], g["kind"]) == ("ndcg@20", "min") else g
             for g in SMALL_WORLD_GATES["gates"]]
    first, strict = root / "bootstrap_gates.yaml", root / "night_gates.yaml"
    first.write_text(yaml.safe_dump({"gates": floors}))
    strict.write_text(yaml.safe_dump({"gates": night, "champion_health": {"fallback": FALLBACK}}))
    return first, strict


def _stages(root: Path, day: str, stages: tuple[str, ...], overrides: dict, run_key: str | None = None) -> None:
    sets = [arg for key, value in overrides.items() for arg in ("--set", f"{key}={json.dumps(value)}")]
    for stage in stages:
        key = ["--run-key", run_key] if run_key and stage in ("evaluate", "gate", "register", "promote") else []
        assert main(["run", stage, "--day", day, "--root", str(root), *sets, *key]) == 0, (stage, day)


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    root = tmp_path_factory.mktemp("fallback")
    layout = Layout.at(root)
    land_small_world(layout, DAYS, seed=11, corrupt=False)
    first_gates, night_gates = _gates_files(root)
    clock = [time.monotonic()]
    seconds = {}

    def lap(what: str) -> None:  # the test's cost, printed in CI logs
        clock.append(time.monotonic())
        seconds[what] = round(clock[-1] - clock[-2])

    _stages(root, DAYS[0], ("ingest", "validate"), {})
    _stages(root, DAYS[1], ("ingest", "validate", "graph", "teacher", "distill", "prune", "export", "convert",
                            "evaluate", "gate", "register", "promote"),
            {**BAD_CHAMPION, "gates_file": str(first_gates)}, run_key="bad")
    bad = champion(layout).version
    assert bad.startswith(DAYS[1]) and read_json(layout.reports(DAYS[1]) / "runs" / "bad" / "outcome.json")[
        "kind"] == "promoted"
    lap("bootstrap through the stage commands")
    with alert_receiver() as (alerts_env, received), \
            api_server(root, free_port(), root / "api-server.log") as server:
        rc = run_dag_day(root, DAYS[2], {"root": str(root), "overrides": {**NIGHT, "gates_file": str(night_gates)}},
                         root / "night.log", extra_env={**server.task_env(), **alerts_env})
        lap("api-server start and the night through the DAG")
        token = server.token()
        (run,) = server.get_json(f"/api/v2/dags/{DAG}/dagRuns", token)["dag_runs"]
        run_id = urllib.parse.quote(run["dag_run_id"], safe="")
        states = {t["task_id"]: t["state"] for t in server.get_json(
            f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances", token)["task_instances"]}
        refresh_queue = server.get_json("/api/v2/dags/champion_serving_refresh/assets/queuedEvents", token)
        # What the scheduler would start on that queued event (`airflow dags test` has no scheduler).
        refresh = subprocess.run([airflow_bin(), "dags", "test", "champion_serving_refresh"],
                                 env={**airflow_env(root), **server.task_env()}, capture_output=True, text=True)
        lap("serving refresh DAG")
        yield {
            "root": root, "layout": layout, "bad": bad, "rc": rc, "run": run, "states": states,
            "alerts": list(received),
            "outcome_page": server.get_json(f"/graphdistill/runs/{DAG}/{run_id}.json", token),
            "models_page": server.get("/graphdistill/models", token)[1].decode(),
            "events": server.get_json("/api/v2/assets/events?order_by=timestamp&limit=100", token)["asset_events"],
            "refresh_queue": refresh_queue, "refresh": refresh,
            "run_dir": Path(latest_run(layout, DAYS[2])["dir"]), "seconds": seconds,
        }


def test_the_night_ends_fallback_popularity_on_its_own_row(night):
    assert night["rc"] == 0, (night["root"] / "night.log").read_text()[-3000:]
    states = night["states"]
    ran = {end: states[end] for end, _ in NIGHT_ENDS if states[end] != "skipped"}
    assert ran == {"fallback_popularity": "success"}, states
    assert (states["blessed"], states["promote"], states["report"], states["outcome"]) == ("success",) * 4
    assert night["run"]["state"] == "success"
    log = (night["root"] / "night.log").read_text()  # the outcome task's gauges (StatsD/OpenTelemetry)
    assert "outcome.fallback_popularity=1," in log and "champion_health.worse_than_popularity=1," in log
    print(f"popularity fallback e2e, seconds: {night['seconds']}")


def test_popularity_serves_in_place_of_the_judged_champion_for_the_rejected_candidate(night):
    layout, bad = night["layout"], night["bad"]
    blessing = read_json(night["run_dir"] / "blessing.json")
    assert blessing["verdict"] == "rejected" and blessing["failed"] == ["ndcg@20 min"]
    assert blessing["champion_version"] == bad and blessing["fallback"] == "popularity"
    served = champion(layout)
    assert served.version.startswith(f"{DAYS[2]}-popularity-") and served.previous == (bad,)
    lineage = read_json(version_dir(layout, served.version) / "lineage.json")
    assert (lineage["kind"], lineage["day"], lineage["judged_against"], lineage["fallback_for"]) == (
        "popularity", DAYS[2], bad, blessing["candidate_version"])
    moved = history(layout)[-1]
    assert (moved["event"], moved["version"], moved["previous"]) == ("promote", served.version, bad)
    assert moved["reason"].startswith(f"fallback: champion {bad} worse than popularity (ndcg@20 -")


def test_the_outcome_and_the_run_note_say_why_with_the_interval(night):
    bad, served = night["bad"], champion(night["layout"]).version
    health = read_json(night["run_dir"] / "blessing.json")["champion_health"]
    assert health["verdict"] == "fail" and health["segment"] == "history" and health["ci_high"] < 0
    interval = f"[{health['ci_low']:+.1%}, {health['ci_high']:+.1%}]"
    record = read_json(night["run_dir"] / "outcome.json")  # the run's stored decision
    assert (record["kind"], record["champion_before"], record["champion_after"]) == ("fallback_popularity", bad, served)
    assert record["reason"] == (f"fallback: champion {bad} worse than popularity (ndcg@20 "
                                f"{health['relative_change']:+.1%} {interval}, {health['n']} history users); "
                                f"candidate {record['candidate']} rejected")
    outcome = night["outcome_page"]  # the run's GraphDistill tab, as JSON
    assert outcome["kind"] == "fallback_popularity" and outcome["champion_worse_than_popularity"]
    assert outcome["reason"].startswith(f"champion {bad} -> {served} (popularity); candidate {record['candidate']} "
                                        f"rejected: failed gates: ndcg@20 min; champion {bad} as served: WORSE THAN "
                                        f"POPULARITY (ndcg@20 {health['relative_change']:+.1%} {interval}")
    report = (night["run_dir"] / "report.html").read_text()
    assert f"<h2>Outcome: FALLBACK POPULARITY</h2><p>{html.escape(record['reason'])}</p>" in report
    note = night["run"]["note"]
    assert note.startswith(f"**FALLBACK POPULARITY** day {DAYS[2]}: champion {bad} -> {served}") and interval in note
    assert note.endswith(f"serving champion: {served}")
    models = night["models_page"]  # read after the serving refresh (below) exported the popularity version
    assert f"Champion {served}" in models and "FALLBACK POPULARITY" in models
    assert f"Serving answers with {served}" in models


def test_the_champion_worse_than_popularity_alert_names_the_replacement(night):
    bad, served = night["bad"], champion(night["layout"]).version
    (alert,) = [a for a in night["alerts"] if a["event"] == "champion_worse_than_popularity"]
    assert (alert["day"], alert["champion"], alert["champion_after"]) == (DAYS[2], bad, served)
    assert f"champion {bad} as served" in alert["text"] and f"replaced by {served}" in alert["text"]


def test_the_champion_asset_event_refreshes_serving(night):
    served = champion(night["layout"]).version
    (event,) = [e for e in night["events"] if e["name"] == "graphdistill_champion"]  # the CLI bootstrap sends none
    assert (event["extra"]["version"], event["extra"]["previous"], event["extra"]["outcome"]) == (
        served, night["bad"], "fallback_popularity")
    (outcome,) = [e for e in night["events"] if e["name"] == "graphdistill_nightly_outcome"]
    assert outcome["extra"]["kind"] == "fallback_popularity"
    assert night["refresh_queue"]["total_entries"] == 1
    refresh = night["refresh"]
    assert refresh.returncode == 0, refresh.stdout[-3000:] + refresh.stderr[-3000:]
    exported = read_json(night["root"] / "serving" / "triton_repository" / "graphdistill_version.json")
    assert exported["version"] == served and exported["models"] == ["graphdistill_onnx"]  # no GPU here: no plan


def test_serving_answers_with_the_popularity_ranking_minus_seen_items(night):
    from components.core.config import load_config
    from components.data.features import online_history

    root, layout = night["root"], night["layout"]
    served = champion(layout).version
    graph = GraphArtifact.load(layout.artifact(GraphRef.from_dict(
        read_json(version_dir(layout, served) / "lineage.json")["data"]["graph"])))
    train, user_ids, item_ids = graph.train_interactions(), graph.user_ids(), graph.item_ids()
    item_id = item_ids.sort_values("idx")["item_id"].astype(str).to_numpy()
    ranking = item_id[np.argsort(-np.bincount(train.item, minlength=len(item_id)), kind="stable")]
    trained = user_ids[user_ids["idx"].isin(np.unique(train.user))].sort_values("idx").head(3)
    users = [*trained["user_id"].astype(str), "nobody"]
    k = 10
    answered = subprocess.run([sys.executable, "-m", "components.cli", "recommend", *users, "-k", str(k),
                               "--root", str(root)], env=airflow_env(root), capture_output=True, text=True, timeout=300)
    assert answered.returncode == 0, answered.stderr[-3000:]
    lines = answered.stdout.splitlines()
    assert len(lines) == 1 + len(users), answered.stdout
    assert lines[0].startswith(f"# champion {served} answered by")
    recent = online_history(layout, load_config(overrides={"root": str(root)}))(users)
    for line, user, idx, items in zip(lines[1:], users, [*trained["idx"], None], recent):
        seen = set(item_id[train.item[train.user == idx]]) if idx is not None else set()
        expected = [i for i in ranking if i not in seen and i not in set(items)][:k]
        assert line.split()[:2] == [user, "[popularity]" if idx is None else "[model]"] and (seen or idx is None)
        assert [pair.rsplit(":", 1)[0] for pair in line.split()[2:]] == expected, (user, line)
