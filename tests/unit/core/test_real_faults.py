"""Real storage faults against the real CLI (issue 20): a full disk and a read-only root on a small
tmpfs, permission denied as an unprivileged user. Each fails with exit 2 and one last line naming
the path and what to do; nothing half-written is published; once fixed, the re-run succeeds and
publishes what a run on a healthy disk publishes; the DAG's entry (pipeline.run_stage) fails the
task for good. The message mapping itself is unit-tested in tests/unit/test_cli.py. Mounting and
dropping privileges skip (with the command's error) where the machine forbids them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from components.core.catalog import (MANIFEST, PARTITION_MARKERS, REPLACED_SUFFIX, STAGING_PREFIX, TMP_SUFFIX,
                                     Layout, hash_dir, latest_run)
from components.core.config import REPO_ROOT, load_config
from tests.unit.data_fixtures import day, land
from tests.unit.fault_fixtures import (NOBODY, PAGE, as_unprivileged, fill, footprint, remount,  # noqa: F401
                                       shared_tmp, tmpfs, used_bytes)  # shared_tmp: a fixture

ROOMY = 64 << 20  # bytes: the tmpfs once room is made (the small world needs well under 1 MB)
# Day 1's stages that write through each publishing path: a day partition (validate), Feast's
# snapshots, registry and SQLite online store (features), a versioned artifact (graph; teacher and
# later stages publish the same way). Ingest's faults are the read-only and run-record tests'.
STAGES = ("validate", "features", "graph")
VERSIONED = ("graphs", "models/*", "exports", "engines")  # <family>/<day>/<version>/, manifest last


def cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "components.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def cli_stage(stage: str, root: Path) -> subprocess.CompletedProcess:
    return cli("run", stage, "--day", day(1), "--root", root, cwd=root.parent)


def run_healthy(stage: str, root: Path) -> None:
    """The stage in this process, through the function the CLI calls (its imports paid once)."""
    from components import pipeline

    pipeline.run_stage(stage, day(1), load_config(overrides={"root": str(root)}),
                       inputs=pipeline.default_inputs(stage, day(1), Layout.at(root)))


def succeeds(done: subprocess.CompletedProcess) -> bool:
    assert done.returncode == 0, done.stderr[-3000:]
    return True


def assert_one_message(done: subprocess.CompletedProcess, start: str, todo: str) -> None:
    """Exit 2, the last line of stderr the message, no traceback anywhere."""
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(start) and todo in last, last
    assert "Traceback" not in done.stderr, done.stderr[-3000:]


def published(root: Path, stage: str) -> object:
    """What ``stage`` published for day 1, by content (None while nothing is): the same on any disk."""
    layout = Layout.at(root)
    if stage in ("ingest", "validate"):  # the rows; the marker names the root's landing path
        kind = "staging" if stage == "ingest" else "accepted"
        partition = root / kind / f"date={day(1)}"
        complete = layout.partition_version(kind, day(1)) is not None
        return hash_dir(partition, exclude=(PARTITION_MARKERS[kind],)) if complete else None
    if stage == "features":  # the run record is written last
        record = layout.features() / "runs" / f"{day(1)}.json"
        if not record.exists():
            return None
        snapshots = sorted((layout.features() / "repo" / "data").glob(f"*/{day(1)}.parquet"))
        # created_timestamp is the wall clock of the write (Feast's tie-breaker), by design
        return (json.loads(record.read_text())["result"]["materialized_rows"],
                {p.parent.name: pd.read_parquet(p).drop(columns="created_timestamp").to_json() for p in snapshots})
    current = layout.current("graphs", day(1))
    return current and current.version


def half_written(root: Path) -> list[str]:
    """Anything a reader could take for published but incomplete (a version folder without its
    manifest, a day partition without its marker), and writers' temporary files left behind."""
    found = [p for p in root.rglob("*") if p.name.startswith(STAGING_PREFIX)
             or p.name.startswith(".") and p.name.endswith((TMP_SUFFIX, REPLACED_SUFFIX))]
    for kind, marker in PARTITION_MARKERS.items():
        found += [p for p in (root / kind).glob("date=*") if not (p / marker).exists()]
    for family in VERSIONED:
        found += [p for p in root.glob(f"{family}/*/*") if p.is_dir() and not (p / MANIFEST).exists()]
    return sorted(str(p.relative_to(root)) for p in found)


