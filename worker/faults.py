"""Fault injection for chaos tests, off unless the worker runs with ``WORKER_FAULT_INJECTION=1``.

With it on, a job whose ``metadata`` holds ``omni-fault`` misbehaves on purpose, after its claim and
before its model call, so the real pipeline around it (leases, retries, dead letters, cancel,
timeouts) can be tested with a real model and real emulators:

- ``transient``: every attempt raises ``TransientError`` (a poison job that never succeeds).
- ``sleep=SECONDS``: the attempt works for SECONDS, with a safe point every 50 ms (a long job).

Production manifests never set the variable; the worker logs a warning at start when it is set.
"""

from __future__ import annotations

from collections.abc import Mapping

from worker.attempts import StopToken
from worker.errors import PermanentError, TransientError

FAULT_KEY = "omni-fault"


def inject(metadata: Mapping[str, str], stop: StopToken) -> None:
    spec = metadata.get(FAULT_KEY)
    if spec is None:
        return
    if spec == "transient":
        raise TransientError("injected transient fault")
    if spec.startswith("sleep="):
        try:
            seconds = float(spec.removeprefix("sleep="))
        except ValueError:
            raise PermanentError("bad_fault", f"cannot parse {spec!r}") from None
        stop.sleep(seconds)
        return
    raise PermanentError("bad_fault", f"unknown fault {spec!r}")
