"""emulators/supervisor.py with real child processes (small Python scripts, no network), and
make run's port check (emulators/process.py ``listener_on``) against real sockets."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import sys
import time
from typing import Any

import pytest

from emulators.process import free_port, listener_on
from emulators.supervisor import Backoff, Supervisor, as_json_line
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
    for _, _, body in lines:
        assert isinstance(json.loads(body), dict), f"a relayed line is not a JSON object: {body}"
    terms = [(name, json.loads(body)["message"]) for name, _, body in lines if "term" in body]
    assert terms == [("high", "term 1"), ("low", "term 1")], "once each, higher tier first"
    assert not alive(low.process.pid) and not alive(high.process.pid)


def test_a_child_without_restart_exiting_stops_the_rest() -> None:
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
    # SIGKILL is sent to the whole group; a loaded machine may take a moment to end them all.
    wait_for(lambda: not [pid for pid in grandchildren if alive(pid)], 5, "the grandchild to die")


# Prints its pid and its RESTART_MARK, then lives until signalled; started in a group of its own
# with a grandchild, as gunicorn's master is.
FAMILY_CHILD = """
import os, subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print(f'{{"message": "up", "pid": {os.getpid()}, "grandchild": {grandchild.pid}, '
      f'"mark": "{os.environ["RESTART_MARK"]}"}}', flush=True)
time.sleep(120)
"""


def supervisor_lines(out: io.StringIO, name: str = "run") -> list[dict[str, Any]]:
    """The JSON bodies of ``name``'s lines so far."""
    lines = [line.partition(" | ") for line in out.getvalue().splitlines()]
    return [json.loads(body) for who, _, body in lines if who == name]


def tend_until(supervisor: Supervisor, check: Any, timeout_s: float, what: str) -> Any:
    """Run the supervisor's loop (as ``wait`` does) until ``check()`` is truthy."""

    def step() -> Any:
        supervisor.check_children()
        return check()

    return wait_for(step, timeout_s, what, interval_s=0.05)


def test_backoff_doubles_from_one_second_to_thirty_and_resets_after_a_good_run() -> None:
    backoff = Backoff()
    delays, quick = [], 0
    for _ in range(8):
        delay, quick = backoff.after_exit(quick, uptime_s=0.5)
        delays.append(delay)
    assert delays == [1, 2, 4, 8, 16, 30, 30, 30]
    assert quick == 8
    # Up long enough: the next exit is a first one again.
    assert backoff.after_exit(quick, uptime_s=backoff.reset_after_s) == (1, 1)
    assert backoff.after_exit(quick, uptime_s=backoff.reset_after_s - 1) == (30, 9)


def test_a_killed_child_is_restarted_with_its_group_killed_and_the_same_environment() -> None:
    out = io.StringIO()
    supervisor = Supervisor(out, Backoff(initial_s=0.2, max_s=1, reset_after_s=60))
    env = {**os.environ, "RESTART_MARK": "port-8091"}
    child = supervisor.spawn(
        "w", [sys.executable, "-c", FAMILY_CHILD], tier=1, env=env, restart=True
    )
    other = supervisor.spawn("other", [sys.executable, "-c", TRAPPING_CHILD], tier=1, restart=True)
    first = wait_for(lambda: supervisor_lines(out, "w"), 10, "the child to start")[0]
    try:
        os.kill(first["pid"], signal.SIGKILL)  # as the kernel's OOM killer would
        ups = tend_until(
            supervisor, lambda: supervisor_lines(out, "w")[1:], 10, "the child to be restarted"
        )
        assert ups[0]["mark"] == "port-8091" and ups[0]["pid"] == child.process.pid
        # Its group died with it, as a container's processes die with its main one.
        wait_for(lambda: not alive(first["grandchild"]), 5, "the old grandchild to die")
        (restart,) = [e for e in supervisor_lines(out) if "restarting" in e["message"]]
        assert restart["severity"] == "WARNING"
        assert restart["message"].startswith("w exited with -9 (SIGKILL) after ")
        assert (restart["child"], restart["exit_code"], restart["restart_in_s"]) == ("w", -9, 0.2)
        assert not restart["crash_loop"]
        assert [e["restarts"] for e in supervisor_lines(out) if e["message"] == "restarted w"] == [
            1
        ]
        assert other.process.poll() is None and not supervisor.stopping, "the rest stays up"
    finally:
        supervisor.stop_all(grace_s=5)
    assert not alive(child.process.pid) and not alive(ups[0]["grandchild"])


