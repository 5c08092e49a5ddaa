"""A small client of Airflow's public REST API (v2), for what the task SDK cannot do and for callers
outside Airflow: a DAG-run note (graphdistill_airflow/notes.py) and a champion Asset event after an
operator's rollback or manual promotion (the CLI), so serving follows without a nightly run.

Plain HTTP (no airflow import): ``POST /auth/token`` with a user and password, then the call.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

# The champion Asset's name (graphdistill_airflow/assets.py CHAMPION): the serving refresh DAG runs on it.
CHAMPION_ASSET = "graphdistill_champion"
API_URL_ENV = "GRAPHDISTILL_API_URL"


@dataclass(frozen=True)
class AirflowApi:
    base: str  # scheme://host:port of the api-server
    username: str | None = None
    password: str | None = None

    @classmethod
    def from_url(cls, url: str) -> "AirflowApi":
        """``http://USER:PASSWORD@host:port`` (credentials percent-encoded if they hold ``@`` or ``:``)."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{API_URL_ENV}: expected http(s)://USER:PASSWORD@host:port, got {url!r}")
        port = f":{parts.port}" if parts.port else ""
        return cls(f"{parts.scheme}://{parts.hostname}{port}", urllib.parse.unquote(parts.username or "") or None,
                   urllib.parse.unquote(parts.password or "") or None)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, token: str | None = None) -> Any:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.base}{path}", data=data, headers=headers, method=method)
        with urllib.request.urlopen(request, timeout=20) as response:
            return json.loads(response.read() or b"{}")

    def token(self) -> str:
        return self.call("POST", "/auth/token", {"username": self.username, "password": self.password})["access_token"]

    def set_run_note(self, dag_id: str, run_id: str, note: str) -> None:
        path = (f"/api/v2/dags/{urllib.parse.quote(dag_id, safe='')}/dagRuns/"
                f"{urllib.parse.quote(run_id, safe='')}?update_mask=note")
        self.call("PATCH", path, {"note": note}, self.token())

    def emit_asset_event(self, name: str, extra: dict[str, Any]) -> dict[str, Any]:
        """Record an event on the Asset called ``name`` (as a task's outlet would); returns the event."""
        token = self.token()
        found = self.call("GET", f"/api/v2/assets?name_pattern={urllib.parse.quote(name)}&limit=100", token=token)
        ids = [a["id"] for a in found.get("assets", []) if a["name"] == name]
        if not ids:
            raise LookupError(f"Airflow at {self.base} knows no Asset named {name!r}: is the nightly DAG deployed "
                              f"and parsed there?")
        return self.call("POST", "/api/v2/assets/events", {"asset_id": ids[0], "extra": extra}, token)
