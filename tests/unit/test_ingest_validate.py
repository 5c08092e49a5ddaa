import hashlib
import json

import pandas as pd
import pytest

from components.ingest import run_ingest
from components.storage import Layout
from components.sources.synthetic import corrupt_landing, write_log
from components.validate import DataValidationError, run_validate

from tests.unit.data_fixtures import accept, day, land, setup


def _digest(path):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir()) if p.is_file()}


def test_a_good_day_is_accepted_with_a_report(tmp_path):
    layout, cfg = setup(tmp_path)
    result = accept(layout, cfg, 0)
    assert result.success and result.accepted_rows == result.rows > 0
    events = pd.read_parquet(layout.accepted(day(0)) / "events.parquet")
    assert events["event_id"].is_unique and len(events) == result.accepted_rows
    assert set(events["weight"]) <= set(cfg.data.event_weights.values())
    assert "PASSED" in (layout.reports(day(0)) / "validation" / "report.html").read_text()


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_csv_and_jsonl_give_the_same_accepted_rows_as_parquet(tmp_path, fmt):
    layout, cfg = setup(tmp_path)
    accept(layout, cfg, 0, "parquet")
    reference = pd.read_parquet(layout.accepted(day(0)) / "events.parquet").drop(columns=["source_file"])
    other_layout, _ = setup(tmp_path / fmt)
    accept(other_layout, cfg, 0, fmt)
    other = pd.read_parquet(other_layout.accepted(day(0)) / "events.parquet").drop(columns=["source_file"])
    pd.testing.assert_frame_equal(reference, other)


def test_rerunning_a_day_is_byte_identical_and_never_duplicates(tmp_path):
    layout, cfg = setup(tmp_path)
    first = accept(layout, cfg, 0)
    before = _digest(layout.accepted(day(0)))
    run_ingest(layout, day(0), cfg)
    second = run_validate(layout, day(0), cfg)
    assert _digest(layout.accepted(day(0))) == before
    assert second.accepted_rows == first.accepted_rows


def test_small_redelivery_is_deduplicated_and_kept_aside(tmp_path):
    layout, cfg = setup(tmp_path)
    path = land(layout, 0)
    frame = pd.read_parquet(path)
    write_log(pd.concat([frame, frame.iloc[:2]], ignore_index=True), path)
    run_ingest(layout, day(0), cfg)
    result = run_validate(layout, day(0), cfg)
    assert result.duplicate_rows == 2 and result.accepted_rows == len(frame)
    duplicates = pd.read_parquet(layout.accepted(day(0)) / "duplicates.parquet")
    assert len(duplicates) == 2 and result.accepted_rows + len(duplicates) == result.rows  # nothing lost


def test_late_events_within_tolerance_are_accepted_and_counted(tmp_path):
    layout, cfg = setup(tmp_path)
    path = land(layout, 0)
    frame = pd.read_parquet(path)
    frame.loc[:4, "ts"] = pd.Timestamp(day(0), tz="UTC") - pd.Timedelta(hours=2)
    write_log(frame, path)
    run_ingest(layout, day(0), cfg)
    assert run_validate(layout, day(0), cfg).late_rows == 5


