"""A small process supervisor for ``make run``.

- Every child runs in its own session (process group), so a signal to ``make run``'s group reaches
  only the supervisor, which forwards it to each child's group exactly once.
- Each child's output is relayed line by line, prefixed with its name; a line that is not a JSON
  object (the emulators' Java logs, a traceback) is wrapped into one, so the whole stream stays
  one JSON object per line.
- A child started with ``restart=True`` that exits is restarted, as Kubernetes restarts a container
  (``restartPolicy: Always``): what is left of its process group is killed first (as a container's
  processes die with its main one), then it starts again, with the same command and environment,
  after an exponential back-off (``Backoff``). Each exit writes one JSON line naming the child, its
  exit status and the delay. It never gives up: a child that keeps dying at once (a configuration
  error) is restarted at most every ``RESTART_MAX_S``, and its lines say "crash loop" at ERROR.
- When a child without ``restart`` exits (an emulator: a restart would lose all its state), or a
  signal arrives, nothing is restarted any more and everything is stopped in reverse start order
  (ingress first, emulators last, so workers can still write what they finish).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from types import FrameType
from typing import IO

from emulators.process import reap_group, signal_group

logger = logging.getLogger(__name__)

STOP_GRACE_S = 30.0
"""Seconds each child gets after SIGTERM before its group is killed (the worker needs ~25)."""
SAME_REQUEST_WINDOW_S = 2.0
"""A second signal this soon after the first repeats it (e.g. make forwarding the group's)."""
RESTART_INITIAL_S = 1.0
"""Seconds before the first restart of a child that exited; each quick exit in a row doubles it."""
RESTART_MAX_S = 30.0
"""The longest wait before a restart, however often the child has exited."""
RESTART_RESET_AFTER_S = 60.0
"""Seconds a child must stay up for its next exit to count as the first again (back-off reset)."""
CRASH_LOOP_AFTER = 3
"""Quick exits in a row (each within ``RESTART_RESET_AFTER_S`` of its start) that make a crash
loop: from then on the restart lines say so, at ERROR."""
_POLL_S = 0.2
_RELAY_DRAIN_S = 1.0
"""How long an exit's restart line waits for the dead child's last lines (its traceback)."""


@dataclass(frozen=True)
class Backoff:
    """When to restart a child that exited: ``initial_s`` doubling up to ``max_s``, back to
    ``initial_s`` once a child has stayed up ``reset_after_s``."""

    initial_s: float = RESTART_INITIAL_S
    max_s: float = RESTART_MAX_S
    reset_after_s: float = RESTART_RESET_AFTER_S

    def after_exit(self, quick_exits: int, uptime_s: float) -> tuple[float, int]:
        """The delay before the next start, and the new count of quick exits in a row, for a
        child that ran ``uptime_s`` after ``quick_exits`` quick exits in a row."""
        if uptime_s >= self.reset_after_s:
            quick_exits = 0
        delay = min(self.max_s, self.initial_s * 2.0**quick_exits)
        return delay, quick_exits + 1


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str] | None
    tier: int
    restart: bool
    process: subprocess.Popen[bytes]
    started_at: float
    restarts: int = 0
    """How many times it was started again."""
    quick_exits: int = 0
    """Exits in a row, each within the back-off's ``reset_after_s`` of its start."""
    restart_at: float | None = None
    """Set while it is down, waiting for its back-off: when to start it again."""
    relay: threading.Thread | None = field(default=None, repr=False)


def as_json_line(name: str, raw: str) -> str:
    """``raw`` as a JSON object line, prefixed with the child's name."""
    line = raw.rstrip("\r\n")
    try:
        parsed = json.loads(line)
        if isinstance(parsed, dict):
            return f"{name} | {line}"
    except ValueError:
        pass
    wrapped = {"severity": "INFO", "message": line, "logger": name}
    return f"{name} | {json.dumps(wrapped, ensure_ascii=False)}"


def describe_exit(code: int) -> str:
    """``exited with 3``, or ``exited with -9 (SIGKILL)``."""
    if code < 0:
        try:
            return f"exited with {code} ({signal.Signals(-code).name})"
        except ValueError:
            pass
    return f"exited with {code}"


def _exit_code(process: subprocess.Popen[bytes]) -> int | None:
    """The child's exit status if it has exited, without reaping it: until it is reaped, its
    pid, and so its process group's id, cannot be taken by another process, so signalling the
    group can only reach processes this supervisor started."""
    if process.returncode is not None:
        return process.returncode
    try:
        info = os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # reaped meanwhile (Popen.poll from another thread)
        return process.poll()
    if info is None:
        return None
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


