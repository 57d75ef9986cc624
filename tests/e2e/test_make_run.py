"""``make run`` as a user runs it: the README's curl session works, and SIGTERM leaves nothing."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import tempfile

import pytest
import requests

from emulators.localrun import ROOT
from tests.support import alive, descendants, make_run_env, make_run_ports, wait_for

pytestmark = [pytest.mark.slow]


def readme_curl_session() -> str:
    readme = (ROOT / "README.md").read_text()
    match = re.search(
        r"<!-- curl-session:start -->\n```bash\n(.*?)```\n<!-- curl-session:end -->", readme, re.S
    )
    assert match, "README.md lost its curl session block"
    return match.group(1)


def test_make_run_serves_the_readme_session_and_stops_cleanly_on_sigterm() -> None:
    ports = {name: str(port) for name, port in make_run_ports().items()}
    env = make_run_env()
    env.update(ports, WORKERS="2")
    with tempfile.TemporaryFile("w+") as log:
        make = subprocess.Popen(
            ["make", "--no-print-directory", "run"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        tree: set[int] = set()
        try:

            def up() -> bool:
                # Keep a record of every process make run started, down to the JVMs.
                tree.update(descendants(make.pid))
                log.seek(0)
                text = log.read()
                assert make.poll() is None, f"make run exited early:\n{text[-3000:]}"
                return "Omni is up at" in text

            wait_for(up, 240, "make run to print its URL", interval_s=0.5)
            tree.update(descendants(make.pid))
            assert len(tree) >= 7, "two emulators (gcloud + java each), two workers, gunicorn"

            url = f"http://127.0.0.1:{ports['PORT']}"
            session = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", readme_curl_session()],
                env={**env, "OMNI_URL": url},
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert session.returncode == 0, session.stderr
            job = json.loads(session.stdout.strip().splitlines()[-1])
            assert job["status"] == "succeeded", job
            vectors = job["result"]["embeddings"]
            assert len(vectors) == 3 and all(len(v) == 384 for v in vectors)
            for vector in vectors:
                assert math.isclose(math.hypot(*vector), 1.0, abs_tol=1e-4)
            # The session followed the job's event stream to its end.
            assert "event: succeeded" in session.stdout, session.stdout
            # make run points at the console, and it is served.
            log.seek(0)
            assert f"{url}/console" in log.read()
            page = requests.get(f"{url}/console", timeout=10)
            assert page.status_code == 200 and "Omni console" in page.text
        finally:
            tree.update(descendants(make.pid))
            os.killpg(make.pid, signal.SIGTERM)  # what Ctrl-C or `kill -TERM -PGID` does
            try:
                code = make.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(make.pid, signal.SIGKILL)
                raise
            log.seek(0)
            output = log.read()

    # make re-raises the SIGTERM it got once its recipe has finished: it dies "by" the signal.
    assert code in (0, -signal.SIGTERM), output[-3000:]
    assert f"stopping: signal {signal.SIGTERM}" in output
    wait_for(lambda: not [pid for pid in tree if alive(pid)], 10, "every process to be gone")
    lines = [line for line in output.splitlines() if " | " in line]
    for line in lines:
        assert isinstance(json.loads(line.partition(" | ")[2]), dict), line
    stops = [json.loads(line.partition(" | ")[2]) for line in lines if '"stopped ' in line]
    assert [entry["message"] for entry in stops][0] == "stopped ingress"
    assert {entry["message"] for entry in stops} >= {
        "stopped worker-0",
        "stopped worker-1",
        "stopped reconciler",
        "stopped webhooks",
        "stopped pubsub",
        "stopped firestore",
    }
    # The webhook sender ran (with make run's development signing secret) and stopped cleanly.
    sender = [line for line in lines if line.startswith("webhooks | ")]
    assert any("webhook sender running" in line for line in sender), sender[-20:]
    (webhooks,) = [entry for entry in stops if entry["message"] == "stopped webhooks"]
    assert webhooks["exit_code"] == 0, output[-3000:]
    graceful = [line for line in lines if "finishing jobs in hand" in line]
    assert len(graceful) == 2, "each worker saw the stop request once, not as a forcing second"
    for name, port in ports.items():
        assert not listening(int(port)), f"{name} {port} is still open"


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0