def test_a_child_that_dies_at_once_backs_off_says_crash_loop_and_is_never_given_up() -> None:
    out = io.StringIO()
    supervisor = Supervisor(out, Backoff(initial_s=0.05, max_s=0.4, reset_after_s=60))
    config_error = "import sys; print('configuration error: BAD', flush=True); sys.exit(3)"
    supervisor.spawn("bad", [sys.executable, "-c", config_error], tier=1, restart=True)

    def exits() -> list[dict[str, Any]]:
        return [e for e in supervisor_lines(out) if e.get("child") == "bad" and "exit_code" in e]

    try:
        tend_until(supervisor, lambda: len(exits()) >= 6, 30, "six exits")
    finally:
        supervisor.stop_all(grace_s=5)
    found = exits()[:6]
    assert [e["restart_in_s"] for e in found] == [0.05, 0.1, 0.2, 0.4, 0.4, 0.4]
    assert [e["crash_loop"] for e in found] == [False, False, True, True, True, True]
    assert [e["severity"] for e in found[1:3]] == ["WARNING", "ERROR"]
    assert "crash loop (3 quick exits in a row), restarting in 0.2s" in found[2]["message"]
    assert all(e["exit_code"] == 3 for e in found)
    # The child's own reason comes before each of the supervisor's lines about it.
    text = out.getvalue()
    assert text.index("configuration error: BAD") < text.index("bad exited with 3")
    assert not supervisor.stopping, "a crash loop does not end the stack"


def test_nothing_is_restarted_once_stopping() -> None:
    out = io.StringIO()
    supervisor = Supervisor(out, Backoff(initial_s=0.05, max_s=0.05, reset_after_s=60))
    child = supervisor.spawn("w", [sys.executable, "-c", TRAPPING_CHILD], tier=1, restart=True)
    wait_for(lambda: "plain text line" in out.getvalue(), 10, "the child to start")
    supervisor.request_stop(signal.SIGTERM)
    assert supervisor.wait() == f"signal {signal.SIGTERM}"
    os.killpg(child.process.pid, signal.SIGTERM)  # the child leaves as the stack stops...
    child.process.wait(timeout=10)
    time.sleep(0.2)
    supervisor.check_children()  # ...and a late look at it does not start it again
    supervisor.stop_all(grace_s=5)
    messages = [e["message"] for e in supervisor_lines(out)]
    assert "restarted w" not in messages and not any("restarting" in m for m in messages)


def test_a_child_waiting_to_restart_is_not_signalled_when_the_stack_stops() -> None:
    out = io.StringIO()
    supervisor = Supervisor(out, Backoff(initial_s=60, max_s=60, reset_after_s=60))
    child = supervisor.spawn("w", [sys.executable, "-c", "pass"], tier=1, restart=True)
    tend_until(supervisor, lambda: child.restart_at is not None, 10, "the exit to be seen")
    supervisor.request_stop(signal.SIGTERM)
    supervisor.stop_all(grace_s=5)
    assert supervisor_lines(out)[-1]["message"] == "stopped w (it was waiting to restart)"


def test_the_port_check_sees_a_listener_but_not_time_wait() -> None:
    port = free_port()
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen()
        assert listener_on("127.0.0.1", port)
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        served, _ = listener.accept()
        served.close()  # the server closes first, as an HTTP server does: TIME_WAIT on `port`
        client.recv(1)
        client.close()
    assert time_wait_on(port), "the scenario: a connection of the stopped server in TIME_WAIT"
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))  # what the old check did, and refused
    assert not listener_on("127.0.0.1", port)


def time_wait_on(port: int) -> bool:
    """Whether a loopback TCP socket with local port ``port`` is in TIME_WAIT (/proc/net/tcp)."""
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    return any(int(row[1].split(":")[1], 16) == port and row[3] == "06" for row in rows)
