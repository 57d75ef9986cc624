"""The chaos stack: a private pair of emulators and every long-running part, as processes.

Each chaos module gets its own emulators (a pause, kill or restart there disturbs nothing else),
provisioned as production is (dead-letter policy, push subscription to the dead-letter function).
Workers differ from production in two settings, set by ``ChaosStack.start_worker``
(tests/support/chaos.py): **the retry backoff starts at 1 s instead of 10 s**
(``WORKER_RETRY_BACKOFF_S``), so a poison job's five deliveries take seconds, not minutes; and
fault injection is on, so tests can submit poison and long jobs. Workers form an ``embed`` pool
(``WORKER_TASKS=embed``), the only task the chaos tests submit: they start in half the time of a
worker with every model. And they lease 8 messages at a time, not 64 (``WORKER_MAX_MESSAGES=8``;
batches of up to 8 still form): **an emulator limit** — it keeps feeding a stream after its
worker stopped, up to that stream's flow-control limit, and those messages come back only as the
stream's ack deadlines lapse (10-30 s). With 64, every worker restart swallowed the next few jobs
for half a minute; production Pub/Sub does not do this. The ingress (gunicorn), the dead-letter
function (functions-framework) and workers run as real processes against real models; tests
start, kill and restart workers through ``ChaosStack``.

Figures the tests measure (jobs, kills, redeliveries, time to drain) are printed at the end of
the run under "chaos figures".

The stack's parts (``ChaosStack``, ``Proc``, ``embed``, ``drained``) are in tests/support/chaos.py.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from emulators.localrun import ROOT, deadletter_command
from emulators.process import free_port, running_emulators, stop_group, wait_until_answers
from emulators.provision import Resources, provision
from emulators.reset import reset_firestore, reset_pubsub
from tests.support.chaos import FIGURES, ChaosStack, dump_logs


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section("chaos figures")
    for name, figures in FIGURES.items():
        shown = ", ".join(f"{key}={value}" for key, value in figures.items())
        terminalreporter.write_line(f"{name}: {shown}")


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Iterator[ChaosStack]:
    """A fresh chaos stack per module: emulators, dead-letter function, ingress; no workers."""
    project = "omni-chaos"
    with (
        running_emulators(project) as (pubsub, fs),
        tempfile.TemporaryDirectory(prefix="omni-chaos-") as log_dir,
    ):
        stack = ChaosStack(project, pubsub, fs, Path(log_dir))
        try:
            port = free_port()
            stack.deadletter = stack.spawn(
                "deadletter", deadletter_command("127.0.0.1", port), stack.env(), port
            )
            wait_until_answers(
                stack.deadletter.url + "/", stack.deadletter.process, 60, "deadletter", status=405
            )
            stack.resources = Resources(
                project=project, dead_letter_endpoint=stack.deadletter.url + "/"
            )
            provision(stack.resources, emulator_host=pubsub.address)
            port = free_port()
            argv = [
                sys.executable,
                *("-m", "gunicorn", "-c", str(ROOT / "ingress" / "gunicorn.conf.py")),
            ]
            env = stack.env(HOST="127.0.0.1", PORT=str(port), PUBLISH_TIMEOUT_S="3")
            stack.ingress = stack.spawn("ingress", argv, env, port)
            wait_until_answers(stack.ingress.url + "/health", stack.ingress.process, 60, "ingress")
            yield stack
        finally:
            stack.stop_workers()
            for proc in (stack.ingress, stack.deadletter):
                if proc is not None:
                    stop_group(proc.process, 30)
            if request.session.testsfailed:
                dump_logs(Path(log_dir))
                if keep := os.environ.get("OMNI_KEEP_LOGS"):
                    shutil.copytree(log_dir, Path(keep) / Path(log_dir).name)


@pytest.fixture
def clean(stack: ChaosStack) -> ChaosStack:
    """No documents, no messages and no workers at the start of the test.

    Pub/Sub is reset and provisioned again, not just left to drain: **an emulator limit** keeps
    the earlier test's stopped workers' streams alive in the emulator, which goes on sending them a
    share of the messages, and a message that lands on such a dead stream comes back only after the
    stream's ack deadline (10 s) — possibly to a dead stream again. Five such rounds and a fresh
    job of the next test is dead-lettered without ever reaching its live worker (seen in CI, once
    in each of two modules). Dropping the subscriptions ends those streams; production Pub/Sub
    closes a stream whose client went away."""
    stack.stop_workers()
    assert stack.resources is not None
    reset_pubsub(stack.pubsub.address)
    provision(stack.resources, emulator_host=stack.pubsub.address)
    reset_firestore(stack.firestore_emulator.address, stack.project)
    return stack
