"""The real DAG, run by `airflow dags test` (in-process, SQLite) over consecutive generated days,
then the promotion scenarios an operator meets: re-runs of older days, a rollback, a champion that
moves between gate and promote, and a day too small to decide.

Days: d0 history only (model stages skip: no training window yet); d1 bootstraps a champion; d2 is
judged against it and promoted; d3 is corrupted (quarantined, nothing downstream, champion
untouched); d4 is forced to produce a bad candidate (shuffled labels), which the gates reject; d5
is judged against d2's champion and promoted. The world is small (~100 evaluated users a day), so
these runs use gates with a low users floor and a 20% non-inferiority bound (tests/e2e/small_world.py:
measured intervals, good days vs champion about [+0.16, +0.42], the shuffled candidate [-0.47,
-0.27]); the production gates (config/gates.yaml) judge such a day INCONCLUSIVE (test below).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pandas as pd
import pytest

from components.cli import main, run_dag_day
from components.core.config import load_config
from components.core.catalog import Layout, latest_run, read_json

from tests.e2e.small_world import land_small_world, write_small_world_gates

pytestmark = pytest.mark.e2e

DAYS = ["2026-03-02", "2026-03-03", "2026-03-04", "2026-03-05", "2026-03-06", "2026-03-07"]
SMALL = {"teacher.epochs": 30, "teacher.eval_every": 5, "distill.epochs": 30, "prune.finetune_epochs": 5}
BAD = {**SMALL, "distill.shuffle_labels": True}
def _tree_digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def _task_states(root: Path, day: str) -> dict[str, str]:
    with sqlite3.connect(root / "airflow" / "airflow.db") as db:
        rows = db.execute(
            "SELECT ti.task_id, ti.state FROM task_instance ti JOIN dag_run dr ON ti.dag_id = dr.dag_id "
            "AND ti.run_id = dr.run_id WHERE date(dr.data_interval_start) = ? ORDER BY dr.id", (day,)).fetchall()
    return dict(rows)  # the latest run of that day wins


def _skip_reason(root: Path, log_name: str, task: str = "promote") -> str:
    text = (root / log_name).read_text()
    return next((line for line in text.splitlines() if "blessed but not promoted" in line), "")


def _champion(root: Path) -> bytes:
    path = root / "registry" / "champion.json"
    return path.read_bytes() if path.exists() else b""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("nightly")
    layout = Layout.at(root)
    land_small_world(layout, DAYS, seed=11)
    gates_file = write_small_world_gates(root)
    conf = lambda overrides: {"root": str(root), "overrides": {**overrides, "gates_file": str(gates_file)}}  # noqa: E731
    rcs, snapshots = {}, {}
    for day in DAYS:
        rcs[day] = run_dag_day(root, day, conf(BAD if day == DAYS[4] else SMALL), root / f"{day}.log")
        snapshots[day] = {"champion": _champion(root).decode() or None, "states": _task_states(root, day),
                          "latest": latest_run(layout, day),
                          "graphs": _tree_digest(root / "graphs") if (root / "graphs").exists() else {}}
    return root, layout, rcs, snapshots, conf


def _outcome(layout, day):
    latest = latest_run(layout, day)
    return read_json(Path(latest["dir"]) / "outcome.json")


def test_history_day_runs_data_plane_and_skips_models(run):
    root, layout, rcs, snaps, _ = run
    states = snaps[DAYS[0]]["states"]
    assert rcs[DAYS[0]] == 0, (root / f"{DAYS[0]}.log").read_text()[-3000:]
    assert {states[t] for t in ("ingest", "validate", "features", "graph")} == {"success"}
    assert states["teacher"] == "skipped" and states["promote"] == "skipped"
    assert _outcome(layout, DAYS[0])["kind"] == "skipped"


def test_first_model_day_bootstraps_a_champion(run):
    root, layout, rcs, snaps, _ = run
    assert rcs[DAYS[1]] == 0, (root / f"{DAYS[1]}.log").read_text()[-3000:]
    run_dir = Path(snaps[DAYS[1]]["latest"]["dir"])
    assert run_dir.parent.name == "runs" and run_dir.name.startswith("manual__")
    blessing = read_json(run_dir / "blessing.json")
    assert blessing["bootstrap"] is True and blessing["blessed"] is True
    champion_gates = [g for g in blessing["gates"] if g["baseline"] == "champion"]
    assert champion_gates and all(g["verdict"] == "skipped" for g in champion_gates)
    assert json.loads(snaps[DAYS[1]]["champion"])["version"] == blessing["candidate_version"]
    assert snaps[DAYS[1]]["states"]["promote"] == "success"
    outcome = read_json(run_dir / "outcome.json")
    assert outcome["kind"] == "promoted" and outcome["candidate"] == blessing["candidate_version"]
    assert (run_dir / "report.html").exists() and list(run_dir.glob("*.png"))


def test_normal_day_is_judged_against_the_champion_with_intervals(run):
    root, layout, rcs, snaps, _ = run
    assert rcs[DAYS[2]] == 0, (root / f"{DAYS[2]}.log").read_text()[-3000:]
    run_dir = Path(snaps[DAYS[2]]["latest"]["dir"])
    blessing = read_json(run_dir / "blessing.json")
    first = json.loads(snaps[DAYS[1]]["champion"])["version"]
    assert blessing["bootstrap"] is False and blessing["champion_version"] == first
    champion_gates = [g for g in blessing["gates"] if g["baseline"] == "champion"]
    assert champion_gates and all(g["verdict"] == "pass" for g in champion_gates)
    # Judged where models differ: the champion gates count the users with history, not all users.
    assert all(g["segment"] == "history" and g["ci_low"] <= g["statistic"] <= g["ci_high"]
               and g["n"] == blessing["history_users_evaluated"] <= blessing["users_evaluated"] for g in champion_gates)
    evaluation = read_json(run_dir / "evaluation.json")
    assert evaluation["candidate"]["ndcg@20"] > evaluation["popularity"]["ndcg@20"]
    assert evaluation["cold_users_evaluated"] > 0  # cold users evaluated as served, not dropped
    assert json.loads(snaps[DAYS[2]]["champion"])["version"] == blessing["candidate_version"]
    # One candidate id: gate table, registry, outcome and the log line.
    assert blessing["candidate_version"] in (run_dir / "gates.md").read_text()
    assert read_json(run_dir / "outcome.json")["candidate"] == blessing["candidate_version"]
    assert (layout.registry() / "versions" / blessing["candidate_version"] / "blessing.json").exists()
    assert f"candidate {blessing['candidate_version']}" in (root / f"{DAYS[2]}.log").read_text()


def test_corrupted_day_is_quarantined_and_nothing_downstream_runs(run):
    root, layout, rcs, snaps, _ = run
    states = snaps[DAYS[3]]["states"]
    assert rcs[DAYS[3]] != 0
    assert states["validate"] == "failed"
    assert all(states[t] == "upstream_failed" for t in ("features", "graph", "teacher", "promote"))
    assert not layout.accepted(DAYS[3]).exists() and layout.current("graphs", DAYS[3]) is None
    (attempt,) = list(layout.quarantine(DAYS[3]).iterdir())
    landed = pd.read_parquet(layout.landing(DAYS[3]) / "events.parquet")
    assert len(pd.read_parquet(attempt / "rows.parquet")) == len(landed)
    assert "expect_column_to_exist" in (attempt / "report.md").read_text()
    day_log = (root / f"{DAYS[3]}.log").read_text()
    assert "validation FAILED for 2026-03-05: 1 rule(s) failed" in day_log  # the missing column, once
    assert "  - FAIL expect_column_to_exist(item_id): observed column missing\n" in day_log
    assert "FAIL expect_column_values_to_not_be_null(item_id)" not in day_log
    assert "Skipping registering function" not in day_log  # GX's import noise is silenced
    assert snaps[DAYS[3]]["champion"] == snaps[DAYS[2]]["champion"]
    assert snaps[DAYS[3]]["graphs"] == snaps[DAYS[2]]["graphs"]  # yesterday's graph untouched
    assert _outcome(layout, DAYS[3])["kind"] == "quarantined"


def test_bad_candidate_is_rejected_and_champion_unchanged(run):
    root, layout, rcs, snaps, _ = run
    assert rcs[DAYS[4]] == 0, (root / f"{DAYS[4]}.log").read_text()[-3000:]
    run_dir = Path(snaps[DAYS[4]]["latest"]["dir"])
    blessing = read_json(run_dir / "blessing.json")
    assert blessing["blessed"] is False and blessing["verdict"] == "rejected" and blessing["failed"]
    assert any("popularity" in f or "teacher" in f for f in blessing["failed"])
    assert snaps[DAYS[4]]["states"]["promote"] == "skipped"
    assert snaps[DAYS[4]]["states"]["report"] == "success"
    assert snaps[DAYS[4]]["champion"] == snaps[DAYS[3]]["champion"]
    assert read_json(layout.registry() / "versions" / blessing["candidate_version"] / "manifest.json")[
        "status"] == "rejected"
    assert read_json(run_dir / "outcome.json")["kind"] == "rejected"
    # The graph skipped the quarantined day: it trains on d0..d2.
    stats = json.loads((Path(layout.current("graphs", DAYS[4]).path) / "stats.json").read_text())
    assert stats["train_days"] == DAYS[:3]


def test_catch_up_day_promotes_against_the_previous_champion(run):
    root, layout, rcs, snaps, _ = run
    assert rcs[DAYS[5]] == 0, (root / f"{DAYS[5]}.log").read_text()[-3000:]
    blessing = read_json(Path(snaps[DAYS[5]]["latest"]["dir"]) / "blessing.json")
    assert blessing["champion_version"] == json.loads(snaps[DAYS[2]]["champion"])["version"]
    assert json.loads(snaps[DAYS[5]]["champion"])["version"] == blessing["candidate_version"]


def test_rerunning_a_rejected_day_changes_nothing(run):
    root, layout, rcs, snaps, conf = run
    before = {name: _tree_digest(root / name) for name in ("accepted", "registry", "graphs")}
    assert run_dag_day(root, DAYS[4], conf(BAD), root / "rerun-d4.log") == 0
    after = {name: _tree_digest(root / name) for name in ("accepted", "registry", "graphs")}
    assert after == before


def test_rerunning_an_older_day_is_judged_as_of_its_day_and_never_promotes(run):
    """Also the guarantee of a backfill over days older than the champion (README: safe backfill)."""
    root, layout, rcs, snaps, conf = run
    champion = _champion(root)
    first_run = Path(snaps[DAYS[2]]["latest"]["dir"])
    first_report = (first_run / "report.html").read_bytes()
    assert run_dag_day(root, DAYS[2], conf(SMALL), root / "rerun-d2.log") == 0
    latest = latest_run(layout, DAYS[2])
    assert latest["dir"] != str(first_run) and latest["outcome"] == "not_promoted"
    blessing = read_json(Path(latest["dir"]) / "blessing.json")
    assert blessing["champion_version"] == json.loads(snaps[DAYS[1]]["champion"])["version"]  # as of d2
    assert latest["reason"].startswith("historical day: not newer than the champion")
    assert _task_states(root, DAYS[2])["promote"] == "skipped"
    assert "historical day" in _skip_reason(root, "rerun-d2.log")
    assert _champion(root) == champion
    assert (first_run / "report.html").read_bytes() == first_report


def test_champion_moved_between_gate_and_promote_is_stale(run, capsys):
    """Clearing `promote` of d5's catch-up run after an operator moved the champion by hand."""
    root, layout, rcs, snaps, conf = run
    first_d5 = snaps[DAYS[5]]["latest"]["run_key"]
    first = json.loads(snaps[DAYS[1]]["champion"])["version"]
    assert main(["promote", first, "--root", str(root), "--reason", "operator pins d1"]) == 0
    pointer = _champion(root)
    capsys.readouterr()
    assert main(["run", "promote", "--day", DAYS[5], "--root", str(root), "--run-key", first_d5]) == 0
    decision = json.loads(capsys.readouterr().out)
    assert not decision["promoted"] and decision["reason"].startswith("stale: champion changed since judged")
    assert _champion(root) == pointer
    assert read_json(layout.reports(DAYS[5]) / "runs" / first_d5 / "outcome.json")["kind"] == "not_promoted"
    current = json.loads(snaps[DAYS[5]]["champion"])["version"]
    assert main(["promote", current, "--root", str(root), "--reason", "operator unpins"]) == 0  # by hand: allowed


