import hashlib
import json

import pandas as pd
import pytest

from components.data.ingest import run_ingest
from components.core.catalog import Layout
from components.data.sources.synthetic import corrupt_landing, write_log
from components.data.validate import run_validate
from components.data.validation_result import DataValidationError

from tests.unit.data_fixtures import accept, current_inputs, day, land, setup
from tests.unit.fault_fixtures import as_unprivileged, shared_tmp  # noqa: F401 (shared_tmp: a fixture)


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
    second = run_validate(layout, day(0), cfg, **current_inputs(layout, "validate", day(0)))
    assert _digest(layout.accepted(day(0))) == before
    assert second.accepted_rows == first.accepted_rows


def test_small_redelivery_is_deduplicated_and_kept_aside(tmp_path):
    layout, cfg = setup(tmp_path)
    path = land(layout, 0)
    frame = pd.read_parquet(path)
    write_log(pd.concat([frame, frame.iloc[:2]], ignore_index=True), path)
    run_ingest(layout, day(0), cfg)
    result = run_validate(layout, day(0), cfg, **current_inputs(layout, "validate", day(0)))
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
    assert run_validate(layout, day(0), cfg, **current_inputs(layout, "validate", day(0))).late_rows == 5


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
        run_validate(layout, day(1), cfg, **current_inputs(layout, "validate", day(1)))
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
        run_validate(layout, day(0), cfg, **current_inputs(layout, "validate", day(0)))


def test_a_volume_drop_warns_with_its_band_and_can_be_made_to_quarantine(tmp_path):
    overrides = {"validation.min_history_days": 3}
    layout, cfg = setup(tmp_path, **overrides)
    for offset in range(3):
        accept(layout, cfg, offset)
    path = land(layout, 3)
    write_log(pd.read_parquet(path).iloc[:25], path)  # a day with ~5% of normal volume
    run_ingest(layout, day(3), cfg)
    result = run_validate(layout, day(3), cfg, **current_inputs(layout, "validate", day(3)))
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
        run_validate(strict_layout, day(3), strict, **current_inputs(strict_layout, "validate", day(3)))


def test_a_previously_accepted_day_that_now_fails_is_superseded_not_lost(tmp_path):
    layout, cfg = setup(tmp_path)
    accept(layout, cfg, 0)
    corrupt_landing(layout.landing(day(0)), "wrong_day")
    run_ingest(layout, day(0), cfg)
    with pytest.raises(DataValidationError):
        run_validate(layout, day(0), cfg, **current_inputs(layout, "validate", day(0)))
    assert not layout.accepted(day(0)).exists()
    (attempt,) = list(layout.quarantine(day(0)).iterdir())
    assert (attempt / "superseded_accepted" / "events.parquet").exists()


def test_landing_may_be_any_fsspec_uri(tmp_path):
    import fsspec

    from components.data.sources.synthetic import generate_day
    from tests.unit.data_fixtures import START, WORLD

    layout, cfg = setup(tmp_path)
    fs = fsspec.filesystem("memory")
    with fs.open(f"/landing-{tmp_path.name}/date={day(0)}/events.parquet", "wb") as handle:
        handle.write(generate_day(WORLD, START).to_parquet(index=False))
    staged = run_ingest(layout, day(0), cfg, landing=f"memory:///landing-{tmp_path.name}/date={day(0)}")
    assert staged.rows == len(generate_day(WORLD, START))
    assert run_validate(layout, day(0), cfg, **current_inputs(layout, "validate", day(0))).accepted_rows == staged.rows


def test_epoch_second_timestamps_parse_in_every_format(tmp_path):
    from components.data.ingest import normalize

    start = pd.Timestamp("2026-01-01", tz="UTC")
    expected = [start, start + pd.Timedelta(seconds=90)]
    epochs = [int(t.timestamp()) for t in expected]
    as_text = pd.DataFrame({"ts": [str(e) for e in epochs]})  # how CSV arrives (read as text)
    as_numbers = pd.DataFrame({"ts": epochs})
    iso = pd.DataFrame({"ts": ["2026-01-01T00:00:00Z", "2026-01-01T00:01:30Z"]})
    millis = pd.DataFrame({"ts": [e * 1000 for e in epochs]})  # detected by magnitude
    micros_text = pd.DataFrame({"ts": [str(e * 10**6) for e in epochs]})
    for frame in (as_text, as_numbers, iso, millis, micros_text):
        rows, form, issues = normalize(frame, "f")
        assert rows["ts"].tolist() == expected and issues.empty
    assert [normalize(f, "f")[1] for f in (as_text, iso, millis, micros_text)] == ["epoch-s", "iso-offset", "epoch-ms", "epoch-us"]