@pytest.mark.parametrize(
    "corruption, rule",
    [
        ("missing_column", "expect_column_to_exist(item_id)"),
        ("duplicated_events", "expect_column_proportion_of_unique_values_to_be_between(event_id)"),
        ("wrong_day", "expect_column_values_to_be_between(ts_offset_hours)"),
        ("empty_file", "source_file_not_empty"),
        ("unreadable_file", "source_file_readable"),
    ],
)
def test_corrupted_days_are_quarantined_whole_with_a_report(tmp_path, corruption, rule):
    layout, cfg = setup(tmp_path)
    accept(layout, cfg, 0)
    land(layout, 1)
    corrupt_landing(layout.landing(day(1)), corruption)
    staged = run_ingest(layout, day(1), cfg)
    with pytest.raises(DataValidationError) as failure:
        run_validate(layout, day(1), cfg)
    message = str(failure.value)
    assert rule in message and "events" in message  # names the rule and the file(s)
    assert not layout.accepted(day(1)).exists()
    (attempt,) = list(layout.quarantine(day(1)).iterdir())
    rows = pd.read_parquet(attempt / "rows.parquet")
    assert len(rows) == staged.rows  # every input row is in quarantine
    raw = sorted(p.name for p in (attempt / "raw").iterdir())
    assert raw == sorted(p.name for p in layout.landing(day(1)).iterdir())
    report = (attempt / "report.html").read_text()
    assert "FAIL" in report and rule.split("(")[0] in report
    result = json.loads((attempt / "validation.json").read_text())["result"]
    assert result["success"] is False and result["quarantined_rows"] == staged.rows


def test_failing_rows_are_named_by_file_and_row(tmp_path):
    layout, cfg = setup(tmp_path)
    path = land(layout, 0, "csv")
    frame = pd.read_csv(path)
    frame.loc[6, "event_type"] = "teleport"
    frame.to_csv(path, index=False)
    run_ingest(layout, day(0), cfg)
    with pytest.raises(DataValidationError, match=r"expect_column_values_to_be_in_set\(event_type\): 1 rows.*events.csv:7 \(teleport\)"):
        run_validate(layout, day(0), cfg)


def test_a_volume_drop_warns_with_its_band_and_can_be_made_to_quarantine(tmp_path):
    overrides = {"validation.min_history_days": 3}
    layout, cfg = setup(tmp_path, **overrides)
    for offset in range(3):
        accept(layout, cfg, offset)
    path = land(layout, 3)
    write_log(pd.read_parquet(path).iloc[:25], path)  # a day with ~5% of normal volume
    run_ingest(layout, day(3), cfg)
    result = run_validate(layout, day(3), cfg)
    assert result.success and result.accepted_rows == 25  # an anomaly warns; the day goes on
    (volume,) = [r for r in result.warnings if r.rule == "volume"]
    volumes = [json.loads((layout.accepted(day(d)) / "manifest.json").read_text())["profile"]["volume"] for d in range(3)]
    low, high = volume.band
    assert volume.observed == 25 and low < sorted(volumes)[1] < high and 25 < low
    assert "WARN" in (layout.reports(day(3)) / "validation" / "report.html").read_text()
    manifest = json.loads((layout.accepted(day(3)) / "manifest.json").read_text())
    assert any(w.startswith("volume") for w in manifest["warnings"])

    strict_layout, strict = setup(tmp_path / "strict", **overrides, **{"validation.severity": {"volume": "quarantine"}})
    for offset in range(3):
        accept(strict_layout, strict, offset)
    write_log(pd.read_parquet(land(strict_layout, 3)).iloc[:25], strict_layout.landing(day(3)) / "events.parquet")
    run_ingest(strict_layout, day(3), strict)
    with pytest.raises(DataValidationError, match=r"FAIL volume: observed 25; expected \[\d"):
        run_validate(strict_layout, day(3), strict)


def test_a_previously_accepted_day_that_now_fails_is_superseded_not_lost(tmp_path):
    layout, cfg = setup(tmp_path)
    accept(layout, cfg, 0)
    corrupt_landing(layout.landing(day(0)), "wrong_day")
    run_ingest(layout, day(0), cfg)
    with pytest.raises(DataValidationError):
        run_validate(layout, day(0), cfg)
    assert not layout.accepted(day(0)).exists()
    (attempt,) = list(layout.quarantine(day(0)).iterdir())
    assert (attempt / "superseded_accepted" / "events.parquet").exists()


