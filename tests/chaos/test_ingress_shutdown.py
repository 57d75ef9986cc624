"""The ingress on SIGTERM: gunicorn finishes the requests in flight, then exits.

A request is held in flight by pausing the Firestore emulator (SIGSTOP) while it writes the job;
SIGTERM reaches gunicorn meanwhile; Firestore resumes a second later. The request must still be
answered 202, its job stored and published, and gunicorn must exit 0 within its grace.
Open event streams never end by themselves, so on SIGTERM the ingress ends them (each client then
resumes elsewhere with ``Last-Event-ID``) instead of holding its exit until the grace runs out.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any

import pytest
import requests

from emulators.localrun import ROOT
from emulators.process import free_port, stop_group, wait_until_answers
from tests.support import sse_messages
from tests.support.chaos import HEADERS, ChaosStack, Proc, embed

pytestmark = [
    *(pytest.mark.chaos, pytest.mark.integration, pytest.mark.slow),
    pytest.mark.timeout(120),
]


def spawn_ingress(stack: ChaosStack, name: str) -> Proc:
    """A gunicorn ingress of this test's own (the module's is left alone), answering /health."""
    port = free_port()
    argv = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "ingress" / "gunicorn.conf.py")]
    ingress = stack.spawn(name, argv, stack.env(HOST="127.0.0.1", PORT=str(port)), port)
    try:
        wait_until_answers(ingress.url + "/health", ingress.process, 60, "ingress")
    except BaseException:
        stop_group(ingress.process, 10)
        raise
    return ingress


def test_sigterm_lets_a_request_in_flight_finish(clean: ChaosStack) -> None:
    stack = clean
    ingress = spawn_ingress(stack, "ingress-2")
    try:
        answer: dict[str, Any] = {}

        def submit() -> None:
            response = requests.post(
                ingress.url + "/v1/jobs", json=embed("in flight"), headers=HEADERS, timeout=30
            )
            answer["status"] = response.status_code
            answer["body"] = response.json()

        firestore_group = stack.firestore_emulator.process.pid
        os.killpg(firestore_group, signal.SIGSTOP)
        try:
            client = threading.Thread(target=submit)
            client.start()
            time.sleep(1.0)  # the request is now waiting on Firestore
            ingress.process.send_signal(signal.SIGTERM)
            time.sleep(1.0)
        finally:
            os.killpg(firestore_group, signal.SIGCONT)
        client.join(timeout=30)
        assert answer.get("status") == 202, answer
        assert ingress.process.wait(timeout=30) == 0
        assert stack.job(answer["body"]["id"])["status"] == "queued"
    finally:
        stop_group(ingress.process, 30)


GRACEFUL_TIMEOUT_S = 20
"""ingress/gunicorn.conf.py's graceful_timeout: how long gunicorn would hold a stream open."""


def test_sigterm_ends_open_event_streams_and_exits_well_within_the_grace(
    clean: ChaosStack,
) -> None:
    ingress = spawn_ingress(clean, "ingress-3")
    try:
        # No worker runs in this module: the job stays queued and its stream stays open.
        job = requests.post(
            ingress.url + "/v1/jobs", json=embed("streamed"), headers=HEADERS, timeout=30
        ).json()
        streams = [
            requests.get(
                f"{ingress.url}/v1/jobs/{job['id']}/events",
                headers=HEADERS,
                stream=True,
                timeout=(5, 60),
            )
            for _ in range(3)
        ]
        readers = [
            sse_messages(s.iter_lines(chunk_size=None, decode_unicode=True)) for s in streams
        ]
        assert [next(r)["event"] for r in readers] == ["queued"] * 3

        started = time.monotonic()
        ingress.process.send_signal(signal.SIGTERM)
        for reader in readers:
            assert [m for m in reader if "comment" not in m] == []  # ended, no further event
        ended_s = time.monotonic() - started
        assert ingress.process.wait(timeout=30) == 0
        assert ended_s < GRACEFUL_TIMEOUT_S / 2, f"streams held {ended_s:.1f}s after SIGTERM"
    finally:
        stop_group(ingress.process, 30)
