"""The real DAG, run by `airflow dags test` (in-process, SQLite) over consecutive generated days.

Days: d0 history only (model stages skip: no training window yet); d1 bootstraps a champion;
d2 is a normal day judged against the champion; d3 is corrupted (quarantined, nothing
downstream, champion untouched); d4 is forced to produce a bad candidate (shuffled labels), which
the gates reject; d4 is then re-run and changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pandas as pd
import pytest

from components.cli import run_dag_day
from components.config import load_config
from components.sources.synthetic import SyntheticWorld, corrupt_landing, write_landing_day
from components.storage import Layout, parse_day

pytestmark = pytest.mark.e2e

DAYS = ["2026-03-02", "2026-03-03", "2026-03-04", "2026-03-05", "2026-03-06"]
SMALL = {"teacher.epochs": 30, "teacher.eval_every": 5, "distill.epochs": 30, "prune.finetune_epochs": 5,
         "export.latency_repeats": 5}
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


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("nightly")
    layout = Layout.at(root)
    world = SyntheticWorld(start=parse_day(DAYS[0]), seed=11)
    universe = world.universe()
    for day in DAYS:
        write_landing_day(world, layout.landing(day), parse_day(day), "parquet", universe)
    corrupt_landing(layout.landing(DAYS[3]), "missing_column")
    rcs, snapshots = {}, {}
    for day in DAYS:
        overrides = BAD if day == DAYS[4] else SMALL
        rcs[day] = run_dag_day(root, day, {"root": str(root), "overrides": overrides}, root / f"{day}.log")
        snapshots[day] = {"champion": (root / "registry" / "champion.json").read_text()
                          if (root / "registry" / "champion.json").exists() else None,
                          "states": _task_states(root, day),
                          "graphs": _tree_digest(root / "graphs") if (root / "graphs").exists() else {}}
    return root, layout, rcs, snapshots


def test_history_day_runs_data_plane_and_skips_models(run):
    root, layout, rcs, snaps = run
    states = snaps[DAYS[0]]["states"]
    assert rcs[DAYS[0]] == 0, (root / f"{DAYS[0]}.log").read_text()[-3000:]
    assert {states[t] for t in ("ingest", "validate", "features", "graph")} == {"success"}
    assert states["teacher"] == "skipped" and states["promote"] == "skipped"


def test_first_model_day_bootstraps_a_champion(run):
    root, layout, rcs, snaps = run
    assert rcs[DAYS[1]] == 0, (root / f"{DAYS[1]}.log").read_text()[-3000:]
    blessing = json.loads((layout.reports(DAYS[1]) / "blessing.json").read_text())
    assert blessing["bootstrap"] is True and blessing["blessed"] is True
    champion_gates = [g for g in blessing["gates"] if g["baseline"] == "champion"]
    assert champion_gates and all(g["verdict"] == "skipped" for g in champion_gates)
    registered = json.loads((root / "registry" / "candidates" / f"{DAYS[1]}.json").read_text())
    assert registered["status"] == "blessed"
    assert json.loads(snaps[DAYS[1]]["champion"])["version"] == registered["version"]
    assert snaps[DAYS[1]]["states"]["promote"] == "success"
    report = layout.reports(DAYS[1])
    assert (report / "report.html").exists() and list(report.glob("*.png"))


def test_normal_day_is_judged_against_the_champion(run):
    root, layout, rcs, snaps = run
    assert rcs[DAYS[2]] == 0, (root / f"{DAYS[2]}.log").read_text()[-3000:]
    blessing = json.loads((layout.reports(DAYS[2]) / "blessing.json").read_text())
    assert blessing["bootstrap"] is False and blessing["champion_version"]
    champion_gates = [g for g in blessing["gates"] if g["baseline"] == "champion"]
    assert champion_gates and all(g["verdict"] in ("pass", "fail") for g in champion_gates)
    evaluation = json.loads((layout.reports(DAYS[2]) / "evaluation.json").read_text())
    assert evaluation["candidate"]["ndcg@20"] > evaluation["popularity"]["ndcg@20"]
    graph_stats = json.loads((Path(layout.current("graphs", DAYS[2]).path) / "stats.json").read_text())
    assert graph_stats["train_days"] == DAYS[:2] and graph_stats["num_users"] > 0


def test_corrupted_day_is_quarantined_and_nothing_downstream_runs(run):
    root, layout, rcs, snaps = run
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
    assert "validation FAILED for 2026-03-05: 2 rule(s) failed" in day_log
    assert "  - FAIL expect_column_to_exist(item_id): observed column missing\n  - FAIL expect_column_values_to_not_be_null(item_id)" in day_log
    assert "Skipping registering function" not in day_log  # GX's import noise is silenced
    assert snaps[DAYS[3]]["champion"] == snaps[DAYS[2]]["champion"]
    assert snaps[DAYS[3]]["graphs"] == snaps[DAYS[2]]["graphs"]  # yesterday's graph untouched


def test_bad_candidate_is_rejected_and_champion_unchanged(run):
    root, layout, rcs, snaps = run
    assert rcs[DAYS[4]] == 0, (root / f"{DAYS[4]}.log").read_text()[-3000:]
    blessing = json.loads((layout.reports(DAYS[4]) / "blessing.json").read_text())
    assert blessing["blessed"] is False and blessing["failed"]
    assert any("popularity" in f or "teacher" in f for f in blessing["failed"])
    assert snaps[DAYS[4]]["states"]["promote"] == "skipped"
    assert snaps[DAYS[4]]["states"]["report"] == "success"
    assert snaps[DAYS[4]]["champion"] == snaps[DAYS[3]]["champion"]
    versions = [json.loads(p.read_text()) for p in (root / "registry" / "versions").glob("*/manifest.json")]
    assert any(v.get("status") == "rejected" for v in versions)
    # The graph skipped the quarantined day: it trains on d0..d2.
    stats = json.loads((Path(layout.current("graphs", DAYS[4]).path) / "stats.json").read_text())
    assert stats["train_days"] == DAYS[:3]


def test_rerunning_a_day_changes_nothing(run):
    root, layout, rcs, snaps = run
    before = {name: _tree_digest(root / name) for name in ("accepted", "registry", "graphs")}
    assert run_dag_day(root, DAYS[4], {"root": str(root), "overrides": BAD}, root / "rerun.log") == 0
    after = {name: _tree_digest(root / name) for name in ("accepted", "registry", "graphs")}
    assert after == before


def test_feast_online_features_match_a_pandas_recomputation(run):
    root, layout, rcs, snaps = run
    from components.features import read_online_features

    cfg = load_config(overrides={"root": str(root)})
    last = DAYS[4]
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