def test_landing_may_be_any_fsspec_uri(tmp_path):
    import fsspec

    from components.sources.synthetic import generate_day
    from tests.unit.data_fixtures import START, WORLD

    layout, cfg = setup(tmp_path)
    fs = fsspec.filesystem("memory")
    with fs.open(f"/landing-{tmp_path.name}/date={day(0)}/events.parquet", "wb") as handle:
        handle.write(generate_day(WORLD, START).to_parquet(index=False))
    staged = run_ingest(layout, day(0), cfg, landing=f"memory:///landing-{tmp_path.name}/date={day(0)}")
    assert staged.rows == len(generate_day(WORLD, START))
    assert run_validate(layout, day(0), cfg).accepted_rows == staged.rows


def test_epoch_second_timestamps_parse_in_every_format(tmp_path):
    from components.ingest import normalize

    start = pd.Timestamp("2026-01-01", tz="UTC")
    expected = [start, start + pd.Timedelta(seconds=90)]
    epochs = [int(t.timestamp()) for t in expected]
    as_text = pd.DataFrame({"ts": [str(e) for e in epochs]})  # how CSV arrives (read as text)
    as_numbers = pd.DataFrame({"ts": epochs})
    iso = pd.DataFrame({"ts": ["2026-01-01T00:00:00Z", "2026-01-01T00:01:30Z"]})
    for frame in (as_text, as_numbers, iso):
        assert normalize(frame, "f")["ts"].tolist() == expected


def test_an_event_redelivered_on_a_later_day_is_not_accepted_twice(tmp_path):
    layout, cfg = setup(tmp_path)
    accept(layout, cfg, 0)
    yesterday = pd.read_parquet(layout.landing(day(0)) / "events.parquet").iloc[:3]
    path = land(layout, 1)
    frame = pd.read_parquet(path)
    late = yesterday.assign(ts=pd.Timestamp(day(1), tz="UTC") + pd.Timedelta(minutes=5))
    write_log(pd.concat([frame, late], ignore_index=True), path)
    run_ingest(layout, day(1), cfg)
    result = run_validate(layout, day(1), cfg)
    assert result.accepted_rows == len(frame) and result.duplicate_rows == 3
    manifest = json.loads((layout.accepted(day(1)) / "manifest.json").read_text())
    assert manifest["rows_duplicate_of_earlier_days"] == 3
    accepted = pd.concat([pd.read_parquet(layout.accepted(day(d)) / "events.parquet") for d in (0, 1)])
    assert accepted["event_id"].is_unique


def test_an_unknown_column_is_kept_beside_the_events_and_reported(tmp_path):
    layout, cfg = setup(tmp_path)
    path = land(layout, 0)
    frame = pd.read_parquet(path)
    write_log(frame.assign(session=[f"s{i % 7}" for i in range(len(frame))]), path)
    run_ingest(layout, day(0), cfg)
    result = run_validate(layout, day(0), cfg)
    assert result.success and result.unknown_columns == ("session",)
    (drift,) = [r for r in result.warnings if r.rule == "unknown_columns"]
    assert drift.observed == "session" and drift.samples == ("events.parquet (session)",)
    sidecar = pd.read_parquet(layout.accepted(day(0)) / "extra_columns.parquet")
    events = pd.read_parquet(layout.accepted(day(0)) / "events.parquet")
    assert sidecar["event_id"].tolist() == events["event_id"].tolist()  # row for row
    by_event = frame.assign(session=[f"s{i % 7}" for i in range(len(frame))]).set_index("event_id")["session"]
    assert sidecar["session"].tolist() == by_event.loc[sidecar["event_id"]].tolist()
    assert "session" in (layout.reports(day(0)) / "validation" / "report.md").read_text()


def test_a_changed_column_type_quarantines_naming_column_expected_and_seen(tmp_path):
    layout, cfg = setup(tmp_path)
    path = land(layout, 0)
    frame = pd.read_parquet(path)
    write_log(frame.assign(user_id=frame.index.to_numpy() + 0.5), path)  # ids became floats
    staged = run_ingest(layout, day(0), cfg)
    with pytest.raises(DataValidationError) as failure:
        run_validate(layout, day(0), cfg)
    assert "expect_column_type(user_id)" in str(failure.value)
    assert "events.parquet (user_id: expected string or integer, seen float)" in str(failure.value)
    (attempt,) = list(layout.quarantine(day(0)).iterdir())
    assert len(pd.read_parquet(attempt / "rows.parquet")) == staged.rows


