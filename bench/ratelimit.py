"""Per-tenant limits: how closely the request rate holds under concurrent clients, across one and
two ingress processes, and how far concurrent submits overshoot the jobs-in-flight cap.

On the emulators (no worker: nothing consumes the jobs), with real gunicorn ingresses whose
``TENANT_LIMITS`` gives the tenant ``rate`` requests a second (burst ``rate``):

1. one instance, 8 and 32 client threads hammering ``GET /v1/tasks`` for ``--seconds``;
2. two instances sharing the instance registry, clients spread evenly (round-robin);
3. two instances, every client on one of them (the scheme's known error: that one admits
   ``rate / 2``);
4. a cap of ``--cap`` jobs in flight, 16 submitters posting jobs until each has been refused
   ``REFUSALS`` times in a row: how many were admitted beyond the cap.

Admitted/s counts from the first request to the last, so the initial burst (``rate`` requests at
once) adds ``burst / seconds`` to the steady rate; the ratio is admitted/s over the configured
rate.

    .venv/bin/python -m bench.ratelimit [--seconds 15] [--rate 20] [--cap 100]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from bench.common import RESULTS, print_table, save, wait_until
from emulators.localrun import ROOT
from emulators.process import free_port, running_emulators, stop_group, wait_until_answers
from emulators.provision import Resources, provision

PROJECT = "omni-bench-limits"
TENANT = "limited"
HEADERS = {"X-API-Key": "limited-key-0123"}
HEARTBEAT_S = 1.0
"""The ingresses' registry heartbeat here (production: 10 s), so the bench need not wait long."""
REFUSALS = 3
"""A submitter stops after this many 429s in a row: the cap is reached and stays reached."""


