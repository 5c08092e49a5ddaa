"""The CLI runs the same stage functions as the DAG, and reports operator errors in one line."""

import json

from components.cli import main


def test_generate_then_run_stages_from_the_cli(tmp_path, capsys):
    root = str(tmp_path / "root")
    assert main(["generate", "--root", root, "--days", "2", "--users", "80", "--items", "60",
                 "--corrupt", "2026-01-02:wrong_day"]) == 0
    assert main(["run", "ingest", "--day", "2026-01-01", "--root", root]) == 0
    capsys.readouterr()
    assert main(["run", "validate", "--day", "2026-01-01", "--root", root, "--set", "validation.min_rows=5"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["success"] is True and result["accepted_rows"] > 0
    latest = json.loads((tmp_path / "root" / "reports" / "2026-01-01" / "latest.json").read_text())
    assert latest["run_key"].startswith("cli-")
    assert (tmp_path / "root" / "reports" / "2026-01-01" / "runs" / latest["run_key"] / "stages" / "validate.json").exists()
    assert main(["run", "ingest", "--day", "2026-01-02", "--root", root]) == 0
    assert main(["run", "validate", "--day", "2026-01-02", "--root", root]) == 2
    err = capsys.readouterr().err
    assert "validation FAILED for 2026-01-02" in err
    # validate judges the day against the earlier days it is handed, and the CLI says which
    assert "from the catalog: history: accepted 2026-01-01..2026-01-01 (1 day) + no quarantined days" in err
    assert main(["outcome", "2026-01-02", "--json", "--root", root]) == 0
    outcome = json.loads(capsys.readouterr().out)
    assert outcome["kind"] == "quarantined" and "rows quarantined; failed rules: expect_column_values_to_be_between(ts_offset_hours)" in outcome["reason"]


def test_rollback_without_a_champion_is_a_clear_error(tmp_path, capsys):
    assert main(["rollback", "--root", str(tmp_path)]) == 2
    assert "graphdistill rollback:" in capsys.readouterr().err


def test_storage_faults_are_one_message_naming_the_path_and_what_to_do(tmp_path):
    """The mapping; the real faults (a full or read-only tmpfs, an unprivileged user) through the
    CLI are tests/unit/core/test_real_faults.py."""
    import errno
    import sqlite3

    from components.core.errors import PermanentStageFailure, storage_fault

    full = storage_fault(OSError(errno.ENOSPC, "No space left on device", "/data/root/graphs/x.bin"), "/data/root")
    assert isinstance(full, PermanentStageFailure)  # the DAG fails it without retries
    assert str(full).startswith("disk full: /data/root/graphs/x.bin: free space on that filesystem")
    try:  # a library that keeps only the OS error's text (Feast's SQLite online store)
        try:
            raise sqlite3.OperationalError("attempt to write a readonly database")
        except sqlite3.OperationalError as inner:
            raise RuntimeError("materialize failed") from inner
    except RuntimeError as wrapped:
        readonly = storage_fault(wrapped, "/data/root")
    assert str(readonly).startswith("read-only filesystem: /data/root: remount it read-write")
    denied = storage_fault(PermissionError(errno.EACCES, "Permission denied", "/data/root/accepted"), "/data/root")
    assert str(denied).startswith("permission denied: /data/root/accepted: give the user running the pipeline (uid ")
    assert storage_fault(ValueError("bad day"), "/r") is None
    assert storage_fault(PermissionError("refusing to promote v1: status 'rejected'"), "/r") is None


def test_a_stage_that_continues_a_run_needs_its_key(tmp_path, capsys):
    """Two runs of a day at once: a gate without --run-key used to continue the day's newest run,
    so both runs judged one candidate. Now it names the key to pass."""
    from components.core.catalog import Layout, mark_latest

    root = str(tmp_path)
    assert main(["run", "gate", "--day", "2026-01-01", "--root", root]) == 2
    assert "gate continues a run of 2026-01-01: pass --run-key" in capsys.readouterr().err
    for run_key in ("cli-first", "cli-second"):  # both evaluated; the second marked the day's newest
        mark_latest(Layout.at(root), "2026-01-01", run_key)
    for stage in ("gate", "register", "promote", "report"):
        assert main(["run", stage, "--day", "2026-01-01", "--root", root]) == 2
        assert "(the day's newest run is cli-second)" in capsys.readouterr().err
    assert main(["run", "gate", "--day", "2026-01-01", "--root", root, "--run-key", "cli-first"]) == 2
    assert "run cli-first of 2026-01-01 has no evaluate result" in capsys.readouterr().err  # its own run
