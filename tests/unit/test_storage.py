import json
import os

import pytest

from components.storage import Layout, atomic_write_bytes, hash_dir, replace_dir


def test_publish_is_content_versioned_and_idempotent(tmp_path):
    layout = Layout.at(tmp_path)
    versions = []
    for _ in range(2):
        build = tmp_path / "build"
        build.mkdir()
        (build / "a.txt").write_text("hello")
        versions.append(layout.publish("things", "2026-01-02", build, {"inputs": []}))
    assert versions[0] == versions[1]
    assert versions[0].manifest["version"] == versions[0].version
    assert layout.current("things", "2026-01-02") == versions[0]
    assert layout.latest_before("things", "2026-01-03") == versions[0]
    assert layout.latest_before("things", "2026-01-02") is None


def test_manifest_does_not_change_the_version(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("1")
    before = hash_dir(tmp_path / "x")
    (tmp_path / "x" / "manifest.json").write_text("{}")
    assert hash_dir(tmp_path / "x") == before


def test_replace_dir_swaps_whole_directories(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "old").write_text("old")
    new = tmp_path / "new"
    new.mkdir()
    (new / "fresh").write_text("new")
    replace_dir(new, dest)
    assert sorted(os.listdir(dest)) == ["fresh"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".dest.old")]


def test_atomic_write_leaves_old_content_when_the_write_fails(tmp_path, monkeypatch):
    target = tmp_path / "f.json"
    atomic_write_bytes(target, b"old")

    def boom(*_args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"


def test_run_keys_are_filesystem_safe_and_each_run_has_its_own_folder(tmp_path):
    from components.storage import latest_run, record_outcome, run_dir, run_key_for

    layout = Layout.at(tmp_path)
    key = run_key_for("manual__2026-01-06T00:00:00+00:00")
    assert key == "manual__2026-01-06T00_00_00_00_00"
    assert run_dir(layout, "2026-01-05", key) == tmp_path / "reports" / "2026-01-05" / "runs" / key
    with pytest.raises(ValueError, match="not filesystem-safe"):
        run_dir(layout, "2026-01-05", "../escape")
    assert latest_run(layout, "2026-01-05") is None
    record_outcome(layout, "2026-01-05", key, "promoted", "blessed on 2026-01-05", candidate="v1",
                   champion_before=None, champion_after="v1")
    record_outcome(layout, "2026-01-05", "cli-2", "not_promoted", "historical day: not newer than the champion",
                   candidate="v1", champion_before="v2", champion_after="v2")
    latest = latest_run(layout, "2026-01-05")
    assert (latest["run_key"], latest["outcome"], latest["champion_after"]) == ("cli-2", "not_promoted", "v2")
    first = json.loads((run_dir(layout, "2026-01-05", key) / "outcome.json").read_text())
    assert (first["kind"], first["candidate"], first["champion_after"]) == ("promoted", "v1", "v1")
    with pytest.raises(ValueError, match="outcome kind must be one of"):
        record_outcome(layout, "2026-01-05", key, "blessed", "not a decision")
