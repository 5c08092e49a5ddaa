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
    assert "validation FAILED for 2026-01-02" in capsys.readouterr().err
    assert main(["outcome", "2026-01-02", "--json", "--root", root]) == 0
    outcome = json.loads(capsys.readouterr().out)
    assert outcome["kind"] == "quarantined" and "rows quarantined; failed rules: expect_column_values_to_be_between(ts_offset_hours)" in outcome["reason"]


def test_rollback_without_a_champion_is_a_clear_error(tmp_path, capsys):
    assert main(["rollback", "--root", str(tmp_path)]) == 2
    assert "graphdistill rollback:" in capsys.readouterr().err