def _redelivered(layout, cfg, count: int):
    """Day 0 accepted; day 1 landed. Returns (day 1's rows, day 0's last ``count`` events, which lie
    within day 1's late tolerance, and day 1's file)."""
    accept(layout, cfg, 0)
    yesterday = pd.read_parquet(layout.landing(day(0)) / "events.parquet").sort_values("ts").iloc[-count:]
    assert (pd.to_datetime(yesterday["ts"], utc=True)
            >= pd.Timestamp(day(1), tz="UTC") - pd.Timedelta(hours=cfg.data.late_tolerance_hours)).all()
    path = land(layout, 1)
    return pd.read_parquet(path), yesterday, path


def test_an_event_redelivered_on_a_later_day_is_not_accepted_twice(tmp_path):
    layout, cfg = setup(tmp_path)
    frame, yesterday, path = _redelivered(layout, cfg, 3)
    write_log(pd.concat([frame, yesterday], ignore_index=True), path)  # unchanged: a redelivery
    run_ingest(layout, day(1), cfg)
    result = run_validate(layout, day(1), cfg, **current_inputs(layout, "validate", day(1)))
    assert result.accepted_rows == len(frame) and result.duplicate_rows == 3
    manifest = json.loads((layout.accepted(day(1)) / "manifest.json").read_text())
    assert manifest["rows_duplicate_of_earlier_days"] == 3
    accepted = pd.concat([pd.read_parquet(layout.accepted(day(d)) / "events.parquet") for d in (0, 1)])
    assert accepted["event_id"].is_unique
    (rule,) = [r for r in result.rules if r.name == "event_id_payload_conflict"]  # reported: passed, with the count
    assert rule.verdict == "pass"
    assert rule.observed == "3 rows redelivered from earlier days (same event: dropped as duplicates)"


def test_an_event_id_of_an_earlier_day_with_another_payload_quarantines_naming_both_days(tmp_path):
    """Issue 20: an id accepted yesterday and reused today for another event was dropped as a redelivery."""
    layout, cfg = setup(tmp_path)
    frame, yesterday, path = _redelivered(layout, cfg, 3)
    reused = yesterday.assign(ts=pd.Timestamp(day(1), tz="UTC") + pd.Timedelta(minutes=5))  # same ids, another time
    write_log(pd.concat([frame, reused], ignore_index=True), path)
    run_ingest(layout, day(1), cfg)
    with pytest.raises(DataValidationError) as failure:
        run_validate(layout, day(1), cfg, **current_inputs(layout, "validate", day(1)))
    message = str(failure.value)
    assert ("FAIL event_id_payload_conflict: 3 event ids of earlier days; observed 3 rows; 0 rows redelivered from "
            "earlier days") in message
    # Today's file:row and the earlier day's file:row, each with its payload.
    first = reused.iloc[0]
    landed = pd.read_parquet(layout.landing(day(0)) / "events.parquet")
    earlier_row = int(landed.index[landed["event_id"] == first["event_id"]][0]) + 1
    ts = lambda t: pd.Timestamp(t).tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%S%z")  # noqa: E731
    assert (f"event {first['event_id']}: events.parquet:{len(frame) + 1} ({first['user_id']}, {first['item_id']}, "
            f"{ts(first['ts'])}, {first['event_type']}) vs {day(0)} events.parquet:{earlier_row} ({first['user_id']}, "
            f"{first['item_id']}, {ts(yesterday.iloc[0]['ts'])}, {first['event_type']})") in message
    assert not layout.accepted(day(1)).exists()

    # Warned instead (the within-day rule's severity setting): accepted, the earlier day's copy kept.
    warn_layout, warn = setup(tmp_path / "warn", **{"validation.severity": {"event_id_payload_conflict": "warn"}})
    frame, yesterday, path = _redelivered(warn_layout, warn, 3)
    write_log(pd.concat([frame, reused], ignore_index=True), path)
    run_ingest(warn_layout, day(1), warn)
    result = run_validate(warn_layout, day(1), warn, **current_inputs(warn_layout, "validate", day(1)))
    assert result.success and result.accepted_rows == len(frame) and result.duplicate_rows == 3
    assert [r.name for r in result.warnings] == ["event_id_payload_conflict"]


