"""Validate streams a day in chunks (validation.chunk_rows): the verdict, the report's numbers and
the accepted rows do not depend on the chunk size, and what crosses chunks is compact."""

import json

import numpy as np
import pandas as pd
import pytest

from components.core.catalog import Layout
from components.core.config import load_config
from components.core.refs import DayRef
from components.data.ingest import run_ingest
from components.data.sources.synthetic import write_log
from components.data.streaming import DayKeys, in_sorted, mark_seen, repeated, staged_chunks, tally
from components.data.validate import run_validate
from components.data.validation_result import DataValidationError
from components.pipeline import catalog_inputs

from tests.unit.data_fixtures import accept, day, land

TINY = 13  # rows per chunk: many chunks, boundaries everywhere


def _run(tmp_path, name, chunk_rows, landing_frames, earlier_days=0):
    """Land ``landing_frames`` (file name -> frame) as day 1 (after ``earlier_days`` accepted days)
    under a root of its own, ingest and validate it with ``chunk_rows``: (layout, result or error)."""
    layout = Layout.at(tmp_path / name)
    cfg = load_config(overrides={"root": str(tmp_path / name), "validation.chunk_rows": chunk_rows})
    for offset in range(earlier_days):
        accept(layout, cfg, offset - earlier_days + 1)
    for file_name, frame in landing_frames.items():
        write_log(frame, layout.landing(day(1)) / file_name)
    staged = DayRef.of(run_ingest(layout, day(1), cfg))
    try:
        history = catalog_inputs("validate", day(1), layout, cfg)["history"]
        return layout, run_validate(layout, day(1), cfg, staged=staged, history=history)
    except DataValidationError as error:
        return layout, error


def _day_frames(tmp_path):
    """Day 1 in two files with redeliveries across files and chunk boundaries, a content copy under a
    new event id, a late event and an unknown column."""
    scratch = Layout.at(tmp_path / "scratch")
    frame = pd.read_parquet(land(scratch, 1)).assign(channel="web")
    first, second = frame.iloc[:150].copy(), frame.iloc[150:].copy()
    second = pd.concat([second, first.iloc[[3, 40, 77]]], ignore_index=True)  # redelivered in the other file
    content = first.iloc[[5, 60]].assign(event_id=lambda f: f["event_id"] + "-again")
    first = pd.concat([first, content], ignore_index=True)
    first.loc[9, "ts"] = pd.Timestamp(day(1), tz="UTC") - pd.Timedelta(hours=1)  # late, within tolerance
    return {"a.parquet": first, "b.csv": second}


def _same_result(tiny, whole):
    for field in ("success", "rows", "accepted_rows", "duplicate_rows", "content_duplicate_rows", "late_rows",
                  "quarantined_rows", "profile", "rules", "unknown_columns"):
        assert getattr(tiny, field) == getattr(whole, field), field


def test_a_day_in_tiny_chunks_gives_the_verdict_report_and_accepted_rows_of_one_chunk(tmp_path):
    frames = _day_frames(tmp_path)
    tiny_layout, tiny = _run(tmp_path, "tiny", TINY, frames, earlier_days=1)
    whole_layout, whole = _run(tmp_path, "whole", 10**6, frames, earlier_days=1)
    assert whole.success and whole.duplicate_rows == 5 and whole.content_duplicate_rows == 2 and whole.late_rows == 1
    assert tiny.rows > 10 * TINY  # really many chunks
    _same_result(tiny, whole)
    for name in ("events.parquet", "duplicates.parquet", "extra_columns.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(tiny_layout.accepted(day(1)) / name),
                                      pd.read_parquet(whole_layout.accepted(day(1)) / name))
    reports = [(layout.reports(day(1)) / "validation" / "report.md").read_text() for layout in (tiny_layout, whole_layout)]
    assert reports[0] == reports[1]
    record = json.loads((tiny_layout.reports(day(1)) / "validation" / "validation.json").read_text())
    assert record["great_expectations"]["chunks"] > 10  # GX judged every chunk
    events = pd.read_parquet(tiny_layout.accepted(day(1)) / "events.parquet")
    assert events["event_id"].is_unique and events["ts"].is_monotonic_increasing


def test_a_failing_day_in_tiny_chunks_fails_the_same_rules_with_the_same_counts_and_examples(tmp_path):
    frames = _day_frames(tmp_path)
    broken = frames["a.parquet"].copy()
    broken.loc[[2, 30, 140], "ts"] = pd.NaT  # nulls in three chunks
    broken.loc[100, "event_id"] = broken.loc[1, "event_id"]  # reused with another payload, chunks apart
    frames = {**frames, "a.parquet": broken}
    _, tiny = _run(tmp_path, "tiny", TINY, frames)
    _, whole = _run(tmp_path, "whole", 10**6, frames)
    assert isinstance(tiny, DataValidationError) and isinstance(whole, DataValidationError)
    assert str(tiny).replace(str(tmp_path / "tiny"), "") == str(whole).replace(str(tmp_path / "whole"), "")
    assert "expect_column_values_to_not_be_null(ts): 3 rows" in str(tiny)
    assert "event_id_payload_conflict(event_id): 1 event ids; observed 2 rows" in str(tiny)
    reports = [json.loads(p.read_text())["result"]["rules"] for p in
               (next((tmp_path / name / "quarantine").glob("*/*/validation.json")) for name in ("tiny", "whole"))]
    assert reports[0] == reports[1]


