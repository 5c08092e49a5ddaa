"""Registry: immutable versions, idempotent register/promote, rollback, and crash consistency."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from components import registry
from components.registry import (
    champion,
    history,
    list_versions,
    promote,
    register_candidate,
    rollback,
    run_promote,
    run_register,
)
from components.storage import Layout, read_json

from tests.unit.ship_fixtures import make_world, run_ship_day, tiny_config

DAYS = ("2024-01-08", "2024-01-09", "2024-01-10")
VERSION_FILES = {
    "embeddings.npz", "model.pt", "model.onnx", "users.parquet", "items.parquet", "seen.npz",
    "popularity.npy", "metrics.json", "blessing.json", "lineage.json", "serving.json", "manifest.json",
}


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """Three shipped days (through the gate): two good candidates, then a bad one that is rejected."""
    root = tmp_path_factory.mktemp("shipped")
    layout = Layout.at(root)
    cfg = tiny_config(root)
    world = make_world()
    run_ship_day(layout, DAYS[0], cfg, world, seed=0)
    run_ship_day(layout, DAYS[1], cfg, world, seed=1)
    blessing = run_ship_day(layout, DAYS[2], cfg, world, seed=2, candidate="bad")
    assert not blessing.blessed
    return root


@pytest.fixture
def env(shipped, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(shipped, root)
    return Layout.at(root), tiny_config(root)


def _complete(layout: Layout, version: str) -> bool:
    path = layout.registry() / "versions" / version
    return VERSION_FILES <= {p.name for p in path.iterdir()} and read_json(path / "manifest.json")["version"] == version


def test_register_promote_idempotent_and_rollback(env):
    layout, cfg = env
    first = run_register(layout, DAYS[0], cfg)
    assert first.status == "blessed" and first.newly_registered and first.champion_version is None
    assert _complete(layout, first.version) and first.version.startswith(DAYS[0])
    lineage = read_json(Path(first.path) / "lineage.json")
    assert lineage["models"]["graphs"] == layout.current("graphs", DAYS[0]).version
    assert lineage["models"]["models/pruned"] == layout.current("models/pruned", DAYS[0]).version
    assert lineage["config_hash"] == cfg.config_hash() and lineage["code_version"]
    assert champion(layout) is None  # registering never promotes

    again = run_register(layout, DAYS[0], cfg)
    assert (again.version, again.newly_registered) == (first.version, False)

    promoted = run_promote(layout, DAYS[0], cfg)
    assert promoted.promoted and promoted.previous_champion is None and "bootstrap" in promoted.reason
    noop = run_promote(layout, DAYS[0], cfg)
    assert not noop.promoted and noop.champion_version == first.version
    assert [e["version"] for e in history(layout)] == [first.version]

    second = run_register(layout, DAYS[1], cfg)
    assert second.champion_version == first.version
    run_promote(layout, DAYS[1], cfg)
    current = champion(layout)
    assert current.version == second.version and current.previous == (first.version,)

    restored = rollback(layout, "bad deploy")
    assert restored == first.version
    assert champion(layout).version == first.version and champion(layout).previous == ()
    events = [(e["event"], e["version"]) for e in history(layout)]
    assert events == [("promote", first.version), ("promote", second.version), ("rollback", first.version)]
    with pytest.raises(LookupError, match="no predecessor"):
        rollback(layout)


def test_rejected_candidate_is_registered_but_never_promoted(env):
    layout, cfg = env
    good = run_register(layout, DAYS[0], cfg)
    promote(layout, good.version, "first")
    bad = run_register(layout, DAYS[2], cfg)
    assert bad.status == "rejected" and not bad.blessed
    assert read_json(Path(bad.path) / "blessing.json")["blessed"] is False
    result = run_promote(layout, DAYS[2], cfg)
    assert not result.promoted and result.champion_version == good.version
    with pytest.raises(PermissionError, match=f"refusing to promote {bad.version}"):
        promote(layout, bad.version, "force it")
    assert champion(layout).version == good.version
    assert sorted(list_versions(layout)) == sorted([good.version, bad.version])


class Crash(Exception):
    pass


def _crash_at(step):
    def hook(current):
        if current == step:
            raise Crash(step)
    return hook


def test_crash_before_pointer_rename_keeps_the_old_champion(env):
    layout, cfg = env
    old = run_register(layout, DAYS[0], cfg).version
    new = run_register(layout, DAYS[1], cfg).version
    promote(layout, old, "first")
    with pytest.raises(Crash):
        promote(layout, new, "second", fault_hook=_crash_at("before_pointer_rename"))
    assert champion(layout).version == old and _complete(layout, old)
    assert [e["version"] for e in history(layout)] == [old]
    assert promote(layout, new, "retry").promoted  # the leftover temp file does not get in the way
    assert champion(layout).version == new


def test_crash_after_pointer_rename_leaves_the_new_champion_and_history_is_repaired(env):
    layout, cfg = env
    old = run_register(layout, DAYS[0], cfg).version
    new = run_register(layout, DAYS[1], cfg).version
    promote(layout, old, "first")
    with pytest.raises(Crash):
        promote(layout, new, "second", fault_hook=_crash_at("after_pointer_rename"))
    assert champion(layout).version == new and _complete(layout, new)
    assert champion(layout).previous == (old,)
    assert not promote(layout, new, "again").promoted  # idempotent, and repairs the log
    assert [(e["event"], e["version"]) for e in history(layout)] == [("promote", old), ("recovered", new)]
    assert rollback(layout) == old


def test_failing_rename_keeps_the_old_champion(env, monkeypatch):
    layout, cfg = env
    old = run_register(layout, DAYS[0], cfg).version
    new = run_register(layout, DAYS[1], cfg).version
    promote(layout, old, "first")
    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(dst).name == "champion.json":
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(registry.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        promote(layout, new, "second")
    monkeypatch.undo()
    assert champion(layout).version == old and _complete(layout, old)


def test_crash_while_registering_leaves_no_partial_version(env):
    layout, _ = env
    files = {"embeddings.npz": Path(layout.current("models/pruned", DAYS[0]).path) / "embeddings.npz"}
    with pytest.raises(Crash):
        register_candidate(layout, "2024-01-08-partial", DAYS[0], files, {"popularity.npy": {"array": np.ones(3)}},
                           {"blessing.json": {"blessed": True}}, "blessed", fault_hook=_crash_at("version_staged"))
    assert "2024-01-08-partial" not in list_versions(layout)
    assert not (layout.registry() / "versions" / "2024-01-08-partial").exists()
    path, created = register_candidate(layout, "2024-01-08-partial", DAYS[0], files,
                                       {"popularity.npy": {"array": np.ones(3)}},
                                       {"blessing.json": {"blessed": True}}, "blessed")
    assert created and (path / "manifest.json").exists()


PROMOTE_SCRIPT = """
import sys, time
from pathlib import Path
from components.registry import promote
from components.storage import Layout
root, version, step, marker = sys.argv[1:5]
def hook(current):
    if current == step:
        Path(marker).write_text(current)
        time.sleep(60)
promote(Layout.at(root), version, "killed midway", fault_hook=hook)
"""


@pytest.mark.parametrize("step, survivor", [("before_pointer_rename", "old"), ("after_pointer_rename", "new")])
def test_sigkill_during_promote_leaves_a_complete_champion(env, tmp_path, step, survivor):
    layout, cfg = env
    versions = {"old": run_register(layout, DAYS[0], cfg).version, "new": run_register(layout, DAYS[1], cfg).version}
    promote(layout, versions["old"], "first")
    marker = tmp_path / "reached"
    proc = subprocess.Popen(
        [sys.executable, "-c", PROMOTE_SCRIPT, str(layout.root), versions["new"], step, str(marker)],
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, f"promote subprocess exited early with {proc.returncode}"
            assert time.monotonic() < deadline, "promote subprocess never reached the fault point"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    current = champion(layout)
    assert current.version == versions[survivor] and _complete(layout, current.version)
    json.loads((layout.registry() / "champion.json").read_text())  # whole, parseable pointer
