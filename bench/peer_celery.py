"""Omni against Celery + Redis on the same ``embed`` work, same model, same machine, one run.

The peer is what many teams run for async inference: a Celery task that calls the model, Redis as
broker and result backend (Debian's ``redis-server``, started on a free loopback port and stopped by
this script), ``acks_late`` so a crash loses nothing, one job per message. Both sides get the same
jobs (one short text each) and the same two loads:

- 16 closed-loop clients for ``--seconds`` (each submits a job and waits for its result);
- a burst of ``--burst`` jobs submitted at once, timed until the last result (end to end);
- the worker's own drain rate: jobs over (last finished - first started). Celery's comes from
  the burst; Omni's from a second burst queued while its worker is paused (SIGSTOP), since its
  ingress, on this 2-core machine, accepts jobs more slowly than the worker finishes them.

Celery runs in two configurations and the better is compared: ``solo`` (one process, torch on
every core) and ``prefork`` with one process per core (torch on one thread each). Omni runs one
worker of the ``embed`` pool on the emulators. Latency is submit → result available, p50 and p99.

    .venv/bin/python -m bench.peer_celery [--burst 2000] [--seconds 20]

Needs ``redis-server`` (``apt-get install redis-server``) and the bench extra
(``pip install -e '.[bench]'``: celery, redis).
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bench.common import (
    RESULTS,
    burst,
    clear_tenant,
    closed_loop,
    device_summary,
    pcts,
    print_table,
    run_clients,
    save,
    sentence,
    stack,
    wait_until,
)
from emulators.localrun import ROOT
from emulators.process import free_port, stop_group


@contextmanager
def redis_server() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed: apt-get install redis-server")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="omni-redis-") as data:
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", data],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            import redis

            client = redis.Redis(host="127.0.0.1", port=port)
            wait_until(lambda: _pings(client), 20, "redis-server to answer")
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            stop_group(process, 10)


def _pings(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:  # noqa: BLE001 - not up yet
        return False


@contextmanager
def celery_worker(broker: str, pool: str) -> Iterator[None]:
    cpus = len(os.sched_getaffinity(0))
    concurrency = 1 if pool == "solo" else cpus
    threads = cpus if pool == "solo" else 1
    env = {
        **os.environ,
        "OMNI_BENCH_REDIS": broker,
        "TORCH_THREADS": str(threads),
        "PYTHONPATH": str(ROOT),
    }
    argv = [
        sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker",
        f"--pool={pool}", f"--concurrency={concurrency}", "--loglevel=WARNING", "--without-gossip",
        "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    with (RESULTS / f"peer_celery.{pool}.log").open("w") as log:
        process = subprocess.Popen(
            argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT
        )
    try:
        from bench.celery_app import app, embed

        app.conf.broker_url = app.conf.result_backend = broker
        # Ready once a job has come back (the model is loaded in every process by then).
        wait_until(lambda: _answers(embed), 120, "the Celery worker to answer")
        yield
    finally:
        stop_group(process, 30)


def _answers(task: Any) -> bool:
    try:
        task.delay(["warm-up"]).get(timeout=10)
        return True
    except Exception:  # noqa: BLE001 - not up yet
        return False


def celery_closed_loop(clients: int, seconds: float) -> dict[str, Any]:
    from bench.celery_app import embed

    return run_clients(clients, seconds, lambda i: embed.delay([sentence(i)]).get(timeout=120))


def celery_burst(jobs: int) -> dict[str, Any]:
    from bench.celery_app import embed

    first = time.time()
    sent = []
    for i in range(jobs):
        sent.append((time.time(), embed.delay([sentence(i)])))
    submitted_s = time.time() - first
    finished = [(at, result.get(timeout=600)) for at, result in sent]
    last = max(r["finished_at"] for _, r in finished)
    first_started = min(r["started_at"] for _, r in finished)
    latencies = [(r["finished_at"] - at) * 1000 for at, r in finished]
    # Let go of the AsyncResults while Redis still runs (their finalisers talk to it).
    del sent
    gc.collect()
    return {
        "jobs": jobs,
        "submit_s": submitted_s,
        "e2e_per_s": jobs / (last - first),
        "drain_per_s": jobs / (last - first_started),
        **pcts(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--pools", default="solo,prefork")
    args = parser.parse_args()
    device = device_summary()
    print(f"device: {device}")
    results: dict[str, Any] = {"device": device, "celery": {}, "omni": {}}

    # Omni first: Celery's result objects talk to Redis when collected, and must not outlive it.
    with stack("embed", "peer_celery-omni") as config:
        results["omni"] = {
            "closed_loop": closed_loop(config, "embed", args.clients, args.seconds),
        }
        clear_tenant("bench")
        # As Celery's: the worker runs while the jobs are sent (end to end, latency).
        results["omni"]["burst"] = burst(config, "embed", args.burst, backlog=False)
        clear_tenant("burst")
        # The worker's own rate on a backlog (paused while the jobs are queued).
        results["omni"]["backlog"] = burst(config, "embed", args.burst, backlog=True)
    with redis_server() as broker:
        os.environ["OMNI_BENCH_REDIS"] = broker
        for pool in args.pools.split(","):
            with celery_worker(broker, pool):
                results["celery"][pool] = {
                    "closed_loop": celery_closed_loop(args.clients, args.seconds),
                    "burst": celery_burst(args.burst),
                }
                gc.collect()

    best = max(results["celery"], key=lambda p: results["celery"][p]["burst"]["e2e_per_s"])
    rows = []
    for name, side in [(f"Celery + Redis ({p})", results["celery"][p]) for p in results["celery"]]:
        rows.append(_row(name, side))
    rows.append(_row("Omni (emulators)", results["omni"]))
    omni, peer = results["omni"], results["celery"][best]
    ratio_burst = omni["burst"]["e2e_per_s"] / peer["burst"]["e2e_per_s"]
    ratio_drain = omni["backlog"]["drain_per_s"] / peer["burst"]["drain_per_s"]
    ratio_loop = omni["closed_loop"]["jobs_per_s"] / peer["closed_loop"]["jobs_per_s"]
    print_table(
        f"embed, one short text per job, {args.clients} closed-loop clients for "
        f"{args.seconds:g} s, then a burst of {args.burst}; device {device['torch_device']}",
        ["system", "loop jobs/s", "loop p50 ms", "loop p99 ms", "burst jobs/s", "burst p50 ms",
         "burst p99 ms", "worker drain jobs/s"],
        rows,
    )  # fmt: skip
    print(
        f"\nOmni / Celery ({best}): burst end to end {ratio_burst:.2f}x, "
        f"worker drain {ratio_drain:.2f}x, closed loop {ratio_loop:.2f}x"
    )
    results["ratio"] = {
        "against": best,
        "burst": ratio_burst,
        "drain": ratio_drain,
        "closed_loop": ratio_loop,
    }
    save("peer_celery", results)


def _row(name: str, side: dict[str, Any]) -> list[Any]:
    loop, burst_run = side["closed_loop"], side["burst"]
    return [
        name,
        loop["jobs_per_s"],
        loop["p50_ms"],
        loop["p99_ms"],
        burst_run["e2e_per_s"],
        burst_run["p50_ms"],
        burst_run["p99_ms"],
        side.get("backlog", burst_run)["drain_per_s"],
    ]


if __name__ == "__main__":
    main()
