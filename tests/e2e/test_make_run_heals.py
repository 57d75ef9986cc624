"""``make run`` heals like production: it starts again at once on the ports it just left, restarts a
SIGKILLed gunicorn master, restarts a SIGKILLed worker while jobs run (all of them succeed), and
ends when an emulator dies.

Processes are found as children of the supervisor that this test's ``make run`` started, by their
argv and environment, never by name; only those are signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from emulators.localrun import DEV_API_KEYS, ROOT
from omniclient.client import OmniClient
from tests.support import alive, descendants, make_run_env, make_run_ports, wait_for

pytestmark = [pytest.mark.slow]

API_KEY = DEV_API_KEYS.partition(":")[2]
UP_TIMEOUT_S = 240.0
STOP_TIMEOUT_S = 90.0
JOBS = 300


class MakeRun:
    """One ``make run`` on fixed ports, its output in a temporary file."""

    def __init__(self, ports: dict[str, int], workers: int) -> None:
        env = make_run_env()
        # Workers load the embedding model only: the stack comes up in seconds, not minutes.
        env.update(
            {k: str(v) for k, v in ports.items()}, WORKERS=str(workers), WORKER_TASKS="embed"
        )
        self.ports = ports
        self.url = f"http://127.0.0.1:{ports['PORT']}"
        self._log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed by __exit__
        self.make = subprocess.Popen(
            ["make", "--no-print-directory", "run"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.tree: set[int] = set()

    def __enter__(self) -> MakeRun:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        try:
            if self.make.poll() is None:
                self.kill() if exc_type is not None else self.stop()
        finally:
            self._log.close()

    def output(self) -> str:
        self._log.seek(0)
        return self._log.read()

    def supervisor_lines(self) -> list[dict[str, Any]]:
        lines = [line.partition(" | ") for line in self.output().splitlines()]
        return [json.loads(body) for who, _, body in lines if who == "run"]

    def wait_up(self) -> None:
        def up() -> bool:
            self.tree.update(descendants(self.make.pid))
            assert self.make.poll() is None, f"make run exited early:\n{self.output()[-3000:]}"
            return "Omni is up at" in self.output()

        wait_for(up, UP_TIMEOUT_S, "make run to print its URL", interval_s=0.5)

    def supervisor_child(self, *argv_parts: str, env_entry: str | None = None) -> int:
        """The pid of the supervisor's child whose argv holds every part (and whose environment
        holds ``env_entry``): the supervisor is make's only child (the recipe execs it)."""
        (supervisor,) = children(self.make.pid)
        found = []
        for pid in children(supervisor):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
                environ = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
            except OSError:
                continue
            if all(part in argv for part in argv_parts) and (
                env_entry is None or env_entry in environ
            ):
                found.append(pid)
        assert len(found) == 1, (argv_parts, env_entry, found)
        return found[0]

    def stop(self) -> int:
        """SIGTERM to make's group, as Ctrl-C does; make's exit status."""
        self.tree.update(descendants(self.make.pid))
        if self.make.poll() is None:
            os.killpg(self.make.pid, signal.SIGTERM)
        return self.wait_exit()

    def wait_exit(self) -> int:
        try:
            return self.make.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        """Last resort when a test failed: make's group, then what is left of the processes
        it started."""
        self.tree.update(descendants(self.make.pid))
        for pid in [self.make.pid, *self.tree]:
            if alive(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
        self.make.wait(timeout=10)

    def assert_all_gone(self) -> None:
        wait_for(lambda: not [p for p in self.tree if alive(p)], 15, "every process to be gone")


def children(pid: int) -> list[int]:
    """The live direct children of ``pid``, from /proc."""
    try:
        listed = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [int(child) for child in listed if alive(int(child))]


def time_wait_ports() -> set[int]:
    """Local ports of loopback TCP sockets in TIME_WAIT (/proc/net/tcp)."""
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    return {int(row[1].split(":")[1], 16) for row in rows if row[3] == "06"}


def embed(client: OmniClient, texts: list[str]) -> dict[str, Any]:
    # Each job must run (the test kills a worker mid-way): the same texts again would be cache hits.
    return client.submit("embed", {"texts": texts}, cache=False)


def test_make_run_starts_again_at_once_and_restarts_a_dead_gunicorn_master() -> None:
    ports = make_run_ports()
    with MakeRun(ports, workers=1) as first:
        first.wait_up()
        code = first.stop()
        assert code in (0, -signal.SIGTERM), first.output()[-3000:]
        first.assert_all_gone()
    # The scenario: the run just stopped left connections in TIME_WAIT on its own ports, which
    # a plain bind (the old pre-check) took for a listener.
    assert time_wait_ports() & set(ports.values()), "no TIME_WAIT left: the test proves nothing"

    with MakeRun(ports, workers=1) as second:  # at once, on the same ports
        second.wait_up()
        assert requests.get(f"{second.url}/health", timeout=10).status_code == 200

        # gunicorn's master SIGKILLed: its orphaned workers die with it, and a new master binds
        # the same port.
        master = second.supervisor_child("-m", "gunicorn")
        master_workers = children(master)
        os.kill(master, signal.SIGKILL)
        wait_for(
            lambda: any(e["message"] == "restarted ingress" for e in second.supervisor_lines()),
            30,
            "the ingress to be restarted",
        )
        wait_for(lambda: answers(f"{second.url}/health"), 60, "the new ingress to answer", 0.2)
        assert second.supervisor_child("-m", "gunicorn") != master
        assert master_workers and not [pid for pid in master_workers if alive(pid)]
        with OmniClient(second.url, API_KEY) as client:
            job = client.submit("embed", {"texts": ["again"]}, wait=60)
            if job["status"] != "succeeded":
                job = client.get_job(job["id"], wait=60)
        assert job["status"] == "succeeded", job
        code = second.stop()
        assert code in (0, -signal.SIGTERM), second.output()[-3000:]
        second.assert_all_gone()


def test_a_killed_worker_is_restarted_and_a_killed_emulator_ends_the_stack() -> None:
    ports = make_run_ports()
    with MakeRun(ports, workers=2) as stack:
        stack.wait_up()
        worker_port = ports["WORKER_HTTP_PORT"] + 1
        worker_env = f"WORKER_HTTP_PORT={worker_port}"
        victim = stack.supervisor_child("-m", "worker", env_entry=worker_env)

        # Enough texts per job that the 300 take a while on two cores.
        texts = [f"sentence {i} about a cat, a kitten and a very patient dog" for i in range(16)]
        with OmniClient(stack.url, API_KEY) as client, ThreadPoolExecutor(8) as pool:
            jobs = list(pool.map(lambda _: embed(client, texts)["id"], range(JOBS)))

            # Kill it while it works: once it has finished a micro-batch, with most jobs left.
            def working() -> bool:
                return '"job_id"' in "".join(
                    line for line in stack.output().splitlines() if line.startswith("worker-1 | ")
                )

            wait_for(working, 120, "worker-1 to finish its first jobs", interval_s=0.2)
            os.kill(victim, signal.SIGKILL)  # as the kernel's OOM killer would
            killed_at, killed_at_wall = time.monotonic(), datetime.now(UTC)

            finished = list(pool.map(lambda job_id: finish(client, job_id), jobs))
        statuses = [job["status"] for job in finished]
        assert statuses.count("succeeded") == JOBS, {s: statuses.count(s) for s in set(statuses)}
        after = [j for j in finished if datetime.fromisoformat(j["finished_at"]) > killed_at_wall]
        assert after, "every job had finished before the kill: the test proves nothing"
        rerun = [j for j in finished if j["attempts"] > 1]

        (restart,) = [
            e for e in stack.supervisor_lines() if e.get("child") == "worker-1" and "exit_code" in e
        ]
        assert restart["exit_code"] == -signal.SIGKILL and restart["restart_in_s"] == 1.0
        assert restart["message"].startswith("worker-1 exited with -9 (SIGKILL)"), restart
        assert any(e["message"] == "restarted worker-1" for e in stack.supervisor_lines())
        # Served again on the same port, by a new process the supervisor started.
        readyz = f"http://127.0.0.1:{worker_port}/readyz"
        wait_for(lambda: answers(readyz), 180, "the restarted worker-1 to be ready", 0.5)
        assert stack.supervisor_child("-m", "worker", env_entry=worker_env) != victim
        assert stack.make.poll() is None, "the stack is still up"
        assert requests.get(f"{stack.url}/health", timeout=10).status_code == 200
        print(
            f"all {JOBS} succeeded {time.monotonic() - killed_at:.1f}s after the kill; "
            f"{len(after)} finished after it, {len(rerun)} ran again (claimed by the killed worker)"
        )

        # An emulator is not restarted: its state would be gone. Its gcloud wrapper killed, the
        # stack ends by itself, its JVM (same process group) included.
        firestore = stack.supervisor_child(
            "firestore", f"--host-port=127.0.0.1:{ports['FIRESTORE_PORT']}"
        )
        stack.tree.update(descendants(stack.make.pid))
        os.kill(firestore, signal.SIGKILL)
        code = stack.wait_exit()
        output = stack.output()
        assert code == 2, output[-3000:]  # make: the recipe failed
        assert "stopping: firestore exited with -9 (SIGKILL)" in output, output[-3000:]
        assert not any(e.get("child") == "firestore" for e in stack.supervisor_lines())
        stack.assert_all_gone()


def finish(client: OmniClient, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 240
    while True:
        job = client.get_job(job_id, wait=30)
        if job["status"] in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
            return job


def answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False
