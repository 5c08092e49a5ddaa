"""Registry: immutable versions, the baseline as of a day, compare-and-swap promotion, rollbacks
that stick, manual promotion, and crash consistency of the champion pointer."""

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

from components import gates, registry
from components.registry import (
    champion,
    champion_as_of,
    history,
    list_versions,
    promote,
    register_candidate,
    rollback,
    run_promote,
    run_register,
)
from components.storage import Layout, read_json, read_outcome

from tests.unit.ship_fixtures import make_world, run_ship_day, tiny_config

DAYS = ("2024-01-08", "2024-01-09", "2024-01-10", "2024-01-11")
VERSION_FILES = {
    "embeddings.npz", "model.pt", "model.onnx", "users.parquet", "items.parquet", "seen.npz",
    "popularity.npy", "metrics.json", "blessing.json", "lineage.json", "serving.json", "manifest.json",
}


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """Four days of candidate artifacts (graph, models, export, engine): three good, then a bad one."""
    root = tmp_path_factory.mktemp("shipped")
    layout = Layout.at(root)
    cfg = tiny_config(root)
    world = make_world()
    for i, day in enumerate(DAYS):
        run_ship_day(layout, day, cfg, world, seed=i, candidate="bad" if i == 3 else "good", gate=False)
    return root


