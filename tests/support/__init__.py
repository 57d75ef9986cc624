"""Helpers the tests share: process trees, waiting, JSON log files, server-sent events, the
environment and ports of a ``make run``.

Everything a test module imports lives in this package; conftest.py files hold fixtures and hooks
only, and no test module imports another. The rest of the package, by what it does:

- ``stacks``: the session's emulators, a worker or ingress started on them, tenants and keys,
  topics and subscriptions of a test's own (integration tests).
- ``batchdocs``: batches and chunks written straight to Firestore and read back.
- ``chaos``: the chaos stack's processes, job bodies and the wait for a drain.
- ``fakes``, ``pipeline_fakes``: a Pub/Sub message, counter writes, a job store, models and
  claims, for unit tests of the worker and the counters.
- ``dockerfile``: a Dockerfile parser, ``.dockerignore`` matching and the image checker.
- ``manifests``: the deployment's manifests rendered offline (``kubectl kustomize``).
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from emulators.process import PORT_RANGE, Emulator, free_port

T = TypeVar("T")


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (children, grandchildren, ...), from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: parse after the last ')'.
        fields = stat[stat.rindex(")") + 2 :].split()
        parents[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        for child, parent in parents.items():
            if parent == current and child not in found:
                found.add(child)
                frontier.append(child)
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


def wait_for(
    check: Callable[[], T | None], timeout_s: float, what: str, interval_s: float = 0.1
) -> T:
    """Poll ``check`` until it returns something truthy; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


def json_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a log file parsed as JSON; fails on a line that is not a JSON object."""
    entries = []
    for line in path.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            assert isinstance(entry, dict), line
            entries.append(entry)
    return entries


def python_env(**extra: str) -> dict[str, str]:
    """The environment for a child Python process of the project."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", **extra}


def sse_messages(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Server-sent events framed by ``text/event-stream`` rules, from decoded lines.

    Each message is ``{"id", "event", "data"}`` (``data`` parsed as JSON), or ``{"comment": ...}``
    for a comment line such as ``: ping``."""
    message: dict[str, Any] = {}
    for line in lines:
        if line == "":
            if message:
                if "data" in message:
                    message["data"] = json.loads(message["data"])
                yield message
            message = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            field, _, value = line.partition(":")
            message[field] = value[1:] if value.startswith(" ") else value


@contextmanager
def paused(emulator: Emulator) -> Iterator[None]:
    """The emulator's whole process group stopped (SIGSTOP) for the block: an outage that keeps
    its state, resumed (SIGCONT) on every exit path."""
    os.killpg(emulator.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(emulator.process.pid, signal.SIGCONT)


MAKE_RUN_UNSET = (
    "API_KEYS",
    "API_KEYS_FILE",
    "PUBSUB_EMULATOR_HOST",
    "FIRESTORE_EMULATOR_HOST",
    "GOOGLE_CLOUD_PROJECT",
    "MAKEFLAGS",
)
"""What a test's own environment must not pass to the ``make run`` it starts: ``make run`` picks
its own keys, emulators and project, and this pytest's make flags are not its own."""


def make_run_env(**extra: str) -> dict[str, str]:
    """The environment for a ``make run`` started by a test, ``extra`` added."""
    env = {k: v for k, v in os.environ.items() if k not in MAKE_RUN_UNSET}
    env.update(extra)
    return env


def make_run_ports() -> dict[str, int]:
    """Ports for one ``make run``: the ingress's, both emulators', the dead-letter function's,
    and ``WORKER_HTTP_PORT``, a port p such that p and p + 1 (worker i serves on p + i) can both
    be bound now; all distinct.

    All below the kernel's ephemeral range (32768 and up here): a port from that range can be
    taken as the local end of any outgoing connection between this check and the bind, which once
    made ``make run`` exit with "WORKER_HTTP_PORT+1 is in use"."""
    ports = {name: free_port() for name in ("PORT", "PUBSUB_PORT", "FIRESTORE_PORT")}
    ports["DEADLETTER_PORT"] = free_port()
    for _ in range(200):
        port = random.randrange(*PORT_RANGE)
        pair = (port, port + 1)
        if all(p not in ports.values() and _bindable(p) for p in pair):
            ports["WORKER_HTTP_PORT"] = port
            return ports
    raise AssertionError("no two adjacent free ports")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
