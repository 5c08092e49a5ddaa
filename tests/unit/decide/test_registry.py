"""Registry: immutable versions, the baseline as of a day, compare-and-swap promotion, rollbacks
that stick, manual promotion, and crash consistency of the champion pointer, against every pointer
backend: a folder (file lock + rename) and a real S3 server (SeaweedFS: If-Match compare-and-swap)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from components.decide import gates, registry
from components.decide.evaluation import run_evaluate
from components.decide.registry import (
    champion,
    champion_as_of,
    history,
    promote,
    register_candidate,
    rollback,
    run_promote,
    run_register,
)
from components.core.catalog import MANIFEST, Layout, read_json, read_outcome
from components.decide.pointer import FilePointer, pointer_of

from tests.unit.ship_fixtures import make_world, run_ship_day, tiny_config

DAYS = ("2024-01-08", "2024-01-09", "2024-01-10", "2024-01-11")


def registered_versions(layout: Layout) -> list[str]:
    """The complete versions in the registry (a version folder is complete once its manifest exists)."""
    return sorted(p.name for p in (layout.registry() / "versions").glob("*") if (p / MANIFEST).exists())


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


BACKENDS = ("file", "object")
FILE_ONLY = pytest.mark.parametrize("env", ["file"], indirect=True)  # faults injected into the file system


@pytest.fixture(params=BACKENDS)
def env(request, shipped, tmp_path, monkeypatch):
    """A root with four days of candidates; its champion pointer in the registry folder ("file") or
    on SeaweedFS under a prefix of its own ("object": boto3's environment names the server, so
    the killed child processes reach it too)."""
    root = tmp_path / "root"
    shutil.copytree(shipped, root)
    store = ""
    if request.param == "object":
        weed = request.getfixturevalue("seaweedfs")
        for name, value in weed.s3_env().items():
            monkeypatch.setenv(name, value)
        store = f"s3://{weed.settings.bucket}/registry-{uuid.uuid4().hex[:12]}"
    return Layout.at(root, store), tiny_config(root)


def _clone(layout: Layout, dest: Path) -> Layout:
    """A copy of the root and of its champion store (a fresh prefix): each kill starts from the same state."""
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(layout.root, dest)
    if not layout.champion_store:
        return Layout.at(dest)
    store = pointer_of(layout).store
    copy = Layout.at(dest, f"s3://{store.bucket}/registry-{uuid.uuid4().hex[:12]}")
    target = pointer_of(copy).store
    for name in store.list(""):
        target.create(name, store.read(name).body)
    return copy


def judge(layout, cfg, day, run_key):
    """evaluate -> gate -> register for ``day`` in run ``run_key``, passing results explicitly."""
    from components.core.refs import EngineRef

    evaluation = run_evaluate(layout, day, cfg, run_key=run_key, candidate=layout.current_ref(EngineRef, day).as_dict())
    blessing = gates.run_gate(layout, day, cfg, run_key=run_key, evaluation=evaluation)
    return run_register(layout, day, cfg, run_key=run_key, blessing={"path": blessing.path})


def _complete(layout: Layout, version: str) -> bool:
    path = layout.registry() / "versions" / version
    return VERSION_FILES <= {p.name for p in path.iterdir()} and read_json(path / "manifest.json")["version"] == version


def _pointer(layout):
    return json.dumps(pointer_of(layout).read()[0], sort_keys=True)


def _raw_history(layout) -> list[dict]:
    """The history as stored; a torn line in the file backend raises."""
    pointer = pointer_of(layout)
    if isinstance(pointer, FilePointer):
        path = layout.registry() / "history.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return pointer.entries()  # objects are written whole or not at all


@FILE_ONLY
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
    assert sorted(registered_versions(layout)) == sorted([good.version, bad.version])


@FILE_ONLY
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


def test_crash_before_pointer_write_keeps_the_old_champion(env):
    layout, cfg = env
    old, new = _two_versions(layout, cfg)
    promote(layout, old, "first")
    with pytest.raises(Crash):
        promote(layout, new, "second", fault_hook=_crash_at("before_pointer_write"))
    assert champion(layout).version == old and _complete(layout, old)
    assert [e["version"] for e in history(layout)] == [old]
    assert promote(layout, new, "retry").promoted  # the leftover temp file does not get in the way
    assert champion(layout).version == new


def test_crash_after_pointer_write_leaves_the_new_champion_and_history_is_repaired(env):
    layout, cfg = env
    old, new = _two_versions(layout, cfg)
    promote(layout, old, "first")
    with pytest.raises(Crash):
        promote(layout, new, "second", fault_hook=_crash_at("after_pointer_write"))
    assert champion(layout).version == new and _complete(layout, new)
    assert champion(layout).previous == (old,)
    assert not promote(layout, new, "again").promoted  # idempotent, and repairs the log
    # The repair logs the move's own entry (a repaired rollback must stay a rollback), marked recovered.
    assert [(e["event"], e["version"], e["seq"], e.get("recovered")) for e in history(layout)] == [
        ("promote", old, 1, None), ("promote", new, 2, True)]
    assert rollback(layout) == old


def test_not_promoted_entries_do_not_look_like_a_lost_pointer_move(env):
    layout, cfg = env
    v0 = judge(layout, cfg, DAYS[0], "a")
    run_promote(layout, DAYS[0], cfg, run_key="a", registration=v0)
    run_promote(layout, DAYS[0], cfg, run_key="b", registration=v0)  # not promoted: already champion
    promote(layout, v0.version, "noop")  # repairs nothing
    assert [e["event"] for e in history(layout)] == ["promote", "not_promoted"]


@FILE_ONLY
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


@FILE_ONLY
def test_crash_while_registering_leaves_no_partial_version(env):
    layout, _ = env
    files = {"embeddings.npz": Path(layout.current("models/pruned", DAYS[0]).path) / "embeddings.npz"}
    with pytest.raises(Crash):
        register_candidate(layout, "2024-01-08-partial", DAYS[0], files, {"popularity.npy": {"array": np.ones(3)}},
                           {"blessing.json": {"blessed": True}}, "blessed", fault_hook=_crash_at("version_staged"))
    assert "2024-01-08-partial" not in registered_versions(layout)
    assert not (layout.registry() / "versions" / "2024-01-08-partial").exists()
    path, created = register_candidate(layout, "2024-01-08-partial", DAYS[0], files,
                                       {"popularity.npy": {"array": np.ones(3)}},
                                       {"blessing.json": {"blessed": True}}, "blessed")
    assert created and (path / "manifest.json").exists()


# A registry action in a child process that SIGKILLs itself at the nth call of one fault point.
ACTION_SCRIPT = """
import json, os, signal, sys
from components.core.config import load_config
from components.decide.registry import promote, rollback, run_promote
from components.core.catalog import Layout
root, store, action, arg, step, nth = sys.argv[1:7]
calls = {}
def hook(point):
    calls[point] = calls.get(point, 0) + 1
    if (point, calls[point]) == (step, int(nth)):
        os.kill(os.getpid(), signal.SIGKILL)