def test_a_full_disk_fails_each_stage_cleanly_and_after_making_room_the_rerun_publishes_the_same(tmp_path):
    """Each stage on a root with room for half of what it writes (measured on pytest's disk): exit 2
    and the message, its output published whole or not at all, no temporary files left; once the
    tmpfs is grown, the re-run publishes what the run on pytest's disk published."""
    with tmpfs(tmp_path / "mnt", ROOMY) as mnt:
        disk = tmp_path / "disk"  # the healthy run, on pytest's disk
        layout = Layout.at(disk)
        land(layout, 1)
        run_healthy("ingest", disk)
        root = mnt / "root"
        shutil.copytree(disk, root)
        for stage in STAGES:
            before = footprint(disk)
            run_healthy(stage, disk)
            writes = footprint(disk) - before
            # Room for half of what the stage writes: it runs out mid-way (its peak is larger still).
            remount(mnt, f"size={used_bytes(mnt) + writes // 2 // PAGE * PAGE}")
            full = cli_stage(stage, root)
            assert_one_message(full, f"graphdistill run: disk full: {root}",
                               "free space on that filesystem or move the root to a larger volume")
            # Published whole (the fault came after: e.g. in the day's reports) or not at all.
            assert published(root, stage) in (None, published(disk, stage)), stage
            assert half_written(root) == [], stage
            remount(mnt, f"size={ROOMY}")
            assert succeeds(cli_stage(stage, root))
            assert published(root, stage) == published(disk, stage) is not None, stage
            assert half_written(root) == [], stage


def test_a_read_only_root_fails_with_the_message_and_the_rerun_succeeds_once_read_write(tmp_path):
    with tmpfs(tmp_path / "mnt", ROOMY) as mnt:
        root = mnt / "root"
        land(Layout.at(root), 1)
        remount(mnt, "ro")
        read_only = cli_stage("ingest", root)
        assert_one_message(read_only, f"graphdistill run: read-only filesystem: {root}/staging: ",
                           "remount it read-write or point the root")
        assert sorted(p.name for p in root.iterdir()) == ["landing"]
        remount(mnt, "rw")
        assert succeeds(cli_stage("ingest", root))
        assert published(root, "ingest") is not None and half_written(root) == []


def _own(folder: Path, mode: int) -> None:
    """``folder``'s tree owned by the user the CLI runs as (nobody when we are root), ``folder`` at ``mode``."""
    if os.geteuid() == 0:
        for path in [folder, *folder.rglob("*")]:
            os.chown(path, NOBODY, NOBODY)
    folder.chmod(mode)


def test_as_an_unprivileged_user_an_unwritable_root_exits_2_and_an_unreadable_file_quarantines_the_day(shared_tmp):
    root = shared_tmp / "root"
    layout = Layout.at(root)
    landing = layout.landing(day(0))
    shutil.copy(land(layout, 0), landing / "more.parquet")

    def cli_as_unprivileged(stage: str) -> subprocess.CompletedProcess:
        return as_unprivileged(["-m", "components.cli", "run", stage, "--day", day(0), "--root", str(root)], shared_tmp)

    _own(root, 0o555)  # the root: readable, not writable
    denied = cli_as_unprivileged("ingest")
    uid = NOBODY if os.geteuid() == 0 else os.geteuid()
    assert_one_message(denied, f"graphdistill run: permission denied: {root}/staging: ",
                       f"give the user running the pipeline (uid {uid}) read and write access to it")
    assert sorted(p.name for p in root.iterdir()) == ["landing"]

    _own(root, 0o755)
    (landing / "more.parquet").chmod(0)  # one landed file its reader cannot open
    assert succeeds(cli_as_unprivileged("ingest"))
    quarantined = cli_as_unprivileged("validate")
    assert quarantined.returncode == 2 and "Traceback" not in quarantined.stderr, quarantined.stderr[-3000:]
    assert (f"FAIL source_file_readable: 1 files; expected every landing file and folder can be read and parses; "
            f"e.g. more.parquet (PermissionError") in quarantined.stderr
    assert latest_run(layout, day(0))["outcome"] == "quarantined"
    assert layout.partition_version("accepted", day(0)) is None
    (attempt,) = layout.quarantine(day(0)).iterdir()
    report = (attempt / "report.md").read_text()
    assert "| more.parquet | unreadable |" in report and "Permission denied" in report

    rows = layout.staging(day(0)) / "rows.parquet"
    rows.chmod(0)  # a stage's input its reader cannot open: the CLI said "[Errno 13]" and no more
    unreadable = cli_as_unprivileged("validate")
    assert_one_message(unreadable, f"graphdistill run: permission denied: {rows}: ",
                       f"give the user running the pipeline (uid {uid}) read and write access to it")


