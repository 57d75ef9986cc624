"""A small process supervisor for ``make run``.

- Every child runs in its own session (process group), so a signal to ``make run``'s group reaches
  only the supervisor, which forwards it to each child's group exactly once.
- Each child's output is relayed line by line, prefixed with its name; a line that is not a JSON
  object (the emulators' Java logs, a traceback) is wrapped into one, so the whole stream stays
  one JSON object per line.
- When an essential child exits, or a signal arrives, everything is stopped in reverse start order
  (ingress first, emulators last, so workers can still write what they finish).
"""

from __future__ import annotations

import json
import logging
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
_POLL_S = 0.2


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    essential: bool
    tier: int
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


class Supervisor:
    def __init__(self, output: IO[str] | None = None):
        self._output = output or sys.stdout
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
        essential: bool = True,
    ) -> Child:
        """Start ``argv``; ``tier`` orders the stop: higher tiers stop first, a tier at a time."""
        process = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        child = Child(name=name, process=process, essential=essential, tier=tier)
        child.relay = threading.Thread(
            target=self._relay, args=(child,), name=f"relay-{name}", daemon=True
        )
        child.relay.start()
        self._children.append(child)
        self.log(f"started {name}", pid=process.pid)
        return child

    def _relay(self, child: Child) -> None:
        stdout = child.process.stdout
        assert stdout is not None
        with stdout:
            for raw in iter(stdout.readline, b""):
                self.emit(child.name, raw.decode("utf-8", errors="replace"))

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
        """Ask everything to stop if an essential child has exited."""
        for child in self._children:
            code = child.process.poll()
            if code is not None and child.essential and not self._stop.is_set():
                self.stop_reason = f"{child.name} exited with {code}"
                self._stop.set()

    def wait(self) -> str:
        """Block until a signal arrives or an essential child exits; returns why."""
        while not self._stop.wait(_POLL_S):
            self.check_children()
        return self.stop_reason

    def stop_all(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop every child, highest tier first; a tier's groups are signalled together, then
        each is killed if it outlives ``grace_s``."""
        for tier in sorted({c.tier for c in self._children}, reverse=True):
            members = [c for c in self._children if c.tier == tier]
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