layout = Layout.at(root, store)
if action == "run_promote":
    registration = json.loads(arg)
    run_promote(layout, registration["day"], load_config(None, overrides={"root": root}), run_key="a",
                registration=registration, fault_hook=hook)
elif action == "rollback":
    rollback(layout, arg, fault_hook=hook)
else:
    promote(layout, arg, "by hand", fault_hook=hook)
sys.exit(3)  # the fault point was never reached
"""


def _do(layout, action, arg, fault_hook=None):
    if action == "run_promote":
        registration = json.loads(arg)
        return run_promote(layout, registration["day"], None, run_key="a", registration=registration,
                           fault_hook=fault_hook)
    if action == "rollback":
        return rollback(layout, arg, fault_hook=fault_hook)
    return promote(layout, arg, "by hand", fault_hook=fault_hook)


def _write_points(layout: Layout, scratch: Path, action: str, arg: str) -> list[tuple[str, int]]:
    """Every (fault point, nth call) ``action`` passes on a copy of ``layout``: the kill points."""
    points: list[tuple[str, int]] = []
    _do(_clone(layout, scratch), action, arg, lambda p: points.append((p, 1 + sum(q == p for q, _ in points))))
    return points


def _kill_at(layout: Layout, action: str, arg: str, point: tuple[str, int]) -> None:
    proc = subprocess.run([sys.executable, "-c", ACTION_SCRIPT, str(layout.root), layout.champion_store, action, arg,
                           point[0], str(point[1])],
                          cwd=Path(__file__).resolve().parents[3], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, f"{action} not killed at {point}: rc {proc.returncode} {proc.stderr}"


def _assert_consistent(layout: Layout, allowed: set[str]) -> None:
    """After any kill: a whole pointer naming a complete allowed version; a history of whole lines
    whose pointer moves are numbered 1, 2, ... and never ahead of the pointer."""
    record = pointer_of(layout).read()[0]
    assert record["version"] in allowed and _complete(layout, record["version"])
    entries = _raw_history(layout)
    seqs = [e["seq"] for e in entries if e["event"] in ("promote", "rollback")]
    assert seqs == list(range(1, len(seqs) + 1)) and record["seq"] - len(seqs) in (0, 1)


def _moves(layout):
    return [(e["event"], e["version"], e["seq"]) for e in history(layout) if e["event"] in ("promote", "rollback")]


def _kill_everywhere(base: Layout, tmp_path: Path, action: str, arg: str, check, retry=None) -> int:
    """Kill ``action`` at each of its write points; then kill the retry (``retry(layout)`` -> (action,
    arg), default the same call; it repairs what the kill left) at each of ITS write points; after
    every kill assert consistency, then let a last retry finish and hand the root to
    ``check(layout, killed_at, after_kill)``. Returns the kills made."""
    kills = 0
    for point in _write_points(base, tmp_path / "scratch", action, arg):
        first = _clone(base, tmp_path / f"first-{point[0]}-{point[1]}")
        _kill_at(first, action, arg, point)
        kills += 1
        check(first, point, after_kill=True)
        again, again_arg = retry(first) if retry else (action, arg)
        for repair_point in _write_points(first, tmp_path / "scratch", again, again_arg):
            second = _clone(first, tmp_path / f"second-{point[0]}-{point[1]}-{repair_point[0]}-{repair_point[1]}")
            _kill_at(second, again, again_arg, repair_point)
            kills += 1
            check(second, (point, repair_point), after_kill=True)
            check(second, (point, repair_point), after_kill=False)
            shutil.rmtree(second.root)
        check(first, point, after_kill=False)
        shutil.rmtree(first.root)
    return kills


def _promoted_world(env, tmp_path, promote_second: bool):
    """A root with v0 (day 0) the champion, promoted by run "a", and v1 (day 1) judged by run "a"."""
    layout, cfg = env
    v0 = judge(layout, cfg, DAYS[0], "a")
    assert run_promote(layout, DAYS[0], cfg, run_key="a", registration=v0).promoted
    v1 = judge(layout, cfg, DAYS[1], "a")
    if promote_second:
        assert run_promote(layout, DAYS[1], cfg, run_key="a", registration=v1).promoted
    return layout, v0, v1


def test_kill_at_every_write_point_of_a_nightly_promote_then_the_rerun_reports_promoted(env, tmp_path):
    layout, v0, v1 = _promoted_world(env, tmp_path, promote_second=False)
    registration = json.dumps({"day": DAYS[1], "version": v1.version})

    def check(killed, point, after_kill):
        _assert_consistent(killed, {v0.version, v1.version})
        if after_kill:
            return
        # The retry of the killed task: reports the promotion (the DAG emits the champion Asset
        # event), whether or not the killed call had moved the pointer, and is idempotent.
        for _ in range(2):
            result = _do(killed, "run_promote", registration)
            assert (result.promoted, result.outcome, result.champion_version, result.previous_champion) == (
                True, "promoted", v1.version, v0.version), point
            assert read_outcome(killed, DAYS[1], "a")["kind"] == "promoted"
        pointer, log = _pointer(killed), _raw_history(killed)
        assert _moves(killed) == [("promote", v0.version, 1), ("promote", v1.version, 2)], point
        assert _do(killed, "run_promote", registration).promoted
        assert (_pointer(killed), _raw_history(killed)) == (pointer, log)
        # Another run of the day, after the promotion was reported: already the champion.
        other = run_promote(killed, DAYS[1], None, run_key="b", registration=json.loads(registration))
        assert (other.promoted, other.reason) == (False, "already the champion")

    points = [p for p, _ in _write_points(layout, tmp_path / "scratch", "run_promote", registration)]
    assert points == ["validated", "before_pointer_write", "after_pointer_write", "history_appended",
                      "outcome_recorded"]
    assert _kill_everywhere(layout, tmp_path, "run_promote", registration, check) == 19


def test_kill_at_every_write_point_of_a_rollback_and_the_rollback_sticks(env, tmp_path):
    layout, v0, v1 = _promoted_world(env, tmp_path, promote_second=True)
    registration = {"day": DAYS[1], "version": v1.version}

    def check(killed, point, after_kill):
        _assert_consistent(killed, {v0.version, v1.version})
        if after_kill:
            return
        if champion(killed).version == v1.version:  # killed before the rename: the operator retries
            assert rollback(killed, "bad deploy") == v0.version
        with pytest.raises(LookupError):  # done once: v0 has nothing to roll back to
            rollback(killed, "bad deploy")
        assert _moves(killed) == [("promote", v0.version, 1), ("promote", v1.version, 2),
                                  ("rollback", v0.version, 3)], point
        # Re-running the day's promote (the run that promoted v1) never re-promotes it.
        for run_key in ("a", "z"):
            again = run_promote(killed, DAYS[1], None, run_key=run_key, registration=registration)
            assert not again.promoted and again.reason.startswith(f"rolled back: {v1.version} was rolled back")
            assert "bad deploy" in again.reason and champion(killed).version == v0.version, point
        assert champion_as_of(killed, DAYS[2])[0].version == v0.version

    def retry(killed):  # the operator's retry if the pointer did not move, else the day's next promote
        if champion(killed).version == v1.version:
            return "rollback", "bad deploy"
        return "run_promote", json.dumps(registration)

    assert _kill_everywhere(layout, tmp_path, "rollback", "bad deploy", check, retry) == 11


def test_kill_at_every_write_point_of_a_hand_promotion(env, tmp_path):
    layout, v0, v1 = _promoted_world(env, tmp_path, promote_second=False)

    def check(killed, point, after_kill):
        _assert_consistent(killed, {v0.version, v1.version})
        if not after_kill:
            promote(killed, v1.version, "by hand")
            assert _moves(killed) == [("promote", v0.version, 1), ("promote", v1.version, 2)], point
            assert history(killed)[-1]["manual"] is True

    assert _kill_everywhere(layout, tmp_path, "promote", v1.version, check) == 13


def test_a_crashed_runs_promotion_is_reported_by_the_next_run_of_the_day(env, tmp_path):
    layout, v0, v1 = _promoted_world(env, tmp_path, promote_second=False)
    with pytest.raises(Crash):
        run_promote(layout, DAYS[1], None, run_key="a", registration=v1, fault_hook=_crash_at("after_pointer_write"))
    assert read_outcome(layout, DAYS[1], "a") is None and champion(layout).version == v1.version
    result = run_promote(layout, DAYS[1], None, run_key="b", registration=v1)
    assert result.promoted and result.previous_champion == v0.version
    assert read_outcome(layout, DAYS[1], "b")["kind"] == "promoted"
    assert _moves(layout) == [("promote", v0.version, 1), ("promote", v1.version, 2)]


def _fail_history_writes(monkeypatch, truncate_fails: bool):
    """Disk full in the middle of a history append: half the line lands, then ENOSPC; with
    ``truncate_fails`` the process dies before it can cut the half line (a kill, as far as the file sees)."""
    real_write = os.write
    landed = []

    def full_disk_write(fd, data):
        if not os.readlink(f"/proc/self/fd/{fd}").endswith("history.jsonl"):
            return real_write(fd, data)
        if not landed:  # the first write lands half the line, the next one finds the disk full
            landed.append(real_write(fd, bytes(data[:len(data) // 2])))
            return landed[0]
        raise OSError(errno.ENOSPC, "No space left on device")

    def failing_truncate(fd, length):
        raise OSError(errno.EIO, "killed before the truncate")

    monkeypatch.setattr(registry.os, "write", full_disk_write)
    if truncate_fails:
        monkeypatch.setattr(registry.os, "ftruncate", failing_truncate)


@FILE_ONLY
@pytest.mark.parametrize("truncate_fails", [False, True])
def test_disk_full_during_a_history_append_never_swallows_the_next_entry(env, tmp_path, monkeypatch,
                                                                          truncate_fails):
    layout, v0, v1 = _promoted_world(env, tmp_path, promote_second=False)
    before = (layout.registry() / "history.jsonl").read_bytes()
    _fail_history_writes(monkeypatch, truncate_fails)
    result = run_promote(layout, DAYS[1], None, run_key="a", registration=v1)
    monkeypatch.undo()
    # The pointer moved, so the promotion stands and is reported; its log line is repaired later.
    assert result.promoted and champion(layout).version == v1.version
    torn = (layout.registry() / "history.jsonl").read_bytes()
    assert (torn == before) is not truncate_fails and torn.startswith(before)
    assert rollback(layout, "bad deploy") == v0.version  # repairs the lost line, then logs the rollback
    assert _moves(layout) == [("promote", v0.version, 1), ("promote", v1.version, 2), ("rollback", v0.version, 3)]
    assert history(layout)[1]["recovered"] is True
    _assert_consistent(layout, {v0.version})
    again = run_promote(layout, DAYS[1], None, run_key="a", registration=v1)
    assert not again.promoted and again.reason.startswith("rolled back:")


@pytest.mark.parametrize("env", ["object"], indirect=True)
def test_a_store_refusing_the_history_write_after_the_pointer_moved_never_loses_the_rollback(env, tmp_path,
                                                                                            monkeypatch):
    """The object store's disk full: the history object of a move cannot be written (the store fails).
    The move stands and is reported; the next decision writes the lost entry first, so a rollback
    after it is still a rollback and the rolled-back day never comes back."""
    from components.core.objectstore import ObjectStoreError

    layout, v0, v1 = _promoted_world(env, tmp_path, promote_second=False)
    store = pointer_of(layout).store
    real_create = store.create

    def failing_create(name, body):
        if name.startswith("history/"):
            raise ObjectStoreError(f"s3://{store.bucket}/{store.key(name)}: create failed: InternalError (HTTP 500)")
        return real_create(name, body)

    monkeypatch.setattr(store, "create", failing_create)
    result = run_promote(layout, DAYS[1], None, run_key="a", registration=v1)
    monkeypatch.setattr(store, "create", real_create)
    assert result.promoted and champion(layout).version == v1.version
    assert _moves(layout) == [("promote", v0.version, 1)]  # the move's entry is missing ...
    assert rollback(layout, "bad deploy") == v0.version  # ... written by the next decision, before its own
    assert _moves(layout) == [("promote", v0.version, 1), ("promote", v1.version, 2), ("rollback", v0.version, 3)]
    assert history(layout)[1]["recovered"] is True
    _assert_consistent(layout, {v0.version})
    again = run_promote(layout, DAYS[1], None, run_key="a", registration=v1)
    assert not again.promoted and again.reason.startswith("rolled back:")


@FILE_ONLY
def test_a_not_promoted_entry_that_hits_a_full_disk_leaves_no_half_line(env, tmp_path, monkeypatch):
    layout, v0, _ = _promoted_world(env, tmp_path, promote_second=False)
    before = (layout.registry() / "history.jsonl").read_bytes()
    _fail_history_writes(monkeypatch, truncate_fails=False)
    with pytest.raises(OSError) as failure:
        run_promote(layout, DAYS[0], None, run_key="b", registration={"day": DAYS[0], "version": v0.version})
    monkeypatch.undo()
    assert failure.value.errno == errno.ENOSPC
    assert (layout.registry() / "history.jsonl").read_bytes() == before


@FILE_ONLY
def test_a_registry_written_before_the_pointer_carried_its_deny_list_keeps_its_rollbacks(env, tmp_path):
    layout, v0, v1 = _promoted_world(env, tmp_path, promote_second=True)
    rollback(layout, "bad deploy")
    # Rewrite champion.json and the history in the previous format (no seq, deny-list only in the history).
    record = json.loads((layout.registry() / "champion.json").read_text())
    legacy = {k: record[k] for k in ("version", "promoted_at", "reason", "event", "previous")}
    (layout.registry() / "champion.json").write_text(json.dumps(legacy))
    lines = [{k: v for k, v in e.items() if k not in ("seq", "run_key")} for e in history(layout)]
    (layout.registry() / "history.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))
    assert set(registry.rolled_back(layout)) == {v1.version}
    again = run_promote(layout, DAYS[1], None, run_key="a", registration=v1)
    assert not again.promoted and again.reason.startswith("rolled back:")
    assert promote(layout, v1.version, "fixed").promoted  # the first move in the new format: seq 4, nothing repaired
    assert champion(layout).seq == 4 and champion(layout).rolled_back == ()
    assert [e["event"] for e in history(layout)] == ["promote", "promote", "rollback", "not_promoted", "promote"]


@FILE_ONLY
def test_a_full_disk_after_the_pointer_moved_says_so_and_the_rerun_reports_promoted(env, tmp_path, monkeypatch):
    from dataclasses import asdict

    from components.core.errors import PermanentStageFailure
    from components.pipeline import run_stage

    layout, v0, v1 = _promoted_world(env, tmp_path, promote_second=False)
    real_replace = os.replace

    def full_disk(src, dst):
        if Path(dst).name == "outcome.json":
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(PermanentStageFailure) as failure:  # the DAG fails the task without retries
        run_stage("promote", DAYS[1], tiny_config(layout.root), run_key="a", upstream=asdict(v1))
    monkeypatch.undo()
    message = str(failure.value)
    assert message.startswith("disk full: ") and "outcome.json" in message
    assert f"The champion DID move to {v1.version}" in message and champion(layout).version == v1.version
    again = run_stage("promote", DAYS[1], tiny_config(layout.root), run_key="a", upstream=asdict(v1))
    assert again["promoted"] and read_outcome(layout, DAYS[1], "a")["kind"] == "promoted"


def test_promote_without_a_registration_decides_the_runs_own_candidate(env):
    """Two runs of one day judged two candidates (different baselines); each run's promote decides
    its own, not the one the day's newest run registered."""
    layout, cfg = env
    v0 = judge(layout, cfg, DAYS[0], "a")
    run_promote(layout, DAYS[0], cfg, run_key="a", registration=v0)
    v1 = judge(layout, cfg, DAYS[1], "a")
    first = judge(layout, cfg, DAYS[2], "first")  # judged against v0
    assert run_promote(layout, DAYS[1], cfg, run_key="a", registration=v1).promoted
    second = judge(layout, cfg, DAYS[2], "second")  # judged against v1: another candidate, registered last
    assert first.version != second.version
    decision = run_promote(layout, DAYS[2], cfg, run_key="first")
    assert decision.version == first.version and decision.reason.startswith("stale: champion changed")
    assert run_promote(layout, DAYS[2], cfg, run_key="second").version == second.version
    assert champion(layout).version == second.version
