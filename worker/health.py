"""``/healthz`` (alive), ``/readyz`` (models loaded and pulling) and ``/metrics`` (Prometheus,
``worker/metrics.py``) on ``WORKER_HTTP_PORT``.

A stdlib server on a daemon thread: the worker has no web framework and needs none for three routes.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from worker import metrics

logger = logging.getLogger(__name__)


class HealthServer:
    """Serves the worker's state; ``readiness`` returns (ready, details)."""

    def __init__(self, host: str, port: int, readiness: Callable[[], tuple[bool, dict[str, Any]]]):
        readiness_fn = readiness

        class _Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path == "/healthz":
                    self._answer(200, {"ok": True, "service": "worker"})
                elif self.path == "/readyz":
                    ready, details = readiness_fn()
                    self._answer(200 if ready else 503, {"ready": ready, **details})
                elif self.path == "/metrics":
                    self._send(200, *metrics.exposition())
                else:
                    self._answer(404, {"title": "Not Found", "status": 404})

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                self._send(status, json.dumps(body).encode(), "application/json")

            def _send(self, status: int, payload: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return  # probes every few seconds would drown the job logs

        self._server = ThreadingHTTPServer((host, port), _Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="omni-health", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()
        logger.info("health on port %s", self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