def test_a_redelivery_across_files_and_chunks_keeps_the_first_copy_by_time_file_and_row(tmp_path):
    scratch = Layout.at(tmp_path / "scratch")
    frame = pd.read_parquet(land(scratch, 1))
    last = frame.iloc[[len(frame) - 1]]  # its copy lands in an earlier file: same time, that file wins
    layout, result = _run(tmp_path, "day", TINY, {"a.parquet": last, "b.parquet": pd.concat([frame, frame.iloc[[0]]])})
    assert result.success and result.duplicate_rows == 2 and result.accepted_rows == len(frame)
    duplicates = pd.read_parquet(layout.accepted(day(1)) / "duplicates.parquet")
    assert list(zip(duplicates["source_file"], duplicates["source_row"])) == [("b.parquet", len(frame) + 1),
                                                                              ("b.parquet", len(frame))]
    events = pd.read_parquet(layout.accepted(day(1)) / "events.parquet")
    assert (events.iloc[-1]["source_file"], events.iloc[-1]["source_row"]) == ("a.parquet", 1)


def test_an_event_accepted_on_an_earlier_day_is_dropped_whatever_the_chunk(tmp_path):
    scratch = Layout.at(tmp_path / "scratch")
    earlier = pd.read_parquet(land(scratch, 0))
    late = earlier[earlier["ts"] >= pd.Timestamp(day(1), tz="UTC") - pd.Timedelta(hours=5)].iloc[:2]  # within tolerance
    frame = pd.concat([pd.read_parquet(land(scratch, 1)), late], ignore_index=True)
    layout, result = _run(tmp_path, "day", TINY, {"events.parquet": frame}, earlier_days=1)
    assert result.success and result.duplicate_rows == 2
    duplicates = pd.read_parquet(layout.accepted(day(1)) / "duplicates.parquet")
    assert duplicates["duplicate_of"].tolist() == ["event_id of an earlier day"] * 2


def test_the_cross_chunk_state_is_a_few_bytes_per_row_whatever_the_ids_length(tmp_path):
    rows = 1000
    short = pd.DataFrame({"event_id": [f"e{i}" for i in range(rows)], "user_id": "u1", "item_id": "i1",
                          "event_type": "view", "ts": pd.Timestamp("2026-01-02", tz="UTC")})
    long = short.assign(event_id=lambda f: f["event_id"].str.pad(400, fillchar="x"))
    sizes = []
    for frame in (short, long):
        keys = DayKeys(rows)
        for start in range(0, rows, 100):
            keys.add(frame.iloc[start:start + 100])
        sizes.append(keys.nbytes)
    assert sizes[0] == sizes[1] == rows * (5 * 8 + 3)  # 5 eight-byte keys and 3 presence bytes per row
    assert keys.event_types == {"view": rows}


def test_repeated_keys_tally_and_marks_are_exact_on_small_arrays():
    keys = np.array([5, 3, 5, 9, 3, 7], dtype=np.uint64)
    present = np.array([True, True, True, True, False, True])
    assert repeated(keys).tolist() == [True, True, True, False, True, False]
    assert repeated(keys, present).tolist() == [True, False, True, False, False, False]
    users = tally(np.array([4, 8, 8, 4, 1], dtype=np.uint64), np.ones(5, dtype=bool))
    assert (users.distinct, users.top_count, users.top_position) == (3, 2, 0)  # tie: the first to occur
    unique = np.array([2, 4, 6], dtype=np.uint64)
    seen = np.zeros(3, dtype=bool)
    mark_seen(unique, seen, iter([np.array([6, 1], dtype=np.uint64), np.array([9], dtype=np.uint64)]))
    assert seen.tolist() == [False, False, True]
    assert in_sorted(unique, np.array([4, 5], dtype=np.uint64)).tolist() == [True, False]


@pytest.mark.parametrize("chunk_rows", [1, 7])
def test_staged_chunks_cover_every_row_once_with_its_day_position(tmp_path, chunk_rows):
    path = tmp_path / "rows.parquet"
    pd.DataFrame({"a": range(20)}).to_parquet(path, index=False)
    chunks = list(staged_chunks(path, chunk_rows))
    assert max(len(c) for c in chunks) <= chunk_rows
    joined = pd.concat(chunks)
    assert joined.index.tolist() == list(range(20)) and joined["a"].tolist() == list(range(20))
