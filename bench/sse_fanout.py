"""Many open event streams on one ingress: how many connect, how fast a write reaches them, and what
the ingress pays for them in memory and threads — for each gunicorn worker class tried.

    python -m bench.sse_fanout [--streams 100,500,1000] [--classes gthread,gevent]

For each worker class, one gunicorn ingress (one worker process) on the emulators. For each count N:
N queued jobs are written straight into Firestore (no message: no worker runs them), N streams are
opened on them by one asyncio client, then each job is moved to ``running`` and then to
``succeeded`` with the worker's own state-machine writes, paced at ``--rate`` jobs/s. Delivery
latency is from just before the write's commit to the client's receipt of that event (same clock,
same process). Memory and threads are the ingress worker process's, sampled with all N open.

All N streams are one tenant's, so the ingress lifts that tenant's cap on open streams
(``TENANT_LIMITS``; 200 per process by default) for the bench.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import RESULTS, pcts, print_table, save
from emulators.localrun import ROOT
from emulators.process import free_port, running_emulators, stop_group, wait_until_answers
from emulators.provision import Resources, provision

PROJECT = "omni-bench-sse"
TENANT, KEY = "bench", "bench-key-0123"
CONNECT_TIMEOUT_S = 120.0
DELIVERY_TIMEOUT_S = 120.0
WRITE_BATCH = 25


@dataclass
class StreamState:
    job_id: str
    connected_at: float | None = None
    status: int | None = None
    received: dict[int, float] = field(default_factory=dict)
    error: str | None = None


def _proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def worker_pid(master: int) -> int:
    """The gunicorn worker process (the master's one child)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if int(stat[stat.rindex(")") + 2 :].split()[1]) == master:
                    return int(entry.name)
    raise RuntimeError("gunicorn has no worker process")


def footprint(pid: int) -> dict[str, float]:
    status = _proc_status(pid)
    return {"rss_mb": int(status["VmRSS"].split()[0]) / 1024, "threads": int(status["Threads"])}


@contextlib.contextmanager
def ingress(worker_class: str, env: dict[str, str], log: Path) -> Iterator[tuple[str, int]]:
    port = free_port()
    child_env = {
        **os.environ,
        **env,
        "API_KEYS": f"{TENANT}:{KEY}",
        # Every stream is the bench tenant's: past the default cap of 200 per process.
        "TENANT_LIMITS": json.dumps({TENANT: {"streams": None}}),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WEB_CONCURRENCY": "1",
        "GUNICORN_WORKER_CLASS": worker_class,
        "LOG_LEVEL": "WARNING",
    }
    argv = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "ingress" / "gunicorn.conf.py")]
    with log.open("w") as out:
        process = subprocess.Popen(
            argv, env=child_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answers(url + "/health", process, 60, f"ingress ({worker_class})")
        yield url, worker_pid(process.pid)
    finally:
        stop_group(process, 20)


def create_jobs(db: Any, count: int) -> dict[str, dict[str, Any]]:
    from schemas.jobs import new_job_document, new_job_id

    docs = {}
    now = datetime.now(UTC)
    for start in range(0, count, 500):
        batch = db.batch()
        for _ in range(min(500, count - start)):
            job_id = new_job_id()
            docs[job_id] = new_job_document(
                tenant=TENANT, task="entities", input={"text": "x"}, metadata=None, now=now
            )
            batch.create(db.collection("jobs").document(job_id), docs[job_id])
        batch.commit()
    return docs


def drive(
    db: Any, docs: dict[str, dict[str, Any]], rate: float, written: dict[tuple[str, int], float]
) -> None:
    """Move every job to running (event 2), then to succeeded (event 3), as a worker writes them,
    ``rate`` jobs a second; record when each write started."""
    from schemas import jobstate
    from schemas.jobs import JobStatus

    tokens: dict[str, str] = {}
    for seq in (2, 3):
        ids = list(docs)
        started = time.monotonic()
        for start in range(0, len(ids), WRITE_BATCH):
            # Paced: batch k starts at k * WRITE_BATCH / rate seconds.
            lag = started + start / rate - time.monotonic()
            if lag > 0:
                time.sleep(lag)
            batch = db.batch()
            now = datetime.now(UTC)
            for job_id in ids[start : start + WRITE_BATCH]:
                if seq == 2:
                    claimed = jobstate.claim(docs[job_id], TENANT, now, 60, "bench")
                    assert isinstance(claimed, jobstate.Claimed)
                    tokens[job_id] = claimed.token
                    changes = claimed.changes
                else:
                    changes = jobstate.terminal(
                        JobStatus.SUCCEEDED, now, tokens[job_id], 3600, result={"entities": []}
                    )
                batch.update(db.collection("jobs").document(job_id), changes)
            at = time.monotonic()
            batch.commit()
            for job_id in ids[start : start + WRITE_BATCH]:
                written[(job_id, seq)] = at


async def follow(host: str, port: int, state: StreamState) -> None:
    """One stream over a raw HTTP/1.1 connection (chunked), recording when each event arrives."""
    writer = None
    try:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
        request = (
            f"GET /v1/jobs/{state.job_id}/events HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"X-API-Key: {KEY}\r\nAccept: text/event-stream\r\n\r\n"
        )
        writer.write(request.encode())
        await writer.drain()
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        state.status = int(head.split(" ", 2)[1])
        if state.status != 200:
            return
        buffer = b""
        while True:
            size = int((await reader.readline()).strip() or b"0", 16)
            if size == 0:
                return
            buffer += await reader.readexactly(size)
            await reader.readline()
            at = time.monotonic()
            while b"\n\n" in buffer:
                message, buffer = buffer.split(b"\n\n", 1)
                for line in message.split(b"\n"):
                    if line.startswith(b"id: "):
                        seq = int(line[4:])
                        state.received[seq] = at
                        if state.connected_at is None:
                            state.connected_at = at
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        state.error = type(exc).__name__
    finally:
        if writer is not None:
            writer.close()


async def fan_out(url: str, pid: int, docs: dict[str, Any], rate: float, db: Any) -> dict[str, Any]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    states = [StreamState(job_id) for job_id in docs]
    tasks = [asyncio.create_task(follow(host, int(port), s)) for s in states]
    opened = time.monotonic()
    while time.monotonic() - opened < CONNECT_TIMEOUT_S:
        if all(s.connected_at or s.error or (s.status and s.status != 200) for s in states):
            break
        await asyncio.sleep(0.2)
    connect_s = time.monotonic() - opened
    connected = sum(1 for s in states if s.connected_at)
    await asyncio.sleep(2.0)  # let the shared listeners settle before sampling and writing
    held = footprint(pid)

    written: dict[tuple[str, int], float] = {}
    writer = threading.Thread(target=drive, args=(db, docs, rate, written), daemon=True)
    writer.start()
    deadline = time.monotonic() + DELIVERY_TIMEOUT_S + 2 * len(docs) / rate
    while time.monotonic() < deadline and not all(t.done() for t in tasks):
        await asyncio.sleep(0.2)
    writer.join(timeout=60)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

    by_seq: dict[int, list[float]] = {2: [], 3: []}
    for s in states:
        for seq, values in by_seq.items():
            if seq in s.received and (s.job_id, seq) in written:
                values.append((s.received[seq] - written[(s.job_id, seq)]) * 1000)
    latencies = by_seq[2] + by_seq[3]
    errors: dict[str, int] = {}
    for s in states:
        if s.error or (s.status and s.status != 200):
            reason = s.error or f"HTTP {s.status}"
            errors[reason] = errors.get(reason, 0) + 1
    return {
        "streams": len(docs),
        "connected": connected,
        "connect_s": connect_s,
        "delivered": len(latencies),
        "expected": 2 * len(docs),
        **pcts(latencies),
        "max_ms": max(latencies, default=float("nan")),
        "running": pcts(by_seq[2]),
        "terminal": pcts(by_seq[3]),
        "rss_mb": held["rss_mb"],
        "threads": held["threads"],
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="100,500,1000")
    parser.add_argument("--classes", default="gthread,gevent")
    parser.add_argument("--rate", type=float, default=250.0, help="job writes per second")
    args = parser.parse_args()
    counts = [int(n) for n in args.streams.split(",")]
    RESULTS.mkdir(parents=True, exist_ok=True)

    rows: list[list[Any]] = []
    results: list[dict[str, Any]] = []
    with running_emulators(PROJECT) as (pubsub, firestore_emulator):
        env = {
            "GOOGLE_CLOUD_PROJECT": PROJECT,
            "PUBSUB_EMULATOR_HOST": pubsub.address,
            "FIRESTORE_EMULATOR_HOST": firestore_emulator.address,
        }
        os.environ.update(env)
        provision(Resources(project=PROJECT))
        from google.cloud import firestore

        db = firestore.Client(project=PROJECT)
        for worker_class in args.classes.split(","):
            log = RESULTS / f"sse_fanout.{worker_class}.log"
            try:
                with ingress(worker_class, env, log) as (url, pid):
                    idle = footprint(pid)
                    for count in counts:
                        docs = create_jobs(db, count)
                        result = asyncio.run(fan_out(url, pid, docs, args.rate, db))
                        result.update(worker_class=worker_class, idle=idle)
                        results.append(result)
                        rows.append(
                            [
                                worker_class,
                                count,
                                result["connected"],
                                f"{result['delivered']}/{result['expected']}",
                                result["p50_ms"],
                                result["p99_ms"],
                                result["max_ms"],
                                f"{idle['rss_mb']:.0f} → {result['rss_mb']:.0f}",
                                f"{idle['threads']:.0f} → {result['threads']:.0f}",
                                ", ".join(f"{k}: {v}" for k, v in result["errors"].items()) or "-",
                            ]
                        )
                        print(rows[-1], flush=True)
            except (RuntimeError, TimeoutError) as exc:
                rows.append([worker_class, "-", "-", "-", "-", "-", "-", "-", "-", str(exc)[:80]])
                results.append({"worker_class": worker_class, "failed": str(exc)})
    print_table(
        f"Open event streams on one ingress process ({args.rate:.0f} job writes/s, 2 events a job)",
        [
            "worker class",
            "streams",
            "connected",
            "events delivered",
            "p50 ms",
            "p99 ms",
            "max ms",
            "RSS MB (idle → open)",
            "threads (idle → open)",
            "errors",
        ],
        rows,
    )
    save("sse_fanout", {"rate": args.rate, "results": results})


if __name__ == "__main__":
    main()