@contextlib.contextmanager
def ingresses(
    env: dict[str, str], count: int, limits: dict[str, Any], name: str
) -> Iterator[list[str]]:
    """``count`` gunicorn ingresses (one worker process each) sharing one instance registry."""
    processes: list[subprocess.Popen[bytes]] = []
    urls: list[str] = []
    collection = f"instances-{name}"
    try:
        for i in range(count):
            port = free_port()
            child_env = {
                **os.environ,
                **env,
                "API_KEYS": f"{TENANT}:{HEADERS['X-API-Key']}",
                "HOST": "127.0.0.1",
                "PORT": str(port),
                "LOG_LEVEL": "WARNING",
                "TENANT_LIMITS": json.dumps({TENANT: limits}),
                "INSTANCES_COLLECTION": collection,
                "INSTANCE_HEARTBEAT_S": str(HEARTBEAT_S),
            }
            argv = [
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                str(ROOT / "ingress" / "gunicorn.conf.py"),
            ]
            with (RESULTS / f"ratelimit.{name}-{i}.log").open("w") as out:
                processes.append(
                    subprocess.Popen(
                        argv,
                        env=child_env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
            url = f"http://127.0.0.1:{port}"
            wait_until_answers(url + "/health", processes[-1], 60, f"ingress {name}-{i}")
            urls.append(url)
        if count > 1:
            wait_until(lambda: _live(collection) >= count, 30, "every instance registered")
            time.sleep(HEARTBEAT_S * 3)  # each has counted the others
        yield urls
    finally:
        for process in processes:
            stop_group(process, 20)


def _live(collection: str) -> int:
    from datetime import UTC, datetime, timedelta

    from google.cloud import firestore
    from google.cloud.firestore_v1.base_query import FieldFilter

    since = datetime.now(UTC) - timedelta(seconds=HEARTBEAT_S * 3)
    query = (
        firestore.Client(project=PROJECT)
        .collection(collection)
        .where(filter=FieldFilter("seen_at", ">=", since))
    )
    return int(query.count().get(timeout=10)[0][0].value)


def hammer(urls: list[str], clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` threads, client i always on ``urls[i % len(urls)]``, as fast as answers come."""
    counts = {"admitted": 0, "refused": 0, "other": 0}
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(i: int) -> None:
        session = requests.Session()
        url = f"{urls[i % len(urls)]}/v1/tasks"
        while time.monotonic() < stop_at:
            status = session.get(url, headers=HEADERS, timeout=30).status_code
            kind = "admitted" if status == 200 else "refused" if status == 429 else "other"
            with lock:
                counts[kind] += 1

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client, i) for i in range(clients)]:
            future.result()
    elapsed = time.perf_counter() - started
    return {**counts, "seconds": elapsed, "admitted_per_s": counts["admitted"] / elapsed}


def overshoot(url: str, submitters: int) -> dict[str, Any]:
    """Submitters posting jobs until each is refused ``REFUSALS`` times in a row."""
    counts = {"admitted": 0, "refused": 0, "other": 0}
    lock = threading.Lock()
    numbers = itertools.count()

    def submitter() -> None:
        session = requests.Session()
        refused_in_a_row = 0
        while refused_in_a_row < REFUSALS:
            body = {"task": "embed", "input": {"texts": [f"job {next(numbers)}"]}}
            status = session.post(
                f"{url}/v1/jobs", json=body, headers=HEADERS, timeout=30
            ).status_code
            refused_in_a_row = refused_in_a_row + 1 if status == 429 else 0
            kind = "admitted" if status == 202 else "refused" if status == 429 else "other"
            with lock:
                counts[kind] += 1

    with ThreadPoolExecutor(submitters) as pool:
        for future in [pool.submit(submitter) for _ in range(submitters)]:
            future.result()
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--cap", type=int, default=100)
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    rate = {"rate": args.rate, "burst": args.rate}
    rows: list[list[Any]] = []
    results: dict[str, Any] = {"rate": args.rate, "seconds": args.seconds, "runs": []}
    with running_emulators(PROJECT) as (pubsub, firestore):
        env = {
            "GOOGLE_CLOUD_PROJECT": PROJECT,
            "PUBSUB_EMULATOR_HOST": pubsub.address,
            "FIRESTORE_EMULATOR_HOST": firestore.address,
        }
        os.environ.update(env)
        provision(Resources(project=PROJECT))
        scenarios = [
            ("1 instance", 1, 8, "round-robin"),
            ("1 instance", 1, 32, "round-robin"),
            ("2 instances, spread", 2, 8, "round-robin"),
            ("2 instances, spread", 2, 32, "round-robin"),
            ("2 instances, one hot", 2, 32, "all on one"),
        ]
        for n, (label, count, clients, spread) in enumerate(scenarios):
            with ingresses(env, count, rate, f"rate{n}") as urls:
                targets = urls[:1] if spread == "all on one" else urls
                run = hammer(targets, clients, args.seconds)
            ratio = run["admitted_per_s"] / args.rate
            rows.append(
                [
                    label,
                    clients,
                    f"{run['admitted_per_s']:.1f}",
                    f"{ratio:.2f}",
                    run["refused"],
                    run["other"],
                ]
            )
            results["runs"].append(
                {
                    "scenario": label,
                    "instances": count,
                    "clients": clients,
                    "spread": spread,
                    **run,
                    "ratio": ratio,
                }
            )
        print_table(
            f"Request rate: {args.rate:g}/s, burst {args.rate:g}, {args.seconds:g} s a run",
            ["scenario", "clients", "admitted/s", "÷ rate", "429s", "other"],
            rows,
        )
        with ingresses(env, 1, {"in_flight": args.cap}, "cap") as urls:
            cap = overshoot(urls[0], 16)
        results["in_flight"] = {
            "cap": args.cap,
            "submitters": 16,
            **cap,
            "overshoot": cap["admitted"] - args.cap,
        }
        print_table(
            f"Jobs in flight: cap {args.cap}, 16 concurrent submitters, nothing consuming",
            ["admitted", "over the cap", "429s", "other"],
            [[cap["admitted"], cap["admitted"] - args.cap, cap["refused"], cap["other"]]],
        )
    save("ratelimit", results)


if __name__ == "__main__":
    main()