@pytest.fixture
def env(shipped, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(shipped, root)
    return Layout.at(root), tiny_config(root)


def judge(layout, cfg, day, run_key):
    """evaluate -> gate -> register for ``day`` in run ``run_key``, passing results explicitly."""
    from components.candidate import CandidateRefs

    evaluation = gates.run_evaluate(layout, day, cfg, run_key=run_key, candidate=CandidateRefs.current(layout, day))
    blessing = gates.run_gate(layout, day, cfg, run_key=run_key, evaluation=evaluation)
    return run_register(layout, day, cfg, run_key=run_key, blessing={"path": blessing.path})


def _complete(layout: Layout, version: str) -> bool:
    path = layout.registry() / "versions" / version
    return VERSION_FILES <= {p.name for p in path.iterdir()} and read_json(path / "manifest.json")["version"] == version


def _pointer(layout):
    return (layout.registry() / "champion.json").read_bytes()


def test_one_candidate_id_from_gate_to_registry(env):
    layout, cfg = env
    first = judge(layout, cfg, DAYS[0], "a")
    blessing = read_json(layout.reports(DAYS[0]) / "runs" / "a" / "blessing.json")
    evaluation = read_json(layout.reports(DAYS[0]) / "runs" / "a" / "evaluation.json")
    assert first.version == blessing["candidate_version"] == evaluation["candidate_id"]
    assert first.status == "blessed" and first.newly_registered and first.judged_against is None
    assert _complete(layout, first.version) and first.version.startswith(DAYS[0])
    lineage = read_json(Path(first.path) / "lineage.json")
    assert lineage["models"]["graph"] == layout.current("graphs", DAYS[0]).version
    assert lineage["models"]["pruned"] == layout.current("models/pruned", DAYS[0]).version
    assert lineage["config_hash"] == cfg.config_hash() and lineage["registered_by_run"] == "a"
    assert read_json(Path(first.path) / "blessing.json") == blessing  # the version keeps its own blessing
    assert champion(layout) is None  # registering never promotes
    again = judge(layout, cfg, DAYS[0], "b")  # a re-run judges the same candidate against the same baseline
    assert (again.version, again.newly_registered) == (first.version, False)


def test_promotion_is_compare_and_swap_and_rollback_sticks(env):
    layout, cfg = env
    v0 = judge(layout, cfg, DAYS[0], "a")
    boot = run_promote(layout, DAYS[0], cfg, run_key="a", registration=v0)
    assert boot.promoted and boot.previous_champion is None and "bootstrap" in boot.reason
    assert read_outcome(layout, DAYS[0], "a")["kind"] == "promoted"

    v1 = judge(layout, cfg, DAYS[1], "a")
    assert v1.judged_against == v0.version
    assert run_promote(layout, DAYS[1], cfg, run_key="a", registration=v1).promoted
    assert champion(layout).version == v1.version and champion(layout).previous == (v0.version,)

    # Re-running the champion's own day, and an older day: judged again, never promoted.
    pointer = _pointer(layout)
    rerun = judge(layout, cfg, DAYS[1], "b")
    assert rerun.version == v1.version and rerun.judged_against == v0.version  # champion as of the day
    decision = run_promote(layout, DAYS[1], cfg, run_key="b", registration=rerun)
    assert not decision.promoted and decision.reason == "already the champion"
    old = judge(layout, cfg, DAYS[0], "c")
    decision = run_promote(layout, DAYS[0], cfg, run_key="c", registration=old)
    assert not decision.promoted and decision.reason.startswith("historical day: not newer than the champion")
    outcome = read_outcome(layout, DAYS[0], "c")
    assert outcome["kind"] == "not_promoted" and outcome["champion_after"] == v1.version
    assert _pointer(layout) == pointer

    # Rollback sticks: re-running the rolled-back day yields an ineligible candidate.
    assert rollback(layout, "bad deploy") == v0.version
    again = judge(layout, cfg, DAYS[1], "d")
    assert again.version == v1.version and again.blessed
    decision = run_promote(layout, DAYS[1], cfg, run_key="d", registration=again)
    assert not decision.promoted and decision.reason.startswith("rolled back:") and "bad deploy" in decision.reason
    assert champion(layout).version == v0.version
    # ... an operator's explicit promote lifts it, recorded as manual.
    assert promote(layout, v1.version, "fixed upstream").promoted
    assert history(layout)[-1]["manual"] is True and champion(layout).version == v1.version
    events = [(e["event"], e["version"]) for e in history(layout)]
    assert events == [("promote", v0.version), ("promote", v1.version), ("not_promoted", v1.version),
                      ("not_promoted", v0.version), ("rollback", v0.version), ("not_promoted", v1.version),
                      ("promote", v1.version)]


def test_champion_changed_between_gate_and_promote_is_stale(env):
    layout, cfg = env
    v0 = judge(layout, cfg, DAYS[0], "a")
    run_promote(layout, DAYS[0], cfg, run_key="a", registration=v0)
    v1 = judge(layout, cfg, DAYS[1], "a")
    v2 = judge(layout, cfg, DAYS[2], "a")  # judged against v0: v1 is not promoted yet
    assert v2.judged_against == v0.version
    promote(layout, v1.version, "operator moved the champion")
    pointer = _pointer(layout)
    decision = run_promote(layout, DAYS[2], cfg, run_key="a", registration=v2)
    assert not decision.promoted
    assert decision.reason == (f"stale: champion changed since judged (judged against {v0.version}, "
                               f"serving {v1.version})")
    assert _pointer(layout) == pointer
    # Judged again against the champion as of its day, the same day promotes.
    fresh = judge(layout, cfg, DAYS[2], "b")
    assert fresh.judged_against == v1.version and fresh.version != v2.version
    assert run_promote(layout, DAYS[2], cfg, run_key="b", registration=fresh).promoted


def test_champion_as_of_a_day_ignores_newer_and_rolled_back_versions(env):
    layout, cfg = env
    assert champion_as_of(layout, DAYS[2]) == (None, f"no version of a day before {DAYS[2]} was ever promoted "
                                                     "(bootstrap)")
    v0 = judge(layout, cfg, DAYS[0], "a")
    run_promote(layout, DAYS[0], cfg, run_key="a", registration=v0)
    v1 = judge(layout, cfg, DAYS[1], "a")
    run_promote(layout, DAYS[1], cfg, run_key="a", registration=v1)
    as_of = lambda day: (champion_as_of(layout, day)[0] or registry.ChampionRef("none", "", "", "", ())).version  # noqa: E731
    assert [as_of(d) for d in DAYS] == ["none", v0.version, v1.version, v1.version]
    promote(layout, v0.version, "by hand")  # the operator's choice serves from now on: later days' baseline
    assert [as_of(d) for d in DAYS] == ["none", v0.version, v0.version, v0.version]
    promote(layout, v1.version, "back")
    assert [as_of(d) for d in DAYS] == ["none", v0.version, v1.version, v1.version]
    rollback(layout, "v1 was bad")
    assert as_of(DAYS[2]) == v0.version  # a rolled-back version is nobody's baseline


def test_rejected_candidate_is_registered_but_never_promoted(env):
    layout, cfg = env
    good = judge(layout, cfg, DAYS[0], "a")
    run_promote(layout, DAYS[0], cfg, run_key="a", registration=good)
    bad = judge(layout, cfg, DAYS[3], "a")
    assert bad.status == "rejected" and not bad.blessed
    assert read_json(Path(bad.path) / "blessing.json")["blessed"] is False
    result = run_promote(layout, DAYS[3], cfg, run_key="a", registration=bad)
    assert not result.promoted and result.champion_version == good.version and result.outcome == "rejected"
    assert result.reason.startswith("failed gates: ") and read_outcome(layout, DAYS[3], "a")["reason"] == result.reason
    with pytest.raises(PermissionError, match=f"refusing to promote {bad.version}"):
        promote(layout, bad.version, "force it")
    assert champion(layout).version == good.version
    assert sorted(list_versions(layout)) == sorted([good.version, bad.version])


def test_register_refuses_a_blessing_of_another_day(env):
    layout, cfg = env
    judge(layout, cfg, DAYS[0], "a")
    with pytest.raises(ValueError, match=f"judges day {DAYS[0]}"):
        run_register(layout, DAYS[1], cfg, run_key="a",
                     blessing={"path": str(layout.reports(DAYS[0]) / "runs" / "a" / "blessing.json")})


class Crash(Exception):
    pass


def _crash_at(step):
    def hook(current):
        if current == step:
            raise Crash(step)
    return hook


def _two_versions(layout, cfg):
    return judge(layout, cfg, DAYS[0], "a").version, judge(layout, cfg, DAYS[1], "a").version


def test_crash_before_pointer_rename_keeps_the_old_champion(env):
    layout, cfg = env
    old, new = _two_versions(layout, cfg)
    promote(layout, old, "first")
    with pytest.raises(Crash):
        promote(layout, new, "second", fault_hook=_crash_at("before_pointer_rename"))
    assert champion(layout).version == old and _complete(layout, old)
    assert [e["version"] for e in history(layout)] == [old]
    assert promote(layout, new, "retry").promoted  # the leftover temp file does not get in the way
    assert champion(layout).version == new


def test_crash_after_pointer_rename_leaves_the_new_champion_and_history_is_repaired(env):
    layout, cfg = env
    old, new = _two_versions(layout, cfg)
    promote(layout, old, "first")
    with pytest.raises(Crash):
        promote(layout, new, "second", fault_hook=_crash_at("after_pointer_rename"))
    assert champion(layout).version == new and _complete(layout, new)
    assert champion(layout).previous == (old,)
    assert not promote(layout, new, "again").promoted  # idempotent, and repairs the log
    assert [(e["event"], e["version"]) for e in history(layout)] == [("promote", old), ("recovered", new)]
    assert rollback(layout) == old


def test_not_promoted_entries_do_not_look_like_a_lost_pointer_move(env):
    layout, cfg = env
    v0 = judge(layout, cfg, DAYS[0], "a")
    run_promote(layout, DAYS[0], cfg, run_key="a", registration=v0)
    run_promote(layout, DAYS[0], cfg, run_key="b", registration=v0)  # not promoted: already champion
    promote(layout, v0.version, "noop")  # repairs nothing
    assert [e["event"] for e in history(layout)] == ["promote", "not_promoted"]


def test_failing_rename_keeps_the_old_champion(env, monkeypatch):
    layout, cfg = env
    old, new = _two_versions(layout, cfg)
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
    old, new = _two_versions(layout, cfg)
    versions = {"old": old, "new": new}
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