def test_rollback_sticks_when_the_rolled_back_day_is_rerun(run, capsys):
    root, layout, rcs, snaps, conf = run
    pinned = json.loads(snaps[DAYS[1]]["champion"])["version"]  # what d5's champion replaced (the pin above)
    assert main(["rollback", "--root", str(root), "--reason", "bad recommendations reported"]) == 0
    assert json.loads(_champion(root))["version"] == pinned
    pointer = _champion(root)
    assert run_dag_day(root, DAYS[5], conf(SMALL), root / "rerun-d5.log") == 0
    latest = latest_run(layout, DAYS[5])
    # Judged against the champion as of d5 (the rolled-back version is nobody's baseline), so the
    # candidate id is new; its day's champion was rolled back, so it is not promoted either.
    assert latest["outcome"] == "not_promoted" and latest["reason"].startswith("rolled back:")
    assert "bad recommendations reported" in latest["reason"]
    assert _champion(root) == pointer
    capsys.readouterr()
    assert main(["history", "--root", str(root)]) == 0
    assert "rollback" in capsys.readouterr().out


def test_a_small_day_under_the_production_gates_is_inconclusive(run, capsys):
    """The same d5 judged by config/gates.yaml (users floor 300): INCONCLUSIVE, champion kept."""
    root, layout, rcs, snaps, conf = run
    pointer = _champion(root)
    for stage in ("evaluate", "gate", "register", "promote", "report"):
        extra = ["--run-key", "small-day"]
        assert main(["run", stage, "--day", DAYS[5], "--root", str(root), *extra]) == 0, stage
    capsys.readouterr()
    outcome = read_json(layout.reports(DAYS[5]) / "runs" / "small-day" / "outcome.json")
    assert outcome["kind"] == "inconclusive" and "users_evaluated min" in outcome["reason"]
    blessing = read_json(layout.reports(DAYS[5]) / "runs" / "small-day" / "blessing.json")
    users = next(g for g in blessing["gates"] if g["metric"] == "users_evaluated")
    assert users["verdict"] == "inconclusive" and users["n"] < 300
    assert all(g["ci_low"] is not None for g in blessing["gates"] if g["metric"] in ("ndcg@20", "recall@20")
               and g["verdict"] != "skipped")
    html = (layout.reports(DAYS[5]) / "runs" / "small-day" / "report.html").read_text()
    assert "Outcome: INCONCLUSIVE" in html and "90% CI [" in html
    assert _champion(root) == pointer


def test_feast_online_features_match_a_pandas_recomputation(run):
    root, layout, rcs, snaps, _ = run
    from tests.unit.data_fixtures import read_online_features

    cfg = load_config(overrides={"root": str(root)})
    last = DAYS[5]
    events = pd.concat([pd.read_parquet(layout.accepted(d) / "events.parquet") for d in layout.accepted_days()])
    on_day = events[events["ts"].dt.strftime("%Y-%m-%d") == last]
    users = on_day["user_id"].value_counts().index[:5].tolist()
    items = on_day["item_id"].value_counts().index[:5].tolist()
    user_frame, item_frame = read_online_features(layout, cfg, users, items)
    expected_user_1d = on_day["user_id"].value_counts()
    expected_item_1d = on_day["item_id"].value_counts()
    for row in user_frame.itertuples():
        assert row.events_1d == expected_user_1d[row.user_id]
    for row in item_frame.itertuples():
        assert row.events_1d == expected_item_1d[row.item_id]
