"""Acceptance 3: the Pub/Sub emulator stopped for 10 s under a steady submit loop.

Every request answered 202 must end ``succeeded``; every other one must have been answered 503 with
``Retry-After`` (the ingress waits ``PUBLISH_TIMEOUT_S``, 3 s here, for a publish). No job may stay
``queued``: a job whose publish failed ends ``failed`` / ``publish_failed`` (or runs, if the
publish got through after all — the client was told 503 and will submit again; nothing is lost).
The outage is a SIGSTOP of the emulator's process group: the port stays open and nothing answers.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter

import pytest
import requests

from tests.support.chaos import FIGURES, HEADERS, ChaosStack, drained, embed

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.timeout(300),
]

OUTAGE_S = 10.0
LOOP_S = 25.0
CLIENTS = 3


def test_pubsub_outage_answers_503_and_loses_no_accepted_job(clean: ChaosStack) -> None:
    stack = clean
    stack.start_worker()
    assert stack.ingress is not None
    url = f"{stack.ingress.url}/v1/jobs"
    accepted: list[str] = []
    refused: list[int] = []
    unexpected: list[str] = []
    started = time.monotonic()

    def client(n: int) -> None:
        session = requests.Session()
        i = 0
        while time.monotonic() - started < LOOP_S:
            i += 1
            response = session.post(url, json=embed(f"client {n} job {i}"), headers=HEADERS)
            if response.status_code == 202:
                accepted.append(response.json()["id"])
            elif response.status_code == 503 and int(response.headers["Retry-After"]) > 0:
                refused.append(i)
                time.sleep(0.2)
            else:
                unexpected.append(f"{response.status_code} {response.text[:200]}")

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    time.sleep(5)
    os.killpg(stack.pubsub.process.pid, signal.SIGSTOP)
    try:
        time.sleep(OUTAGE_S)
    finally:
        os.killpg(stack.pubsub.process.pid, signal.SIGCONT)
    for thread in threads:
        thread.join()

    assert unexpected == []
    assert refused, "the outage produced no 503: the test did not test anything"
    total = len(accepted) + len(refused)
    drain_s = drained(stack, total, started, timeout_s=180)
    jobs = stack.jobs()
    assert all(jobs[job_id]["status"] == "succeeded" for job_id in accepted)
    assert all(doc.get("terminal_writes") == 1 for doc in jobs.values())
    others = Counter(
        (doc["status"], (doc.get("error") or {}).get("code"))
        for job_id, doc in jobs.items()
        if job_id not in set(accepted)
    )
    assert set(others) <= {("failed", "publish_failed"), ("succeeded", None)}, others
    FIGURES["pubsub outage"] = {
        "outage_s": OUTAGE_S,
        "accepted_202": len(accepted),
        "refused_503": len(refused),
        "refused_but_ran": others[("succeeded", None)],
        "time_to_drain_s": drain_s,
    }
