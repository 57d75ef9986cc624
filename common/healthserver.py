"""A small HTTP server for a process's health and metrics routes, on a daemon thread.

The worker (``worker/health.py``) and the webhook sender (``webhooks/health.py``) have no web
framework and need none for two or three GET routes; each passes its routes here. Each route
answers ``(status, body, content type)``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Route = Callable[[], tuple[int, bytes, str]]


def json_answer(status: int, body: dict[str, Any]) -> tuple[int, bytes, str]:
    return status, json.dumps(body).encode(), "application/json"


class HealthServer:
    """Serves ``routes`` (path → answer) on ``host:port``; anything else is a JSON 404."""

    def __init__(self, host: str, port: int, routes: Mapping[str, Route], thread_name: str):
        table = dict(routes)

        class _Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                route = table.get(self.path)
                if route is None:
                    status, payload, content_type = json_answer(
                        404, {"title": "Not Found", "status": 404}
                    )
                else:
                    status, payload, content_type = route()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return  # probes and scrapes every few seconds would drown the process's logs

        self._server = ThreadingHTTPServer((host, port), _Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=thread_name, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
