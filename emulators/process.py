"""Start and stop the official Pub/Sub and Firestore emulators.

``gcloud ... start`` is a Python wrapper that starts a Java process; killing the wrapper alone
leaves Java running (and holding the port). Each emulator therefore starts in a session of its
own, and ``stop()`` signals the whole process group, waits, and kills what is left.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0
"""Seconds to wait for an emulator to answer; both usually answer in 1-2 s, a cold JVM in ~10 s."""
STOP_GRACE_S = 10.0
"""Seconds between SIGTERM to the group and SIGKILL."""
_POLL_S = 0.1


PORT_RANGE = (20000, 32000)
"""Where ``free_port`` draws from: below Linux's ephemeral range (32768-60999 by default).

A port the kernel hands out for ``bind(0)`` comes from the ephemeral range, which outgoing
connections also draw from: between our pick and the emulator's bind, a client socket (the
ingress's Listen streams, a bench's thousand SSE clients) could take it, and a JVM emulator that
cannot bind exits 0. Ports below that range are only ever taken by explicit binds.
"""
START_ATTEMPTS = 3
"""Starts of an emulator on a port we chose, each on a fresh port, before giving up."""


_handed_out: set[int] = set()
"""Ports ``free_port`` returned in this process: a caller picks several before binding any (an
ingress, two emulators and a worker's), so a port not bound yet must not be picked again."""
_handed_out_lock = threading.Lock()


def free_port() -> int:
    """A loopback TCP port below the ephemeral range that nothing listens on right now and
    that this process has not been handed before."""
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(*PORT_RANGE)
        with _handed_out_lock:
            if port in _handed_out:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _handed_out.add(port)
        return port
    raise RuntimeError(f"no free loopback port in {PORT_RANGE}")


def listener_on(host: str, port: int) -> bool:
    """Whether a server could not bind ``host:port`` because something holds it: a listener,
    or a socket bound there without ``SO_REUSEADDR``.

    The probe binds with ``SO_REUSEADDR``, as every server ``make run`` starts does (gunicorn,
    the emulators' JVMs, Python's ``http.server``): on Linux that succeeds past the TIME_WAIT
    connections a server stopped a moment ago leaves behind, which a plain bind counts as the
    port being in use for a minute. Other errors (an address not on this machine) are raised.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def _answers(url: str, status: int = 200) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - loopback only
            return bool(response.status == status)
    except urllib.error.HTTPError as exc:
        return exc.code == status
    except (urllib.error.URLError, OSError):
        return False


def _gcloud() -> str:
    path = shutil.which("gcloud")
    if path is None:
        raise RuntimeError("gcloud is not on PATH; install the Google Cloud CLI and its emulators")
    return path


@dataclass
class Emulator:
    """One running emulator: its name, address and process group."""

    name: str
    host: str
    port: int
    process: subprocess.Popen[bytes]
    data_dir: str | None = None
    _stopped: bool = field(default=False, repr=False)

    @property
    def address(self) -> str:
        """``host:port``, the value of ``*_EMULATOR_HOST``."""
        return f"{self.host}:{self.port}"

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        try:
            wait_until_answers(f"http://{self.address}/", self.process, timeout_s, self.name)
        except (RuntimeError, TimeoutError):
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the emulator's whole process group; safe to call more than once."""
        if self._stopped:
            return
        self._stopped = True
        stop_group(self.process, STOP_GRACE_S)
        if self.data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        logger.info("stopped %s emulator on %s", self.name, self.address)


def wait_until_answers(
    url: str,
    process: subprocess.Popen[bytes],
    timeout_s: float,
    name: str,
    cancelled: Callable[[], bool] = lambda: False,
    status: int = 200,
) -> None:
    """Poll ``url`` until it answers ``status``; fail early if ``process`` exits or
    ``cancelled()``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cancelled():
            raise InterruptedError(f"stopped while waiting for {name}")
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode} before answering {url}")
        if _answers(url, status):
            return
        time.sleep(_POLL_S)
    raise TimeoutError(f"{name} did not answer {url} within {timeout_s}s")


def stop_group(process: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM ``process``'s group, wait up to ``grace_s``, then SIGKILL what is left of it."""
    signal_group(process, signal.SIGTERM)
    reap_group(process, grace_s)


def signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    """Send ``signum`` to the group that ``process`` leads (started with start_new_session)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)


def reap_group(process: subprocess.Popen[bytes], grace_s: float) -> None:
    """Wait up to ``grace_s`` for the whole group to exit, then SIGKILL what is left.

    The group outlives its leader (the JVM keeps the group id after gcloud exits), so the group is
    watched, not just the leader.
    """
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if process.poll() is not None and not _group_alive(process.pid):
            return
        time.sleep(_POLL_S)
    signal_group(process, signal.SIGKILL)
    process.wait(timeout=grace_s)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pubsub_command(host: str, port: int, project: str, data_dir: str) -> list[str]:
    """The command that starts the Pub/Sub emulator.

    Every start gets its own ``--data-dir``: without one, gcloud writes the emulator's address
    into the user's gcloud configuration, and two copies side by side would fight over it.
    """
    return [
        _gcloud(),
        "beta",
        "emulators",
        "pubsub",
        "start",
        f"--host-port={host}:{port}",
        f"--project={project}",
        f"--data-dir={data_dir}",
    ]


def firestore_command(host: str, port: int) -> list[str]:
    """The command that starts the Firestore emulator in Native mode."""
    return [_gcloud(), "emulators", "firestore", "start", f"--host-port={host}:{port}"]


def _start(
    name: str, argv: list[str], host: str, port: int, data_dir: str | None, output: IO[bytes] | int
) -> Emulator:
    process = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    emulator = Emulator(name=name, host=host, port=port, process=process, data_dir=data_dir)
    logger.info("starting %s emulator on %s (pid %s)", name, emulator.address, process.pid)
    return emulator


def start_pubsub(
    port: int, project: str, host: str = "127.0.0.1", output: IO[bytes] | int = subprocess.DEVNULL
) -> Emulator:
    """Start the Pub/Sub emulator (returns at once; call ``wait_ready``)."""
    data_dir = tempfile.mkdtemp(prefix="omni-pubsub-")
    return _start(
        "pubsub", pubsub_command(host, port, project, data_dir), host, port, data_dir, output
    )


def start_firestore(
    port: int, host: str = "127.0.0.1", output: IO[bytes] | int = subprocess.DEVNULL
) -> Emulator:
    """Start the Firestore emulator (returns at once; call ``wait_ready``)."""
    return _start("firestore", firestore_command(host, port), host, port, None, output)


@contextlib.contextmanager
def running_emulators(
    project: str,
    pubsub_port: int | None = None,
    firestore_port: int | None = None,
    output: IO[bytes] | int = subprocess.DEVNULL,
) -> Iterator[tuple[Emulator, Emulator]]:
    """Both emulators, started side by side and ready; stopped on every way out of the block."""
    started: list[Emulator] = []
    try:
        started.append(start_pubsub(pubsub_port or free_port(), project, output=output))
        started.append(start_firestore(firestore_port or free_port(), output=output))
        pubsub = _ready(
            started, 0, pubsub_port is None, lambda port: start_pubsub(port, project, output=output)
        )
        firestore = _ready(
            started, 1, firestore_port is None, lambda port: start_firestore(port, output=output)
        )
        yield pubsub, firestore
    finally:
        for emulator in reversed(started):
            emulator.stop()


def _ready(
    started: list[Emulator], index: int, port_is_ours: bool, restart: Callable[[int], Emulator]
) -> Emulator:
    """Wait for ``started[index]``; if it exits early on a port we chose, start it on another.

    An emulator that exits before answering has almost always lost its port to another process
    (see ``PORT_RANGE``); a port the caller named is theirs to fix, so that fails at once.
    """
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            started[index].wait_ready()
            return started[index]
        except RuntimeError:
            if not port_is_ours or attempt == START_ATTEMPTS:
                raise
            logger.warning(
                "%s emulator exited before answering on %s; starting it on another port",
                started[index].name,
                started[index].address,
            )
            started[index] = restart(free_port())
    raise AssertionError("unreachable")