class Supervisor:
    def __init__(self, output: IO[str] | None = None, backoff: Backoff | None = None):
        self._output = output or sys.stdout
        self._backoff = backoff or Backoff()
        # Guards writes to _output: relay threads interleave whole lines, never parts of them.
        self._write_lock = threading.Lock()
        self._children: list[Child] = []
        self._stop = threading.Event()
        self._first_signal_at: float | None = None
        self.stop_reason = ""

    def emit(self, name: str, line: str) -> None:
        with self._write_lock:
            self._output.write(as_json_line(name, line) + "\n")
            self._output.flush()

    def log(self, message: str, severity: str = "INFO", **fields: object) -> None:
        """A line from the supervisor itself."""
        entry = {"severity": severity, "message": message, "logger": "supervisor", **fields}
        self.emit("run", json.dumps(entry, ensure_ascii=False))

    def spawn(
        self,
        name: str,
        argv: list[str],
        *,
        tier: int,
        env: dict[str, str] | None = None,
        restart: bool = False,
    ) -> Child:
        """Start ``argv``; ``tier`` orders the stop: higher tiers stop first, a tier at a time.

        With ``restart``, an exit starts it again after a back-off; without, an exit stops all."""
        child = Child(
            name=name,
            argv=argv,
            env=env,
            tier=tier,
            restart=restart,
            process=self._popen(argv, env),
            started_at=time.monotonic(),
        )
        self._relay_output(child)
        self._children.append(child)
        self.log(f"started {name}", pid=child.process.pid)
        return child

    @staticmethod
    def _popen(argv: list[str], env: dict[str, str] | None) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _relay_output(self, child: Child) -> None:
        # One thread per process, not per child: a restarted child's new pipe gets a new thread.
        child.relay = threading.Thread(
            target=self._relay,
            args=(child.name, child.process),
            name=f"relay-{child.name}",
            daemon=True,
        )
        child.relay.start()

    def _relay(self, name: str, process: subprocess.Popen[bytes]) -> None:
        stdout = process.stdout
        assert stdout is not None
        with stdout:
            for raw in iter(stdout.readline, b""):
                self.emit(name, raw.decode("utf-8", errors="replace"))

    # -- signals -------------------------------------------------------------------------------
    def request_stop(self, signum: int, _frame: FrameType | None = None) -> None:
        now = time.monotonic()
        if self._first_signal_at is None:
            self._first_signal_at = now
            self.stop_reason = f"signal {signum}"
            self._stop.set()
        elif now - self._first_signal_at > SAME_REQUEST_WINDOW_S:
            # A deliberate second Ctrl-C: stop waiting for graceful exits.
            for child in self._children:
                # Never a reaped child: its pid, and so its group id, may belong to another now.
                # (A child waiting for its restart was reaped, its group already killed.)
                if child.process.returncode is None:
                    signal_group(child.process, signal.SIGKILL)

    def install_signal_handlers(self) -> None:
        # SIGHUP: the terminal that ran `make run` was closed; the children, in sessions of
        # their own, would not hear it.
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self.request_stop)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- running -------------------------------------------------------------------------------
    def check_children(self) -> None:
        """Restart children whose back-off is over; handle children that have exited: schedule
        a restart, or ask everything to stop. Nothing is restarted once stopping: a child that
        exits because the stack is stopping stays down."""
        now = time.monotonic()
        for child in self._children:
            if self._stop.is_set():
                return
            if child.restart_at is not None:
                if now >= child.restart_at:
                    self._start_again(child)
                continue
            code = _exit_code(child.process)
            if code is None:
                continue
            if not child.restart:
                self.stop_reason = f"{child.name} {describe_exit(code)}"
                self._stop.set()
                return
            self._schedule_restart(child, code, now)

    def _schedule_restart(self, child: Child, code: int, now: float) -> None:
        # As when a container's main process dies: what it left in its group dies with it (a
        # SIGKILLed gunicorn master's workers would otherwise keep its port). The leader is not
        # reaped yet, so the group id is still ours.
        signal_group(child.process, signal.SIGKILL)
        child.process.wait()
        if child.relay is not None:
            child.relay.join(timeout=_RELAY_DRAIN_S)
        uptime_s = now - child.started_at
        delay_s, child.quick_exits = self._backoff.after_exit(child.quick_exits, uptime_s)
        child.restart_at = now + delay_s
        crash_loop = child.quick_exits >= CRASH_LOOP_AFTER
        message = f"{child.name} {describe_exit(code)} after {uptime_s:.1f}s; "
        if crash_loop:
            message += f"crash loop ({child.quick_exits} quick exits in a row), "
        message += f"restarting in {delay_s:g}s"
        self.log(
            message,
            severity="ERROR" if crash_loop else "WARNING",
            child=child.name,
            exit_code=code,
            uptime_s=round(uptime_s, 1),
            restart_in_s=delay_s,
            restarts=child.restarts,
            quick_exits=child.quick_exits,
            crash_loop=crash_loop,
        )

    def _start_again(self, child: Child) -> None:
        child.process = self._popen(child.argv, child.env)
        child.started_at = time.monotonic()
        child.restart_at = None
        child.restarts += 1
        self._relay_output(child)
        self.log(
            f"restarted {child.name}",
            child=child.name,
            pid=child.process.pid,
            restarts=child.restarts,
        )

    def wait(self) -> str:
        """Block until a signal arrives or a child without ``restart`` exits; returns why.
        Meanwhile, children with ``restart`` that exit are started again."""
        while not self._stop.wait(_POLL_S):
            self.check_children()
        return self.stop_reason

    def stop_all(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop every child, highest tier first; a tier's groups are signalled together, then
        each is killed if it outlives ``grace_s``. A child waiting for its restart is already
        gone, with its group."""
        running = [c for c in self._children if c.restart_at is None]
        for child in self._children:
            if child.restart_at is not None:
                self.log(
                    f"stopped {child.name} (it was waiting to restart)",
                    exit_code=child.process.returncode,
                )
        for tier in sorted({c.tier for c in running}, reverse=True):
            members = [c for c in running if c.tier == tier]
            for child in members:
                signal_group(child.process, signal.SIGTERM)
            for child in members:
                try:
                    reap_group(child.process, grace_s)
                except (subprocess.TimeoutExpired, OSError) as exc:
                    # Even SIGKILL did not end it (stuck in the kernel): say so, stop the rest.
                    self.log(f"could not stop {child.name}: {exc}", severity="ERROR")
                    continue
                if child.relay is not None:
                    child.relay.join(timeout=2)
                self.log(f"stopped {child.name}", exit_code=child.process.returncode)
        self._children.clear()
