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