def test_a_full_disk_under_the_run_records_fails_the_task_for_good(tmp_path):
    """The day published, then the disk fills at the run's own record (reports/ on a full tmpfs of
    its own): the DAG's entry (pipeline.run_stage) raises a PermanentStageFailure, so the task fails
    without retries. It raised a bare OSError, which the DAG retried for nothing."""
    from components.core.errors import PermanentStageFailure
    from components.pipeline import run_stage

    root = tmp_path / "root"
    land(Layout.at(root), 1)
    cfg = load_config(overrides={"root": str(root)})
    with tmpfs(root / "reports", 16 * PAGE) as reports:
        filler = fill(reports)
        with pytest.raises(PermanentStageFailure) as failure:
            run_stage("ingest", day(1), cfg, run_key="full", inputs={})
        assert str(failure.value).startswith(f"disk full: {reports}/{day(1)}/"), failure.value  # the record itself
        assert published(root, "ingest") is not None and half_written(root) == []  # the day itself: whole
        filler.unlink()
        run_stage("ingest", day(1), cfg, run_key="full", inputs={})
        assert json.loads((reports / day(1) / "runs" / "full" / "stages" / "ingest.json").read_text())["rows"] > 0


def _blessed_version(layout: Layout, version: str, day_: str) -> None:
    """A registry version as register writes it, reduced to what a manual promotion reads."""
    from components.core.catalog import write_json

    folder = layout.registry() / "versions" / version
    write_json(folder / "blessing.json", {"blessed": True, "failed": [], "inconclusive": []})
    write_json(folder / MANIFEST, {"version": version, "day": day_, "status": "blessed",
                                   "files": ["blessing.json", MANIFEST]})


def test_a_full_disk_during_a_promotion_keeps_the_champion_and_leaves_no_temporary_file(tmp_path):
    """A manual promotion on a full tmpfs: exit 2 naming the pointer file, champion and history as
    they were. The pointer's own temporary file stayed behind (no stage's tidy runs for a promote)
    and the message named only the root."""
    with tmpfs(tmp_path / "mnt", ROOMY) as mnt:
        root = mnt / "root"
        layout = Layout.at(root)
        _blessed_version(layout, "v-first", day(0))
        _blessed_version(layout, "v-second", day(1))
        assert succeeds(cli("promote", "v-first", "--reason", "first", "--root", root, cwd=tmp_path))
        pointer = (layout.registry() / "champion.json").read_bytes()
        history = (layout.registry() / "history.jsonl").read_bytes()
        filler = fill(mnt)
        full = cli("promote", "v-second", "--reason", "second", "--root", root, cwd=tmp_path)
        assert_one_message(full, f"graphdistill promote: disk full: {layout.registry()}/", "free space")
        assert (layout.registry() / "champion.json").read_bytes() == pointer  # the champion unchanged
        assert (layout.registry() / "history.jsonl").read_bytes() == history
        assert half_written(root) == []
        filler.unlink()
        assert succeeds(cli("promote", "v-second", "--reason", "second", "--root", root, cwd=tmp_path))
        assert json.loads((layout.registry() / "champion.json").read_text())["version"] == "v-second"
