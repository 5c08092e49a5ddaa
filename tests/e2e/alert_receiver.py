"""A real HTTP receiver on loopback for the alert connection: the DAG's notifier posts to it, the
tests read what it received (one JSON payload per alert)."""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Iterator


@contextmanager
def alert_receiver() -> Iterator[tuple[dict[str, str], list[dict]]]:
    """(environment naming the receiver as the alert connection, the payloads received so far)."""
    received: list[dict] = []

    class Webhook(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            """Silent: the tests read the received payloads, not http.server's access log."""

    hook = HTTPServer(("127.0.0.1", 0), Webhook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    try:
        yield {"AIRFLOW_CONN_GRAPHDISTILL_ALERTS": f"http://127.0.0.1:{hook.server_port}/alerts"}, received
    finally:
        hook.shutdown()
        hook.server_close()
