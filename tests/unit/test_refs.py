"""Typed references: JSON round trip, kind checks, and the catalog as the one place they become locations."""

import json

import pytest

from components.core.catalog import Layout
from components.core.refs import EngineRef, GraphRef, PrunedRef, StudentRef, TeacherRef


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
