"""Batches: how fast the ingress accepts 10,000 and 100,000 items, and how fast the worker
finishes 10,000 ``embed`` items against the model's own batched throughput, in one run.

1. The baseline: the worker's embed adapter called in this process at the worker's batch size.
2. On a local stack (emulators, ingress, one embed worker):
   - acceptance: ``POST /v1/batches`` of N NDJSON lines until the 202 (every item written to
     Firestore and confirmed by Pub/Sub). Measured on a second ingress of the same stack whose
     topic has one subscription nobody pulls, so the worker is not handed the items afterwards
     and the Pub/Sub emulator still stores every message, as it does for the real topic.
   - finishing: 10,000 ``embed`` items through the real topic: the POST until the batch reports
     ``succeeded`` (``GET /v1/batches/ID`` twice a second: ~17 document reads each), and the
     worker's own rate from the batch's ``created_at`` to its ``finished_at``.

    .venv/bin/python -m bench.batch [--accept 10000,100000] [--finish 10000]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import requests

from bench.common import (
    KEYS,
    RESULTS,
    device_summary,
    load_adapter,
    print_table,
    quiet_model_logs,
    raw_items_per_s,
    save,
    sentence,
    stack,
)
from emulators.localrun import ROOT, StackConfig
from emulators.process import free_port, stop_group, wait_until_answers
from worker.settings import BATCHING

HEADERS = {"X-API-Key": KEYS["bench"], "Content-Type": "application/x-ndjson"}
SINK_TOPIC = "bench-batch-sink"


def ndjson(items: int) -> bytes:
    return b"".join(b'{"texts": ["%s"]}\n' % sentence(i).encode() for i in range(items))


@contextlib.contextmanager
def sink_ingress(config: StackConfig) -> Iterator[str]:
    """A second ingress on the stack's emulators publishing to a topic nobody pulls."""
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]

    os.environ["PUBSUB_EMULATOR_HOST"] = f"{config.host}:{config.pubsub_port}"
    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path(config.project, SINK_TOPIC)
    publisher.create_topic(name=topic)
    subscriber = pubsub_v1.SubscriberClient()
    subscriber.create_subscription(
        name=subscriber.subscription_path(config.project, SINK_TOPIC), topic=topic
    )
    port = free_port()
    env = {
        **os.environ,
        "API_KEYS": config.api_keys,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "JOBS_TOPIC": SINK_TOPIC,
        "PUBSUB_EMULATOR_HOST": f"{config.host}:{config.pubsub_port}",
        "FIRESTORE_EMULATOR_HOST": f"{config.host}:{config.firestore_port}",
        "GOOGLE_CLOUD_PROJECT": config.project,
        "LOG_LEVEL": "WARNING",
    }
    argv = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "ingress" / "gunicorn.conf.py")]
    with (RESULTS / "batch.sink-ingress.log").open("w") as out:
        process = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answers(url + "/health", process, 60, "sink ingress")
        yield url
    finally:
        stop_group(process, 20)


def accept(url: str, items: int) -> dict[str, Any]:
    body = ndjson(items)
    started = time.perf_counter()
    response = requests.post(
        f"{url}/v1/batches", params={"task": "embed"}, data=body, headers=HEADERS, timeout=600
    )
    seconds = time.perf_counter() - started
    response.raise_for_status()
    batch = response.json()
    assert batch["counts"]["queued"] == items, batch
    return {"items": items, "body_mb": len(body) / 2**20, "seconds": seconds}


def finish(url: str, items: int) -> dict[str, Any]:
    started = time.perf_counter()
    response = requests.post(
        f"{url}/v1/batches",
        params={"task": "embed"},
        data=ndjson(items),
        headers=HEADERS,
        timeout=600,
    )
    response.raise_for_status()
    accepted = time.perf_counter() - started
    batch_id = response.json()["id"]
    deadline = time.monotonic() + 60 + items / 5
    while True:
        batch = requests.get(f"{url}/v1/batches/{batch_id}", headers=HEADERS, timeout=30).json()
        if batch["status"] != "running":
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"batch not finished: {batch['counts']}")
        time.sleep(0.5)
    seconds = time.perf_counter() - started
    created = datetime.fromisoformat(batch["created_at"])
    finished_at = datetime.fromisoformat(batch["finished_at"])
    return {
        "items": items,
        "status": batch["status"],
        "counts": batch["counts"],
        "accept_s": accepted,
        "seconds": seconds,
        "items_per_s": items / seconds,
        "worker_items_per_s": items / (finished_at - created).total_seconds(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accept", default="10000,100000", help="batch sizes to accept")
    parser.add_argument("--finish", type=int, default=10000, help="embed items to run")
    args = parser.parse_args()
    sizes = [int(n) for n in args.accept.split(",") if n]
    quiet_model_logs()
    device = device_summary()
    print(f"device: {device}")

    batch_size = BATCHING["embed"][0]
    adapter = load_adapter("embed", None)
    raw = raw_items_per_s(adapter, "embed", batch_size, 512)
    del adapter
    results: dict[str, Any] = {"device": device, "raw_items_per_s": raw, "batch_size": batch_size}
    rows: list[list[Any]] = []
    with stack("embed", "batch") as config:
        with sink_ingress(config) as sink:
            results["accept"] = [accept(sink, n) for n in sizes]
        for run in results["accept"]:
            rows.append(
                [
                    f"accept {run['items']:,} (NDJSON, {run['body_mb']:.1f} MB)",
                    run["seconds"],
                    run["items"] / run["seconds"],
                    "",
                ]
            )
        run = finish(config.url, args.finish)
        results["finish"] = run
    rows.append([f"model in-process, batch {batch_size} (baseline)", "", raw, "1.00"])
    rows.append(
        [
            f"finish {run['items']:,} embed: POST → succeeded",
            run["seconds"],
            run["items_per_s"],
            f"{run['items_per_s'] / raw:.2f}",
        ]
    )
    rows.append(["  of which accepting them", run["accept_s"], run["items"] / run["accept_s"], ""])
    rows.append(
        [
            "  worker: created_at → finished_at",
            run["items"] / run["worker_items_per_s"],
            run["worker_items_per_s"],
            f"{run['worker_items_per_s'] / raw:.2f}",
        ]
    )
    print_table(
        f"Batches, device {device['torch_device']}, {device['cpus']} CPUs; "
        "ratio = items/s over the model's own batched items/s, same run",
        ["what", "seconds", "items/s", "ratio"],
        rows,
    )
    save("batch", results)


if __name__ == "__main__":
    main()
