"""A night's outcome read back from its real records (validation, blessing, registry), and the run's day."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from components.decide.outcome import (
    PROMOTED, QUARANTINED, REJECTED, RunDayError, champion_day, gauges, nights_since_promotion, note_markdown,
    run_day, run_outcome, validation_report,
)
from components.decide.registry import run_promote, run_register
from components.decide.report import fmt_number
from components.data.sources.synthetic import corrupt_landing
from components.data.ingest import run_ingest
from components.data.validate import run_validate
from components.data.validation_result import DataValidationError

from tests.unit.data_fixtures import accept, current_inputs, day, land
from tests.unit.ship_fixtures import make_world, run_ship_day, tiny_config
from components.core.catalog import Layout, run_key_for


RUN = run_key_for("scheduled__x")


@pytest.fixture(scope="module")
def nights(tmp_path_factory):
    """day(0..2) accepted; day(1) promotes a good candidate, day(2) a random one is rejected; day(3) quarantined."""
    root = tmp_path_factory.mktemp("outcome") / "root"
    root.mkdir()
    layout, cfg = Layout.at(root), tiny_config(root)
    for offset in range(3):
        accept(layout, cfg, offset)
    world = make_world()
    for offset, candidate in ((1, "good"), (2, "random")):
        run_ship_day(layout, day(offset), cfg, world, seed=offset, candidate=candidate, run_key=RUN)
        registration = run_register(layout, day(offset), cfg, run_key=RUN)
        run_promote(layout, day(offset), cfg, run_key=RUN, registration=registration)
    land(layout, 3)
    corrupt_landing(layout.landing(day(3)), "missing_column")
    run_ingest(layout, day(3), cfg)
    with pytest.raises(DataValidationError):
        run_validate(layout, day(3), cfg, **current_inputs(layout, "validate", day(3)))
    return layout


def test_a_promotion_names_old_and_new_champion_and_the_metrics(nights):
    layout = nights
    outcome = run_outcome(layout, day(1), "scheduled__x")
    evaluation = json.loads((layout.reports(day(1)) / "runs" / RUN / "evaluation.json").read_text())
    assert outcome.kind == PROMOTED and outcome.champion_before is None
    assert outcome.champion_after == outcome.candidate_version
    assert outcome.metrics["candidate"]["ndcg@20"] == pytest.approx(evaluation["candidate"]["ndcg@20"])
    assert "none (bootstrap)" in outcome.reason and outcome.candidate_version in outcome.reason
    assert outcome.rows_accepted == json.loads((layout.accepted(day(1)) / "manifest.json").read_text())["rows_accepted"]
    assert outcome.validation_report == str(layout.reports(day(1)) / "validation" / "report.html")
    assert set(outcome.gates.values()) <= {"pass", "skipped"}


def test_a_rejection_names_each_failing_gate_with_its_value_and_keeps_the_champion(nights):
    layout = nights
    outcome = run_outcome(layout, day(2), None)
    blessing = json.loads((layout.reports(day(2)) / "runs" / RUN / "blessing.json").read_text())
    failing = [g for g in blessing["gates"] if g["verdict"] == "fail"]
    blocking = [g for g in blessing["gates"] if g["verdict"] in ("fail", "inconclusive")]
    assert outcome.kind == REJECTED and len(outcome.failed_gates) == len(blocking) and failing
    for gate, text in zip(blocking, outcome.failed_gates):  # value, interval and what it needed, for people
        relative = gate["kind"] in ("max_regression_vs", "min_lift_over")
        shown = f"{gate['statistic']:+.1%}" if relative else fmt_number(gate["statistic"])
        assert gate["metric"] in text and shown in text and "needs" in text and gate["verdict"].upper() in text
        assert "e+" not in text
    assert all(g["metric"] in outcome.reason for g in failing)
    first_champion = run_outcome(layout, day(1)).champion_after
    assert outcome.champion_before == outcome.champion_after == first_champion
    note = note_markdown(outcome)
    assert note.startswith(f"**REJECTED** day {day(2)}") and len(note) <= 1000
    assert f"\n- {outcome.failed_gates[0]}" in note  # the note carries the numbers, not only the gate names
    values = gauges(outcome)
    assert values["outcome.rejected"] == 1.0 and values["outcome.promoted"] == 0.0
    assert values["candidate.ndcg_at_20"] == pytest.approx(outcome.metrics["candidate"]["ndcg@20"])
    assert sorted(v for k, v in values.items() if k.startswith("gate.")).count(0.0) == len(failing)


def test_a_quarantined_day_names_its_rules_and_links_the_quarantine_report(nights):
    layout = nights
    outcome = run_outcome(layout, day(3))
    (attempt,) = list(layout.quarantine(day(3)).iterdir())
    assert outcome.kind == QUARANTINED and outcome.rows_accepted == 0 and outcome.rows_quarantined > 0
    assert any(rule.startswith("expect_column_to_exist") for rule in outcome.failed_rules)
    assert outcome.validation_report == str(attempt / "report.html") == str(validation_report(layout, day(3)))
    assert outcome.report is None and gauges(outcome)["rows.quarantined"] == outcome.rows_quarantined


def test_nights_since_promotion_counts_from_the_champions_day(nights):
    layout = nights
    assert champion_day(layout) == day(1)
    assert nights_since_promotion(champion_day(layout), day(6)) == 5
    assert nights_since_promotion(None, day(6)) is None


def test_run_day_scheduled_backfill_and_manual():
    start = dt.datetime(2026, 1, 6, tzinfo=dt.timezone.utc)
    assert run_day("scheduled", start, None) == "2026-01-06"
    assert run_day("backfill", start, "2026-01-06") == "2026-01-06"
    assert run_day("manual", dt.datetime(2026, 11, 22, tzinfo=dt.timezone.utc), "2026-01-06") == "2026-01-06"
    with pytest.raises(RunDayError, match="must name its day"):
        run_day("manual", dt.datetime(2026, 11, 22, tzinfo=dt.timezone.utc), None)
    with pytest.raises(RunDayError, match="disagrees"):
        run_day("backfill", start, "2026-01-07")
    with pytest.raises(RunDayError, match="not a date"):
        run_day("manual", None, "2026-13-01")


def test_cli_prints_each_nights_decision(nights, capsys):
    from components.cli import main

    assert main(["outcome", "--root", str(nights.root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(": ", 1)[1].split(" - ")[0] for line in lines] == ["INCOMPLETE", "PROMOTED", "REJECTED",
                                                                           "QUARANTINED"]
    assert lines[0].startswith(day(0))


def test_schedule_start_never_catches_up_before_data(tmp_path, monkeypatch):
    from components.decide.outcome import NO_CATCHUP_START, schedule_start

    landing = tmp_path / "landing"
    nothing = schedule_start(None, None, tmp_path)  # fresh install: one run for the latest night
    assert (nothing.start, nothing.catchup) == (NO_CATCHUP_START, False) and "no catch-up" in nothing.source
    for name in ("date=2026-02-10", "date=2026-02-03", "date=notaday", "stray"):
        (landing / name).mkdir(parents=True)
    landed = schedule_start(None, None, tmp_path)
    assert (landed.start, landed.catchup) == (dt.date(2026, 2, 3), True)
    configured = schedule_start(None, dt.date(2026, 2, 8), tmp_path)
    assert (configured.start, configured.source) == (dt.date(2026, 2, 8), "ops.start_date")
    from_env = schedule_start("2026-02-09", dt.date(2026, 2, 8), tmp_path)
    assert (from_env.start, from_env.source) == (dt.date(2026, 2, 9), "GRAPHDISTILL_START_DATE")
    with pytest.raises(ValueError, match="GRAPHDISTILL_START_DATE='2026-2-30' is not a date"):
        schedule_start("2026-2-30", None, tmp_path)
    # An s3:// root is not listed while the DAG is parsed: no catch-up unless a start date is set.
    remote = schedule_start(None, None, "s3://graphdistill/root")
    assert (remote.start, remote.catchup) == (NO_CATCHUP_START, False)
    assert "s3://graphdistill/root" in remote.source and "GRAPHDISTILL_START_DATE" in remote.source
    assert schedule_start("2026-02-09", None, "s3://graphdistill/root").catchup


def test_misuse_message_shows_a_command_that_exists():
    with pytest.raises(RunDayError) as info:
        run_day("manual", None, None)
    assert "run-day" not in str(info.value) and "airflow dags trigger gnn_recsys_nightly" in str(info.value)


@pytest.fixture(scope="module")
def weak_champion(tmp_path_factory):
    """day(1): an anti-cluster candidate becomes champion under lenient gates; day(2): run "keep" judges
    another random candidate (rejected, the weak champion keeps serving), run "replace" a good one
    whose diagnostic retention gate fails (threshold 1.5) but which beats champion and popularity."""
    from tests.unit.ship_fixtures import TINY_GATES, write_gates

    root = tmp_path_factory.mktemp("weak") / "root"
    root.mkdir()
    layout = Layout.at(root)
    lenient = tiny_config(root, gates_file=str(write_gates(root / "lenient.yaml", TINY_GATES[:1])))
    retention = {"metric": "ndcg@20", "kind": "min_ratio_to", "baseline": "teacher", "threshold": 1.5,
                 "role": "diagnostic"}
    decision = [g for g in TINY_GATES if g.get("baseline") != "teacher"]
    # keep: this fixture is about a weak champion that serves on (test_fallback.py covers popularity)
    strict = tiny_config(root, gates_file=str(write_gates(root / "strict.yaml", [*decision, retention],
                                                          champion_health={"fallback": "keep"})))
    world = make_world()
    for offset, cfg, candidate, run_key in ((1, lenient, "anti", "first"), (2, strict, "random", "keep"),
                                            (2, strict, "good", "replace")):
        run_ship_day(layout, day(offset), cfg, world, seed=offset, candidate=candidate, run_key=run_key)
        registration = run_register(layout, day(offset), cfg, run_key=run_key)
        run_promote(layout, day(offset), cfg, run_key=run_key, registration=registration)
    return layout


def test_a_champion_worse_than_popularity_is_flagged_and_says_it_keeps_serving(weak_champion):
    layout = weak_champion
    weak = run_outcome(layout, day(1), "first").champion_after
    kept = run_outcome(layout, day(2), "keep")
    assert kept.kind == REJECTED and kept.champion_after == weak
    assert kept.champion_worse_than_popularity and kept.champion_health["verdict"] == "fail"
    assert kept.champion_health["champion_version"] == weak and kept.champion_health["ci_high"] < 0
    assert (f"; champion {weak} as served: WORSE THAN POPULARITY (ndcg@20 "
            f"{kept.champion_health['relative_change']:+.1%} [") in kept.reason
    assert kept.reason.endswith("; it keeps serving") and kept.overridden_gates == ()
    assert gauges(kept)["champion_health.worse_than_popularity"] == 1.0


def test_a_candidate_beating_a_weak_champion_is_promoted_despite_a_failing_diagnostic(weak_champion):
    layout = weak_champion
    outcome = run_outcome(layout, day(2), "replace")
    blessing = json.loads((layout.reports(day(2)) / "runs" / "replace" / "blessing.json").read_text())
    retention = next(g for g in blessing["gates"] if g["baseline"] == "teacher")
    assert retention["verdict"] == "fail" and retention["overridden"] and retention["role"] == "diagnostic"
    assert outcome.kind == PROMOTED and outcome.champion_after == outcome.candidate_version
    assert outcome.overridden_gates == ("ndcg@20 min_ratio_to teacher",)
    assert outcome.gate_roles["ndcg@20 min_ratio_to teacher"] == "diagnostic"
    assert ("diagnostic gate ndcg@20 min_ratio_to teacher FAILED, overridden: candidate conclusively beats "
            "champion (ndcg@20 +") in outcome.reason
    assert outcome.champion_worse_than_popularity and outcome.reason.endswith("; replaced tonight")
    assert any(text.startswith("[diagnostic] ndcg@20 min_ratio_to teacher") and "FAIL, overridden" in text
               for text in outcome.failed_gates)
    assert "overridden" in note_markdown(outcome)


@pytest.mark.parametrize("value, shown", [(100000, "100,000"), (200000000.0, "200,000,000"), (0.05, "0.05"),
                                          (250.0, "250"), (0.123456, "0.1235"), (1234.5678, "1,234.6"), (None, "–")])
def test_numbers_are_formatted_for_people(value, shown):
    assert fmt_number(value) == shown
