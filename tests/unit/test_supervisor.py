"""emulators/supervisor.py with real child processes (small Python scripts, no network)."""

from __future__ import annotations

import io
import json
import signal
import sys
import time

from emulators.supervisor import Supervisor, as_json_line
from tests.support import alive, descendants, wait_for

# Counts the SIGTERMs it gets, prints each, and leaves after the first one, 0.3 s later.
TRAPPING_CHILD = """
import signal, sys, time
count = 0
def on_term(signum, frame):
    global count
    count += 1
    print(f'{{"severity": "INFO", "message": "term {count}"}}', flush=True)
signal.signal(signal.SIGTERM, on_term)
print("plain text line", flush=True)
while count == 0:
    time.sleep(0.05)
time.sleep(0.3)
"""


def test_non_json_lines_are_wrapped_and_json_lines_kept() -> None:
    assert as_json_line("w", '{"severity": "INFO", "message": "hi"}\n') == (
        'w | {"severity": "INFO", "message": "hi"}'
    )
    wrapped = as_json_line("pubsub", "[pubsub] Server started\n")
    name, _, body = wrapped.partition(" | ")
    assert name == "pubsub" and json.loads(body)["message"] == "[pubsub] Server started"
    assert json.loads(as_json_line("x", "[1, 2]").partition(" | ")[2])["message"] == "[1, 2]"


def test_signals_are_forwarded_once_and_children_stop_by_tier() -> None:
    out = io.StringIO()
    supervisor = Supervisor(out)
    low = supervisor.spawn("low", [sys.executable, "-c", TRAPPING_CHILD], tier=0)
    high = supervisor.spawn("high", [sys.executable, "-c", TRAPPING_CHILD], tier=1)
    wait_for(lambda: out.getvalue().count("plain text line") == 2, 10, "both children to start")

    # make forwarding the group's signal: two requests within the window are one.
    supervisor.request_stop(signal.SIGTERM)
    supervisor.request_stop(signal.SIGTERM)
    assert supervisor.wait() == f"signal {signal.SIGTERM}"
    supervisor.stop_all(grace_s=10)

    lines = [line.partition(" | ") for line in out.getvalue().splitlines()]
    assert all(json.loads(body) for _, _, body in lines), "every relayed line is a JSON object"
    terms = [(name, json.loads(body)["message"]) for name, _, body in lines if "term" in body]
    assert terms == [("high", "term 1"), ("low", "term 1")], "once each, higher tier first"
    assert not alive(low.process.pid) and not alive(high.process.pid)


def test_an_essential_child_exiting_stops_the_rest() -> None:
    supervisor = Supervisor(io.StringIO())
    survivor = supervisor.spawn("survivor", [sys.executable, "-c", TRAPPING_CHILD], tier=0)
    supervisor.spawn("quitter", [sys.executable, "-c", "raise SystemExit(3)"], tier=1)
    started = time.monotonic()
    assert supervisor.wait() == "quitter exited with 3"
    assert time.monotonic() - started < 10
    supervisor.stop_all(grace_s=10)
    assert not alive(survivor.process.pid)


def test_a_child_ignoring_sigterm_is_killed_with_its_group() -> None:
    stubborn = (
        "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        "subprocess.Popen([sys.executable, '-c', 'import signal, time;"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)']); time.sleep(60)"
    )
    supervisor = Supervisor(io.StringIO())
    child = supervisor.spawn("stubborn", [sys.executable, "-c", stubborn], tier=0)
    grandchildren = wait_for(lambda: descendants(child.process.pid), 10, "the grandchild")
    supervisor.stop_all(grace_s=1)
    assert not alive(child.process.pid)
    assert not [pid for pid in grandchildren if alive(pid)]