def test_a_one_user_day_is_flagged_loudly_and_config_decides_warn_or_quarantine(tmp_path, caplog):
    layout, cfg = setup(tmp_path)
    path = land(layout, 0)
    frame = pd.read_parquet(path)
    write_log(frame.assign(user_id="bot-1"), path)
    run_ingest(layout, day(0), cfg)
    with caplog.at_level("WARNING", logger="components.validate"):
        result = run_validate(layout, day(0), cfg)
    (bot,) = [r for r in result.warnings if r.rule == "bot_suspect"]
    assert bot.observed == f"user bot-1: {len(frame)} of {len(frame)} events (100%)"
    assert "WARN bot_suspect(user_id)" in caplog.text

    strict_layout, strict = setup(tmp_path / "strict", **{"validation.severity": {"bot_suspect": "quarantine"}})
    write_log(frame.assign(user_id="bot-1"), land(strict_layout, 0))
    run_ingest(strict_layout, day(0), strict)
    with pytest.raises(DataValidationError, match="FAIL bot_suspect"):
        run_validate(strict_layout, day(0), strict)


def test_a_quarantined_day_makes_no_later_day_look_new_or_abnormal(tmp_path):
    layout, cfg = setup(tmp_path, **{"validation.min_history_days": 4})
    for offset in range(5):
        accept(layout, cfg, offset)
    land(layout, 5)
    corrupt_landing(layout.landing(day(5)), "wrong_day")
    run_ingest(layout, day(5), cfg)
    with pytest.raises(DataValidationError):
        run_validate(layout, day(5), cfg)
    after = [accept(layout, cfg, offset) for offset in (6, 7)]
    assert all(r.success and not r.warnings for r in after)
    # Users first seen on the quarantined day are not new on the next one.
    quarantined = pd.read_parquet(next(layout.quarantine(day(5)).iterdir()) / "rows.parquet")
    seen = pd.concat([pd.read_parquet(layout.accepted(day(d)) / "events.parquet") for d in range(5)] + [quarantined])
    rows6 = pd.read_parquet(layout.accepted(day(6)) / "events.parquet")
    assert after[0].profile["new_user_share"] == pytest.approx((~rows6["user_id"].isin(seen["user_id"])).mean())
    # The quarantined day's normal metrics stay in the history (its timestamps were broken, not its
    # users): the bands are those of an uninterrupted history.
    assert "6 days in the 56-day lookback, 1 of them quarantined" in after[0].notes[0]


def test_a_failing_days_log_fits_on_a_screen_summary_first(tmp_path, caplog):
    layout, cfg = setup(tmp_path)
    path = land(layout, 0, "csv")
    frame = pd.read_csv(path)
    frame.loc[6, "event_type"] = "teleport"
    frame.loc[3, "user_id"] = None
    frame.to_csv(path, index=False)
    run_ingest(layout, day(0), cfg)
    with caplog.at_level("INFO"), pytest.raises(DataValidationError) as failure:
        run_validate(layout, day(0), cfg)
    lines = str(failure.value).splitlines()
    assert lines[0].startswith(f"validation FAILED for {day(0)}: 2 rule(s) failed")
    assert lines[1].startswith("  - FAIL ") and lines[2].startswith("  - FAIL ")
    assert lines[-1].startswith("report: ") and lines[-1].endswith("report.html")
    assert "Skipping registering function" not in caplog.text
    assert len(caplog.text.splitlines()) < 25