def test_an_unknown_column_is_kept_beside_the_events_and_reported(tmp_path):
    layout, cfg = setup(tmp_path)
    path = land(layout, 0)
    frame = pd.read_parquet(path)
    write_log(frame.assign(session=[f"s{i % 7}" for i in range(len(frame))]), path)
    run_ingest(layout, day(0), cfg)
    result = run_validate(layout, day(0), cfg, **current_inputs(layout, "validate", day(0)))
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
        run_validate(layout, day(0), cfg, **current_inputs(layout, "validate", day(0)))
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
    with caplog.at_level("WARNING", logger="components.data.validate"):
        result = run_validate(layout, day(0), cfg, **current_inputs(layout, "validate", day(0)))
    (bot,) = [r for r in result.warnings if r.rule == "bot_suspect"]
    assert bot.observed == f"user bot-1: {len(frame)} of {len(frame)} events (100%)"
    assert "WARN bot_suspect(user_id)" in caplog.text

    strict_layout, strict = setup(tmp_path / "strict", **{"validation.severity": {"bot_suspect": "quarantine"}})
    write_log(frame.assign(user_id="bot-1"), land(strict_layout, 0))
    run_ingest(strict_layout, day(0), strict)
    with pytest.raises(DataValidationError, match="FAIL bot_suspect"):
        run_validate(strict_layout, day(0), strict, **current_inputs(strict_layout, "validate", day(0)))


def test_a_quarantined_day_makes_no_later_day_look_new_or_abnormal(tmp_path):
    layout, cfg = setup(tmp_path, **{"validation.min_history_days": 4})
    for offset in range(5):
        accept(layout, cfg, offset)
    land(layout, 5)
    corrupt_landing(layout.landing(day(5)), "wrong_day")
    run_ingest(layout, day(5), cfg)
    with pytest.raises(DataValidationError):
        run_validate(layout, day(5), cfg, **current_inputs(layout, "validate", day(5)))
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
        run_validate(layout, day(0), cfg, **current_inputs(layout, "validate", day(0)))
    lines = str(failure.value).splitlines()
    assert lines[0].startswith(f"validation FAILED for {day(0)}: 2 rule(s) failed")
    assert lines[1].startswith("  - FAIL ") and lines[2].startswith("  - FAIL ")
    assert lines[-1].startswith("report: ") and lines[-1].endswith("report.html")
    assert "Skipping registering function" not in caplog.text
    assert len(caplog.text.splitlines()) < 25


def test_anomaly_bands_use_the_same_weekday_once_enough_of_them_exist():
    import datetime as dt

    from components.core.config import load_config
    from components.data.anomalies import anomaly_rules

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
    from components.data.earlier_days import EarlierDays, profile_history
    from components.pipeline import catalog_inputs

    layout, cfg = setup(tmp_path, **{"validation.min_history_days": 4, "validation.severity": {"bot_suspect": "quarantine"}})
    for offset in range(5):
        accept(layout, cfg, offset)
    path = land(layout, 5)
    write_log(pd.read_parquet(path).assign(user_id="bot-1"), path)
    run_ingest(layout, day(5), cfg)
    with pytest.raises(DataValidationError, match="FAIL bot_suspect") as failure:
        run_validate(layout, day(5), cfg, **current_inputs(layout, "validate", day(5)))
    assert "WARN top_user_share" in str(failure.value)
    earlier_days = EarlierDays.located(layout, day(6), catalog_inputs("validate", day(6), layout, cfg)["history"])
    history, held = profile_history(earlier_days, day(6), cfg)
    assert held == 1 and [d for d, _ in history] == [day(d) for d in range(6)]
    bot_day = dict(history)[day(5)]
    assert "top_user_share" not in bot_day and bot_day["volume"] == len(pd.read_parquet(path))


def test_shares_of_a_tiny_day_are_not_judged_but_its_volume_is():
    from components.core.config import load_config
    from components.data.anomalies import anomaly_rules

    cfg = load_config()
    history = [(f"2026-01-{d:02d}", {"volume": 400, "top_item_share": 0.02}) for d in range(1, 15)]
    rules = {r.rule: r for r in anomaly_rules({"volume": 4, "top_item_share": 0.5}, history, "2026-01-15", cfg)}
    assert rules["volume"].verdict == "WARN"
    assert rules["top_item_share"].verdict == "skipped" and "4 rows (< anomaly_min_rows 50)" in rules["top_item_share"].skipped
    rules = {r.rule: r for r in anomaly_rules({"volume": 400, "top_item_share": 0.5}, history, "2026-01-15", cfg)}
    assert rules["top_item_share"].verdict == "WARN" and rules["top_item_share"].band == (None, 0.07)


