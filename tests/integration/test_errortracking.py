"""Optional Sentry (``SENTRY_DSN``): an error logged with its exception reaches the DSN's server as
an event, without the request's headers. The "server" is a loopback HTTP listener in this test;
the reporting runs in a child process so this session's own processes stay unreported."""

from __future__ import annotations

import gzip
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.support import python_env

pytestmark = pytest.mark.integration

REPORTING = r"""
import logging, sys
from flask import Flask
import sentry_sdk
from common.errortracking import init_error_tracking
from common.jsonlog import configure_logging

configure_logging("INFO")
assert init_error_tracking(sys.argv[1], "omni-test")
app = Flask(__name__)

@app.get("/boom")
def boom():
    raise RuntimeError("the model exploded")

client = app.test_client()
key = "secret-key-0123"
client.get("/boom", headers={"X-API-Key": key, "Authorization": f"Bearer {key}"})
logging.getLogger("worker").error("a job broke", exc_info=ValueError("bad tensor"))
sentry_sdk.flush(timeout=10)
"""


@pytest.fixture
def collector() -> Iterator[tuple[str, list[bytes]]]:
    received: list[bytes] = []

    class _Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            received.append(body)
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://publickey@127.0.0.1:{server.server_address[1]}/1", received
    finally:
        server.shutdown()
        server.server_close()


def test_errors_reach_sentry_without_keys(collector: tuple[str, list[bytes]]) -> None:
    dsn, received = collector
    done = subprocess.run(
        [sys.executable, "-c", REPORTING, dsn],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    events = b"\n".join(received).decode("utf-8", "replace")
    assert "the model exploded" in events  # the unhandled exception in a Flask view
    assert "bad tensor" in events  # an error logged with its exception
    assert "secret-key-0123" not in events  # neither header, nor a frame's locals
