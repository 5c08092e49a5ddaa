"""Typed references: JSON round trip, kind checks, and the catalog as the one place they become locations."""

import json

import pytest

from components.core.catalog import Layout
from components.core.errors import StaleReference
from components.core.refs import (AcceptedRef, DayRef, EngineRef, GraphRef, PrunedRef, QuarantinedRef, StudentRef,
                                 TeacherRef, ValidationHistory)


def _publish(layout: Layout, kind: str, day: str, tmp_path, name: str):
    src = tmp_path / name
    src.mkdir()
    (src / "payload.txt").write_text(name)
    return layout.publish(kind, day, src, {"inputs": []})


def test_a_reference_round_trips_through_json_and_keeps_its_kind():
    ref = TeacherRef(day="2026-01-05", version="abc123", path="/root/models/teacher/2026-01-05/abc123")
    payload = json.loads(json.dumps(ref.as_dict()))
    assert payload == {"kind": "models/teacher", "day": "2026-01-05", "version": "abc123",
                       "path": "/root/models/teacher/2026-01-05/abc123"}
    assert TeacherRef.from_dict(payload) == ref
    # a stage's result carries more than the reference (metrics, counts): those stay the result's own
    assert GraphRef.from_dict({"day": "2026-01-05", "version": "g1", "path": "/g", "num_users": 3}) == \
        GraphRef("2026-01-05", "g1", "/g")


def test_a_reference_of_another_kind_is_refused_by_name():
    student = StudentRef("2026-01-05", "s1", "/s").as_dict()
    with pytest.raises(ValueError, match="expected a models/pruned reference, got kind 'models/student'"):
        PrunedRef.from_dict(student)
    assert StudentRef("d", "v", "p") != PrunedRef("d", "v", "p")  # same fields, different artifacts


def test_the_catalog_locates_a_reference_from_kind_day_and_version(tmp_path):
    layout = Layout.at(tmp_path / "root")
    published = _publish(layout, "graphs", "2026-01-05", tmp_path, "g")
    current = layout.current_ref(GraphRef, "2026-01-05")
    assert current == GraphRef("2026-01-05", published.version, published.path)
    # the path a reference carries is informative: the catalog locates it under its own root
    moved = GraphRef("2026-01-05", published.version, "/elsewhere")
    assert layout.artifact(moved).path == published.path
    assert layout.artifact(moved).manifest["inputs"] == []
    assert layout.current_ref(EngineRef, "2026-01-05") is None


def test_the_catalog_refuses_a_reference_to_nothing(tmp_path):
    layout = Layout.at(tmp_path / "root")
    with pytest.raises(FileNotFoundError, match="graphs 2026-01-05 vmissing: .* is missing or incomplete"):
        layout.artifact(GraphRef("2026-01-05", "missing", "/x"))


def _partition(layout: Layout, kind: str, day: str, content: str) -> None:
    folder = layout.root / kind / f"date={day}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "events.parquet").write_text(content)
    (folder / ("files.json" if kind == "staging" else "manifest.json")).write_text("{}")


def test_a_day_partition_is_named_by_its_content_and_refused_once_it_changed(tmp_path):
    layout = Layout.at(tmp_path / "root")
    _partition(layout, "accepted", "2026-01-05", "first")
    (accepted,) = layout.partition_refs(AcceptedRef, "2026-01-05", "2026-01-05")
    assert accepted.kind == "accepted" and AcceptedRef.from_dict(json.loads(json.dumps(accepted.as_dict()))) == accepted
    assert layout.partition(accepted) == layout.accepted("2026-01-05")
    _partition(layout, "accepted", "2026-01-05", "re-validated")  # the day was validated again since
    # No retry reads anything else: a permanent failure naming what to clear.
    with pytest.raises(StaleReference, match=f"accepted 2026-01-05 v{accepted.version}: .* now holds v.*clear the task"):
        layout.partition(accepted)
    with pytest.raises(FileNotFoundError, match="staging 2026-01-05 vx: .* is missing or incomplete"):
        layout.partition(DayRef("2026-01-05", "x", "/x"))


def test_a_window_lists_the_complete_partitions_of_its_days_oldest_first(tmp_path):
    layout = Layout.at(tmp_path / "root")
    for day in ("2026-01-01", "2026-01-03", "2026-01-04", "2026-01-06"):
        _partition(layout, "accepted", day, day)
    (layout.accepted("2026-01-04") / "manifest.json").unlink()  # incomplete: not part of any window
    window = layout.partition_refs(AcceptedRef, "2026-01-02", "2026-01-05")
    assert [ref.day for ref in window] == ["2026-01-03"]
    assert [ref.day for ref in layout.partition_refs(AcceptedRef, "2026-01-01", "2026-01-06")] == \
        ["2026-01-01", "2026-01-03", "2026-01-06"]
    assert layout.partition_refs(DayRef, "2026-01-01", "2026-01-06") == []


def _attempt(layout: Layout, day: str, attempt: str, rows: str) -> None:
    folder = layout.quarantine(day) / attempt
    folder.mkdir(parents=True)
    (folder / "rows.parquet").write_text(rows)
    (folder / "validation.json").write_text("{}")


def test_a_quarantined_day_is_named_by_its_complete_attempts_and_refused_once_held_again(tmp_path):
    layout = Layout.at(tmp_path / "root")
    _attempt(layout, "2026-01-02", "a1", "rows")
    (layout.quarantine("2026-01-02") / ".staging-x").mkdir()  # an attempt being written: not part of the day yet
    (layout.quarantine("2026-01-02") / ".staging-x" / "rows.parquet").write_text("half")
    layout.quarantine("2026-01-03").mkdir(parents=True)  # no complete attempt: not a quarantined day
    (held,) = layout.partition_refs(QuarantinedRef, "2026-01-01", "2026-01-03")
    assert (held.kind, held.day) == ("quarantine", "2026-01-02")
    assert layout.partition(held) == layout.quarantine("2026-01-02")
    assert layout.locate(held) == str(layout.quarantine("2026-01-02"))
    (layout.quarantine("2026-01-02") / ".staging-x" / "rows.parquet").write_text("more")
    assert layout.partition_version("quarantine", "2026-01-02") == held.version
    _attempt(layout, "2026-01-02", "b2", "other rows")  # quarantined again since the reference was made
    with pytest.raises(FileNotFoundError, match=f"quarantine 2026-01-02 v{held.version}: .* now holds v"):
        layout.partition(held)


def test_a_validation_history_round_trips_through_json():
    history = ValidationHistory(accepted=(AcceptedRef("2026-01-01", "a1", "/a"), AcceptedRef("2026-01-03", "a3", "/b")),
                                quarantined=(QuarantinedRef("2026-01-02", "q2", "/q"),))
    payload = json.loads(json.dumps(history.as_dict()))
    assert payload["quarantined"] == [{"kind": "quarantine", "day": "2026-01-02", "version": "q2", "path": "/q"}]
    assert ValidationHistory.from_dict(payload) == history
    with pytest.raises(ValueError, match="expected a quarantine reference, got kind 'accepted'"):
        ValidationHistory.from_dict({"accepted": [], "quarantined": payload["accepted"]})
