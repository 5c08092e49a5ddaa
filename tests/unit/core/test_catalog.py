import json
import os
import time

import pytest

from components.core.catalog import Layout, atomic_write_bytes, hash_dir, replace_dir, staging_dir, tidy, write_json


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
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".dest")]


class Killed(Exception):
    pass


def _accepted_day(layout, day, content):
    part = layout.accepted(day)
    part.mkdir(parents=True)
    (part / "events.parquet").write_text(content)
    write_json(part / "manifest.json", {"day": day})


def _kill_between_the_renames(step):
    if step == "old_set_aside":
        raise Killed(step)


def test_a_revalidation_killed_between_its_renames_never_loses_the_day(tmp_path):
    layout = Layout.at(tmp_path)
    for day in ("2024-01-01", "2024-01-02"):
        _accepted_day(layout, day, f"old {day}")
    with staging_dir(tmp_path / "accepted") as new:
        (new / "events.parquet").write_text("new")
        write_json(new / "manifest.json", {"day": "2024-01-02"})
        with pytest.raises(Killed):
            replace_dir(new, layout.accepted("2024-01-02"), fault_hook=_kill_between_the_renames)
    assert not layout.accepted("2024-01-02").exists()  # the instant the kill left
    # The next reader of the training window gets the complete old partition back.
    assert layout.accepted_days() == ["2024-01-01", "2024-01-02"]
    assert (layout.accepted("2024-01-02") / "events.parquet").read_text() == "old 2024-01-02"
    # ... and a task's start does the same for any directory replace_dir set aside.
    with staging_dir(tmp_path / "accepted") as new:
        (new / "events.parquet").write_text("new")
        with pytest.raises(Killed):
            replace_dir(new, layout.accepted("2024-01-01"), fault_hook=_kill_between_the_renames)
    assert tidy(layout, started_at=time.time())["restored"] == 1
    assert (layout.accepted("2024-01-01") / "events.parquet").read_text() == "old 2024-01-01"
    # The re-run then swaps in the new partition and leaves nothing aside.
    with staging_dir(tmp_path / "accepted") as new:
        (new / "events.parquet").write_text("new")
        replace_dir(new, layout.accepted("2024-01-01"))
    assert (layout.accepted("2024-01-01") / "events.parquet").read_text() == "new"
    assert sorted(p.name for p in (tmp_path / "accepted").iterdir()) == ["date=2024-01-01", "date=2024-01-02"]


def test_tidy_removes_what_crashed_writers_left_and_keeps_what_live_ones_use(tmp_path):
    layout = Layout.at(tmp_path)
    models = tmp_path / "models" / "teacher"
    crashed_dir = models / ".staging-crashed"
    crashed_dir.mkdir(parents=True)
    (crashed_dir / "model.pt").write_bytes(b"partial")
    crashed_file = tmp_path / "reports" / "2024-01-01" / ".outcome.json.abc.tmp"
    crashed_file.parent.mkdir(parents=True)
    crashed_file.write_bytes(b"{")
    not_ours = tmp_path / "airflow" / ".airflow.cfg.abc.tmp"  # the demo's Airflow home lives in the root
    not_ours.parent.mkdir()
    not_ours.write_bytes(b"")
    started = time.time() + 1  # the leftovers are older than the task
    with staging_dir(models) as live:
        done = tidy(layout, started_at=started)
        assert live.exists()  # a concurrent writer's staging dir is locked: kept
    assert done == {"restored": 0, "staging_dirs": 1, "temp_files": 1}
    assert not crashed_dir.exists() and not crashed_file.exists() and not_ours.exists()
    fresh = models / ".staging-fresh"
    fresh.mkdir()
    assert tidy(layout, started_at=time.time() - 60)["staging_dirs"] == 0 and fresh.exists()  # newer than the task


def test_atomic_write_leaves_old_content_when_the_write_fails(tmp_path, monkeypatch):
    target = tmp_path / "f.json"
    atomic_write_bytes(target, b"old")

    def boom(*_args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]  # no temporary file left behind


def test_run_keys_are_filesystem_safe_and_each_run_has_its_own_folder(tmp_path):
    from components.core.catalog import latest_run, record_outcome, run_dir, run_key_for

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