def test_missing_landing_day_fails_at_once_with_what_to_do(tmp_path):
    """A day that has not landed is a PermanentStageFailure (no 30 minutes of retries), saying how to re-run."""
    from components.core.config import PipelineConfig
    from components.core.errors import LandingMissing, PermanentStageFailure

    with pytest.raises(LandingMissing) as info:
        run_ingest(Layout.at(tmp_path), "2026-01-07", PipelineConfig(root=str(tmp_path)))
    assert isinstance(info.value, PermanentStageFailure)
    assert "no landing files for 2026-01-07" in str(info.value) and "graphdistill run ingest --day 2026-01-07" in str(info.value)


# --- the input contract, one bad input per case (README "Interaction-log contract") -------------


def _csv_day(layout, offset=0):
    """The generated day as CSV text columns (how producers deliver it), and its path."""
    path = land(layout, offset, "csv")
    return pd.read_csv(path, dtype=str, keep_default_na=False), path


def _quarantined(layout, cfg, offset=0):
    staged = run_ingest(layout, day(offset), cfg)
    with pytest.raises(DataValidationError) as failure:
        run_validate(layout, day(offset), cfg, **current_inputs(layout, "validate", day(offset)))
    (attempt,) = list(layout.quarantine(day(offset)).iterdir())
    result = json.loads((attempt / "validation.json").read_text())["result"]
    # Row accounting: every staged row is in quarantine, nothing accepted.
    assert result["quarantined_rows"] == result["rows"] == staged.rows == len(pd.read_parquet(attempt / "rows.parquet"))
    assert result["accepted_rows"] == 0 and not layout.accepted(day(offset)).exists()
    return str(failure.value), result, attempt


def test_mixed_naive_and_offset_timestamps_quarantine_naming_file_row_raw_value_and_cause(tmp_path):
    layout, cfg = setup(tmp_path)
    frame, path = _csv_day(layout)
    frame["ts"] = frame["ts"].str.removesuffix("Z")  # naive ISO
    frame.loc[0, "ts"] = frame.loc[0, "ts"] + "+02:00"  # the first row carries an offset
    frame.to_csv(path, index=False)
    message, _, attempt = _quarantined(layout, cfg)
    raw = frame.loc[0, "ts"]
    assert (f"FAIL ts_consistent_form(ts): 1 rows; observed 1 file(s); expected one timestamp form per file"
            in message)
    assert (f"events.csv:1 ('{raw}': iso-offset value in a file whose other {len(frame) - 1} timestamps are "
            "iso-naive (one form per file))" in message)
    assert "ts_consistent_form" in (attempt / "report.md").read_text()


