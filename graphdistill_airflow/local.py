"""A real Airflow api-server on loopback over an artifact root (tests, screenshots, a local look).

The simple auth manager with one admin user from a passwords file; a fixed JWT secret so that
tokens stay valid across the server's workers. The DAG runs that should write notes get
``task_env()`` (the ``graphdistill_api`` connection pointing here).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from components.cli import airflow_bin, airflow_env


@dataclass(frozen=True)
class LocalApiServer:
    base_url: str
    user: str
    password: str

    def token(self) -> str:
        request = urllib.request.Request(f"{self.base_url}/auth/token", method="POST",
                                         data=json.dumps({"username": self.user, "password": self.password}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())["access_token"]

    def get(self, path: str, token: str | None = None) -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            with urllib.request.urlopen(urllib.request.Request(f"{self.base_url}{path}", headers=headers),
                                        timeout=60) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def post(self, path: str, body: Any, token: str | None = None) -> tuple[int, Any]:
        """POST ``body`` as JSON; the status and the decoded JSON answer."""
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
        request = urllib.request.Request(f"{self.base_url}{path}", method="POST", data=json.dumps(body).encode(),
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def get_json(self, path: str, token: str) -> Any:
        status, body = self.get(path, token)
        if status != 200:
            raise AssertionError(f"GET {path}: HTTP {status}: {body[:300]!r}")
        return json.loads(body)

    def task_env(self) -> dict[str, str]:
        """Environment for DAG runs: the connection the outcome task writes run notes through."""
        host = self.base_url.split("://", 1)[1]
        return {"AIRFLOW_CONN_GRAPHDISTILL_API": f"http://{self.user}:{self.password}@{host}"}


def _passwords_file(root: Path) -> Path:
    return Path(root) / "airflow" / "simple_auth_manager_passwords.json"


def server_env(root: Path, port: int, user: str) -> dict[str, str]:
    """Airflow settings of the local api-server (and of any component sharing its metadata DB)."""
    return {
        **airflow_env(root),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{user}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(_passwords_file(root)),
        "AIRFLOW__API_AUTH__JWT_SECRET": "graphdistill-local-only",
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        # Where task workers (scheduler's executor) reach the Execution API: this server.
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__CORE__LAZY_LOAD_PLUGINS": "False",
        "GRAPHDISTILL_ROOT": str(root),
    }


@contextmanager
def api_server(root: Path, port: int, log_file: Path, user: str = "ops", password: str = "ops-local-pw",
               startup_timeout: float = 180.0) -> Iterator[LocalApiServer]:
    """Start ``airflow api-server`` on 127.0.0.1:port (DB migrated first); stop it on exit."""
    root = Path(root)
    env = server_env(root, port, user)
    _passwords_file(root).parent.mkdir(parents=True, exist_ok=True)
    _passwords_file(root).write_text(json.dumps({user: password}))
    subprocess.run([airflow_bin(), "db", "migrate"], env=env, check=True, capture_output=True)
    server = LocalApiServer(f"http://127.0.0.1:{port}", user, password)
    with airflow_process(["api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"], env,
                         log_file) as proc:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"api-server exited with {proc.returncode}; see {log_file}")
            try:
                if server.get("/api/v2/monitor/health")[0] == 200:
                    break
            except OSError:  # not listening yet: keep polling until the deadline
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"api-server not healthy after {startup_timeout:.0f} s; see {log_file}")
            time.sleep(1)
        yield server


@contextmanager
def airflow_process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """``airflow <args>`` in its own process group (stopped with its workers on exit), output to ``log``."""
    with log.open("w") as out:
        proc = subprocess.Popen([airflow_bin(), *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