def test_anomaly_bands_use_the_same_weekday_once_enough_of_them_exist():
    import datetime as dt

    from components.config import load_config
    from components.validate import anomaly_rules

    cfg = load_config(overrides={"validation.anomaly_lookback_days": 28, "validation.weekday_min_days": 4})
    start = dt.date(2026, 1, 1)
    # 28 days: Thursdays carry 1000 events, every other day 100.
    history = [((start + dt.timedelta(days=i)).isoformat(), {"volume": 1000 if (start + dt.timedelta(days=i)).weekday() == 3 else 100})
               for i in range(28)]
    thursday = (start + dt.timedelta(days=28)).isoformat()  # 2026-01-29, a Thursday
    (volume,) = [r for r in anomaly_rules({"volume": 1000}, history, thursday, cfg) if r.rule == "volume"]
    assert volume.verdict == "pass" and "4 same-weekday" in volume.expected
    (low,) = [r for r in anomaly_rules({"volume": 100}, history, thursday, cfg) if r.rule == "volume"]
    assert low.verdict == "WARN" and low.band[0] > 100  # normal for a Friday, not for a Thursday
    friday = (start + dt.timedelta(days=29)).isoformat()
    (fri,) = [r for r in anomaly_rules({"volume": 100}, history[1:], friday, cfg) if r.rule == "volume"]
    assert fri.verdict == "pass"
    short = anomaly_rules({"volume": 5}, history[:6], thursday, cfg)
    assert all(r.verdict == "skipped" and "6 days of history" in r.skipped for r in short)


def test_a_quarantined_days_anomalous_metrics_stay_out_of_the_history(tmp_path):
    from components.validate import _history

    layout, cfg = setup(tmp_path, **{"validation.min_history_days": 4, "validation.severity": {"bot_suspect": "quarantine"}})
    for offset in range(5):
        accept(layout, cfg, offset)
    path = land(layout, 5)
    write_log(pd.read_parquet(path).assign(user_id="bot-1"), path)
    run_ingest(layout, day(5), cfg)
    with pytest.raises(DataValidationError, match="FAIL bot_suspect") as failure:
        run_validate(layout, day(5), cfg)
    assert "WARN top_user_share" in str(failure.value)
    history, held = _history(layout, day(6), cfg)
    assert held == 1 and [d for d, _ in history] == [day(d) for d in range(6)]
    bot_day = dict(history)[day(5)]
    assert "top_user_share" not in bot_day and bot_day["volume"] == len(pd.read_parquet(path))


def test_shares_of_a_tiny_day_are_not_judged_but_its_volume_is():
    from components.config import load_config
    from components.validate import anomaly_rules

    cfg = load_config()
    history = [(f"2026-01-{d:02d}", {"volume": 400, "top_item_share": 0.02}) for d in range(1, 15)]
    rules = {r.rule: r for r in anomaly_rules({"volume": 4, "top_item_share": 0.5}, history, "2026-01-15", cfg)}
    assert rules["volume"].verdict == "WARN"
    assert rules["top_item_share"].verdict == "skipped" and "4 rows (< anomaly_min_rows 50)" in rules["top_item_share"].skipped
    rules = {r.rule: r for r in anomaly_rules({"volume": 400, "top_item_share": 0.5}, history, "2026-01-15", cfg)}
    assert rules["top_item_share"].verdict == "WARN" and rules["top_item_share"].band == (None, 0.07)


def test_missing_landing_day_fails_at_once_with_what_to_do(tmp_path):
    """A day that has not landed is a PermanentStageFailure (no 30 minutes of retries), saying how to re-run."""
    from components.config import PipelineConfig
    from components.errors import LandingMissing, PermanentStageFailure

    with pytest.raises(LandingMissing) as info:
        run_ingest(Layout.at(tmp_path), "2026-01-07", PipelineConfig(root=str(tmp_path)))
    assert isinstance(info.value, PermanentStageFailure)
    assert "no landing files for 2026-01-07" in str(info.value) and "graphdistill run ingest --day 2026-01-07" in str(info.value)
