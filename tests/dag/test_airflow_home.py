"""A root can be copied or moved: Airflow's home and database are derived from the root at run time,
so nothing inside a root names its location and two copies never share a metadata database."""

import shutil
import subprocess
from pathlib import Path

from components.cli import airflow_bin, airflow_env


def airflow(root: Path, *args: str) -> str:
    return subprocess.run([airflow_bin(), *args], env=airflow_env(root), check=True, capture_output=True,
                          text=True).stdout.strip()


def test_a_copied_root_runs_airflow_on_its_own_database(tmp_path):
    original, copy = tmp_path / "original", tmp_path / "copy"
    original.mkdir()
    airflow(original, "db", "migrate")
    airflow(original, "variables", "set", "written_by", "original")
    shutil.copytree(original, copy)
    # Airflow used to write <root>/airflow/airflow.cfg with sql_alchemy_conn pointing at the original
    files = [p for p in copy.rglob("*") if p.is_file()]
    assert any(p.name == "airflow.db" for p in files)
    assert [p for p in files if str(original).encode() in p.read_bytes()] == []
    assert airflow(copy, "config", "get-value", "database", "sql_alchemy_conn") == f"sqlite:///{copy}/airflow/airflow.db"
    assert airflow(copy, "config", "get-value", "logging", "base_log_folder") == f"{copy}/airflow/logs"
    airflow(copy, "variables", "set", "written_by", "copy")
    assert airflow(original, "variables", "get", "written_by") == "original"
    assert airflow(copy, "variables", "get", "written_by") == "copy"