def test_all_naive_timestamps_are_read_as_utc_and_epoch_milliseconds_are_detected(tmp_path):
    layout, cfg = setup(tmp_path)
    reference = accept(layout, cfg, 0)
    expected = pd.read_parquet(layout.accepted(day(0)) / "events.parquet")["ts"]
    for name, write in {
        "naive": lambda ts: ts.str.removesuffix("Z"),
        "epoch ms": lambda ts: (pd.to_datetime(ts).astype("int64") // 10**6).astype(str),
    }.items():
        other, other_cfg = setup(tmp_path / name.replace(" ", "_"))
        frame, path = _csv_day(other)
        frame.assign(ts=write(frame["ts"])).to_csv(path, index=False)
        result = (run_ingest(other, day(0), other_cfg), run_validate(other, day(0), other_cfg, **current_inputs(other, "validate", day(0))))[1]
        assert result.success and result.accepted_rows == reference.accepted_rows, name
        assert pd.read_parquet(other.accepted(day(0)) / "events.parquet")["ts"].tolist() == expected.tolist(), name
        files = json.loads((other.accepted(day(0)) / "manifest.json").read_text())["files"]
        assert files[0]["ts_form"] == {"naive": "iso-naive", "epoch ms": "epoch-ms"}[name]


def test_unparsable_and_out_of_range_timestamps_name_raw_value_and_cause(tmp_path):
    layout, cfg = setup(tmp_path)
    frame, path = _csv_day(layout)
    frame.loc[3, "ts"] = "yesterday"
    frame.to_csv(path, index=False)
    message, _, _ = _quarantined(layout, cfg)
    assert ("FAIL expect_column_values_to_not_be_null(ts): 1 rows; e.g. events.csv:4 ('yesterday': "
            "neither ISO 8601 nor an epoch number)") in message
    assert "ts_consistent_form" not in message  # an unparsable value has no form
    # The contract's declared unit reads epoch milliseconds as seconds: out of range, said so.
    strict_layout, strict = setup(tmp_path / "declared", **{"validation.epoch_unit": "ns"})
    frame, path = _csv_day(strict_layout)
    frame.loc[0, "ts"] = "99999999999999999999999"
    frame.to_csv(path, index=False)
    message, _, _ = _quarantined(strict_layout, strict)
    assert "events.csv:1 ('99999999999999999999999': epoch value out of range as ns)" in message


def _numeric_ids(frame):
    return frame.assign(user_id=frame["user_id"].str.removeprefix("u"))


def test_float_ids_beside_integer_ids_quarantine_or_are_read_as_integers_by_declared_type(tmp_path):
    layout, cfg = setup(tmp_path)
    frame, path = _csv_day(layout)
    frame = _numeric_ids(frame)
    floats = frame.index % 3 == 0  # about a third of the rows, as a producer's float cast writes them
    frame.loc[floats, "user_id"] = frame.loc[floats, "user_id"] + ".0"
    frame.to_csv(path, index=False)
    message, result, _ = _quarantined(layout, cfg)
    (rule,) = [r for r in result["rules"] if r["rule"] == "id_float_form" and not r["success"]]
    assert rule["column"] == "user_id" and rule["unexpected_count"] == int(floats.sum())
    assert f"events.csv:1 ('{frame.loc[0, 'user_id']}': whole float among string ids" in message

    typed_layout, typed = setup(tmp_path / "typed", **{"validation.id_types": {"user_id": "integer"},
                                                       "validation.severity": {"id_float_form": "warn"}})
    frame.to_csv(land(typed_layout, 0, "csv"), index=False)
    run_ingest(typed_layout, day(0), typed)
    result = run_validate(typed_layout, day(0), typed, **current_inputs(typed_layout, "validate", day(0)))
    assert result.success and result.accepted_rows == len(frame)
    users = pd.read_parquet(typed_layout.accepted(day(0)) / "events.parquet")["user_id"]
    assert not users.str.contains(".", regex=False).any()  # 13.0 is 13: no ghost ids
    assert users.nunique() == frame["user_id"].str.removesuffix(".0").nunique()
    (warning,) = [r for r in result.warnings if r.rule == "id_float_form"]
    assert f"read as {frame.loc[0, 'user_id'].removesuffix('.0')}" in warning.samples[0]


def test_an_integer_id_column_rejects_text_ids_naming_the_row(tmp_path):
    layout, cfg = setup(tmp_path, **{"validation.id_types": {"user_id": "integer"}})
    frame, path = _csv_day(layout)
    frame = _numeric_ids(frame)
    frame.loc[5, "user_id"] = "u17"
    frame.to_csv(path, index=False)
    message, _, _ = _quarantined(layout, cfg)
    assert ("FAIL id_type(user_id): 1 rows; observed 1 file(s); expected integer ids (validation.id_types); "
            "e.g. events.csv:6 ('u17': not an integer (validation.id_types.user_id: integer))") in message


@pytest.mark.parametrize("token", ["NULL", "nan", "None"])
def test_null_tokens_are_missing_values_never_ids(tmp_path, token):
    layout, cfg = setup(tmp_path)
    frame, path = _csv_day(layout)
    frame.loc[4, "user_id"] = token
    frame.to_csv(path, index=False)
    message, _, attempt = _quarantined(layout, cfg)
    assert (f"FAIL expect_column_values_to_not_be_null(user_id): 1 rows; e.g. events.csv:5 ('{token}': "
            "null token (validation.null_tokens))") in message
    assert token not in set(pd.read_parquet(attempt / "rows.parquet")["user_id"].dropna())


def test_nfc_and_nfd_spellings_of_one_id_are_one_user_and_warn_or_quarantine_by_rule(tmp_path):
    import unicodedata

    nfc, nfd = unicodedata.normalize("NFC", "josé"), unicodedata.normalize("NFD", "josé")
    layout, cfg = setup(tmp_path)
    frame, path = _csv_day(layout)
    frame.loc[:9, "user_id"] = nfc
    frame.loc[10:14, "user_id"] = nfd
    frame.to_csv(path, index=False)
    run_ingest(layout, day(0), cfg)
    result = run_validate(layout, day(0), cfg, **current_inputs(layout, "validate", day(0)))
    assert result.success and result.accepted_rows == len(frame)
    users = pd.read_parquet(layout.accepted(day(0)) / "events.parquet")["user_id"]
    assert (users == nfc).sum() == 15 and not (users == nfd).any()
    (warning,) = [r for r in result.warnings if r.rule == "id_unicode_form"]
    assert warning.unexpected_count == 5 and warning.samples[0] == f"events.csv:11 ({ascii(nfd)}: not in Unicode NFC form; read as its NFC form)"

    strict_layout, strict = setup(tmp_path / "strict", **{"validation.severity": {"id_unicode_form": "quarantine"}})
    frame.to_csv(land(strict_layout, 0, "csv"), index=False)
    message, _, _ = _quarantined(strict_layout, strict)
    assert "FAIL id_unicode_form(user_id): 5 rows" in message


def test_an_event_id_reused_with_another_payload_quarantines_naming_both_rows(tmp_path):
    layout, cfg = setup(tmp_path)
    frame, path = _csv_day(layout)
    frame.loc[20, "event_id"] = frame.loc[2, "event_id"]  # same id, another user/item/time
    frame.to_csv(path, index=False)
    message, _, _ = _quarantined(layout, cfg)
    first, second = sorted([3, 21], key=lambda r: (frame.loc[r - 1, "ts"], r))
    ts = lambda r: pd.Timestamp(frame.loc[r - 1, "ts"]).strftime("%Y-%m-%dT%H:%M:%S%z")  # noqa: E731
    row = lambda r: f"events.csv:{r} ({frame.loc[r - 1, 'user_id']}, {frame.loc[r - 1, 'item_id']}, {ts(r)}, {frame.loc[r - 1, 'event_type']})"  # noqa: E731
    assert f"FAIL event_id_payload_conflict(event_id): 1 event ids; observed 2 rows" in message
    assert f"event {frame.loc[2, 'event_id']}: " in message and row(3) in message and row(21) in message


def test_content_duplicates_under_new_event_ids_are_dropped_within_tolerance_and_quarantine_beyond(tmp_path):
    layout, cfg = setup(tmp_path)
    frame, path = _csv_day(layout)
    copies = frame.iloc[:2].assign(event_id=lambda f: f["event_id"] + "-again")
    pd.concat([frame, copies], ignore_index=True).to_csv(path, index=False)
    run_ingest(layout, day(0), cfg)
    result = run_validate(layout, day(0), cfg, **current_inputs(layout, "validate", day(0)))
    assert result.success and result.accepted_rows == len(frame) and result.content_duplicate_rows == 2
    assert result.rows == result.accepted_rows + result.duplicate_rows  # nothing lost
    duplicates = pd.read_parquet(layout.accepted(day(0)) / "duplicates.parquet")
    assert duplicates["duplicate_of"].tolist() == ["content", "content"]
    assert json.loads((layout.accepted(day(0)) / "manifest.json").read_text())["rows_content_duplicate_dropped"] == 2
    (rule,) = [r for r in result.rules if r.rule == "content_duplicates"]
    assert rule.verdict == "pass" and rule.unexpected_count == 2
    assert rule.samples[0].startswith(f"events.csv:{len(frame) + 1} (event {copies.iloc[0]['event_id']}) repeats events.csv:1 ")
    assert "(by content 2)" in (layout.reports(day(0)) / "validation" / "report.md").read_text()

    heavy_layout, heavy = setup(tmp_path / "heavy")
    frame, path = _csv_day(heavy_layout)
    copies = frame.sample(frac=0.3, random_state=0).assign(event_id=lambda f: f["event_id"] + "-again")
    pd.concat([frame, copies], ignore_index=True).to_csv(path, index=False)
    message, _, _ = _quarantined(heavy_layout, heavy)
    share = round(len(copies) / (len(frame) + len(copies)), 4)
    assert f"FAIL content_duplicates: {len(copies)} rows; observed {share}; expected share <= 0.05" in message


def test_every_entry_of_the_partition_is_read_or_listed_as_skipped_and_the_rows_add_up(tmp_path):
    import os

    layout, cfg = setup(tmp_path)
    frame = pd.read_parquet(land(layout, 0))
    landing = layout.landing(day(0))
    halves = {"events.parquet": frame.iloc[:100], "hour=12/part-0.parquet": frame.iloc[100:]}
    (landing / "hour=12").mkdir()
    for name, part in halves.items():  # a subfolder's file is read: its rows are the day's
        write_log(part.reset_index(drop=True), landing / name)
    outside = tmp_path / "elsewhere.parquet"
    write_log(frame.iloc[:10], outside)
    os.symlink(outside, landing / "linked.parquet")
    write_log(frame.iloc[:5], landing / "_part-9.parquet")
    write_log(frame.iloc[:5], landing / ".hidden.parquet")
    (landing / "_SUCCESS").write_bytes(b"")
    staged = run_ingest(layout, day(0), cfg)
    result = run_validate(layout, day(0), cfg, **current_inputs(layout, "validate", day(0)))
    assert sorted(f.name for f in staged.files) == ["events.parquet", "hour=12/part-0.parquet"]
    assert {s.name: s.reason.split(" (")[0] for s in staged.skipped} == {
        ".hidden.parquet": "hidden", "_SUCCESS": "marker", "_part-9.parquet": "underscore-prefixed", "linked.parquet": "symlink"}
    assert result.files_read + result.files_skipped == 6 == len(list(landing.rglob("*"))) - 1  # the subfolder itself
    assert result.rows == len(frame) == result.accepted_rows + result.duplicate_rows + result.quarantined_rows
    # Data-looking files that were skipped warn (markers do not); the report lists each with its reason.
    (skipped,) = [r for r in result.warnings if r.rule == "landing_files_skipped"]
    assert skipped.unexpected_count == 3 and "linked.parquet (symlink)" in skipped.samples
    report = (layout.reports(day(0)) / "validation" / "report.md").read_text()
    assert "entries seen 6 = files read 2 + skipped 4" in report and "| _SUCCESS | skipped | 0 | | | | | marker |" in report
    manifest = json.loads((layout.accepted(day(0)) / "manifest.json").read_text())
    assert len(manifest["files"]) == 2 and len(manifest["skipped"]) == 4


@pytest.mark.parametrize("target", ["file", "folder"])
def test_an_unreadable_file_or_folder_quarantines_the_day_with_a_report(shared_tmp, target):
    layout, cfg = setup(shared_tmp)
    land(layout, 0)
    landing = layout.landing(day(0))
    if target == "file":
        write_log(pd.read_parquet(landing / "events.parquet").iloc[:3], landing / "more.parquet")
        locked = landing / "more.parquet"
    else:
        (landing / "sub").mkdir()
        locked = landing / "sub"
    for path in [shared_tmp, *shared_tmp.rglob("*")]:
        path.chmod(0o777)
    locked.chmod(0)
    code = f"""
import json, pathlib
from components.data.ingest import run_ingest
from components.data.validate import run_validate
from components.data.validation_result import DataValidationError
from tests.unit.data_fixtures import current_inputs, setup, day
layout, cfg = setup(pathlib.Path({str(shared_tmp)!r}))
staged = run_ingest(layout, day(0), cfg)
try:
    run_validate(layout, day(0), cfg, **current_inputs(layout, "validate", day(0)))
except DataValidationError as exc:
    print(json.dumps({{"message": str(exc), "rows": staged.rows}}))
"""
    done = as_unprivileged(["-c", code], shared_tmp)
    assert done.returncode == 0, done.stderr[-2000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    name = "more.parquet" if target == "file" else "sub/"
    assert ("FAIL source_file_readable: 1 files; expected every landing file and folder can be read and parses; "
            f"e.g. {name} (PermissionError") in outcome["message"]
    (attempt,) = list(layout.quarantine(day(0)).iterdir())
    report = (attempt / "report.md").read_text()
    assert f"| {name} | unreadable |" in report and "Permission denied" in report
    result = json.loads((attempt / "validation.json").read_text())["result"]
    assert result["quarantined_rows"] == outcome["rows"] == len(pd.read_parquet(landing / "events.parquet"))


def test_a_json_array_says_so_and_a_malformed_json_line_gives_its_line_number(tmp_path):
    layout, cfg = setup(tmp_path)
    frame = pd.read_parquet(land(layout, 0))
    landing = layout.landing(day(0))
    (landing / "events.parquet").unlink()
    (landing / "events.json").write_text(frame.to_json(orient="records", date_format="iso"))
    message, _, _ = _quarantined(layout, cfg)
    assert ("FAIL source_file_readable: 1 files; expected every landing file and folder can be read and parses; "
            "e.g. events.json (ValueError: the file is a JSON array; the contract expects JSON Lines") in message
    rule_lines = [line for line in message.splitlines() if line.startswith("  - ")]
    assert len(rule_lines) == 2 and "unknown_columns" not in "".join(rule_lines)  # readable + the empty day, nothing else

    broken_layout, broken = setup(tmp_path / "broken")
    path = land(broken_layout, 0, "jsonl")
    lines = path.read_text().splitlines()
    lines[6] = lines[6][:-1]  # a truncated record on line 7
    path.write_text("\n".join(lines) + "\n")
    message, _, _ = _quarantined(broken_layout, broken)
    assert "events.jsonl (ValueError: line 7: malformed JSON (Expecting ',' delimiter" in message


def test_the_contract_settings_are_validated_on_load():
    from components.core.config import load_config

    cfg = load_config(overrides={"validation.id_types": {"user_id": "integer"}})
    assert cfg.validation.id_types == {"event_id": "string", "user_id": "integer", "item_id": "string"}
    with pytest.raises(ValueError, match=r"id_types: unknown column\(s\) \['session_id'\]"):
        load_config(overrides={"validation.id_types": {"session_id": "string"}})
    with pytest.raises(ValueError, match="epoch_unit"):
        load_config(overrides={"validation.epoch_unit": "minutes"})


def test_a_missing_column_fails_once_and_the_report_says_how_to_rerun_the_day(tmp_path):
    layout, cfg = setup(tmp_path)
    accept(layout, cfg, 0)
    land(layout, 1)
    corrupt_landing(layout.landing(day(1)), "missing_column")
    run_ingest(layout, day(1), cfg)
    with pytest.raises(DataValidationError) as failure:
        run_validate(layout, day(1), cfg, **current_inputs(layout, "validate", day(1)))
    failed = [line for line in str(failure.value).splitlines() if line.strip().startswith("- FAIL")]
    assert failed == ["  - FAIL expect_column_to_exist(item_id): observed column missing"]  # not also not-null
    (attempt,) = list(layout.quarantine(day(1)).iterdir())
    report = (attempt / "report.md").read_text()
    assert "| expect_column_values_to_not_be_null | item_id | quarantine | skipped |" in report
    assert "## What to do" in report and f"--conf '{{\"day\": \"{day(1)}\"}}'" in report


def test_validate_reads_only_the_earlier_days_it_is_given(tmp_path):
    """Its history is an argument (components/pipeline.catalog_inputs resolves it): given none, a day
    after three accepted ones is judged as a first day; a day it names must still hold that content."""
    from components.core.refs import AcceptedRef, ValidationHistory

    layout, cfg = setup(tmp_path)
    for offset in range(3):
        accept(layout, cfg, offset)
    land(layout, 3)
    run_ingest(layout, day(3), cfg)
    given = current_inputs(layout, "validate", day(3))
    assert [r.day for r in given["history"].accepted] == [day(0), day(1), day(2)] and given["history"].quarantined == ()
    alone = run_validate(layout, day(3), cfg, staged=given["staged"], history=ValidationHistory())
    assert alone.profile["new_user_share"] is None and alone.notes[0].startswith("anomaly history: 0 days")
    judged = run_validate(layout, day(3), cfg, **given)
    assert 0 <= judged.profile["new_user_share"] < 1 and judged.notes[0].startswith("anomaly history: 3 days")
    itself = layout.partition_refs(AcceptedRef, day(3), day(3))
    with pytest.raises(ValueError, match=f"history must hold earlier days only, got \\['{day(3)}'\\]"):
        run_validate(layout, day(3), cfg, staged=given["staged"], history=ValidationHistory(accepted=tuple(itself)))
    (layout.accepted(day(1)) / "events.parquet").write_bytes(b"changed since")
    stale = given["history"].accepted[1]
    with pytest.raises(FileNotFoundError, match=f"accepted {day(1)} v{stale.version}: .* now holds v"):
        run_validate(layout, day(3), cfg, **given)
