"""A batch's chunks through the real worker process, its real embed model and the emulators.

The chunks are written here as an accepted part leaves them (queued, counted) and their messages
published as the ingress publishes them (``chunk_to_pubsub``), on topics and subscriptions of this
module's own: the workers started here are the only ones that see them.

- A 300-item chunk ends ``succeeded`` in one commit: exact counts, every result a unit vector
  equal to the text embedded alone.
- A worker SIGKILLed in the middle of a chunk: the next worker's attempt finishes it; the chunk is
  ended once (``terminal_writes == 1``) and no item is counted twice.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.cloud import pubsub_v1  # type: ignore[attr-defined]

from emulators.process import free_port, stop_group
from schemas.chunks import ChunkMessage, unpack_result
from schemas.messages import Topics, chunk_to_pubsub
from tests.support import python_env, wait_for
from tests.support.batchdocs import (
    batch_counts,
    chunk_doc,
    exact_counts,
    in_flight,
    one_chunk_batch,
)
from tests.support.stacks import Emulators, Service, own_routes, start_service

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TIMEOUT = 30
LEASE_S = "4"
"""The chunk lease of this module's workers (``JOB_LEASE_S``), seconds: short, so that the
attempt of a killed worker lapses quickly."""


@dataclass(frozen=True)
class Route:
    """This module's topics' base name and the subscription prefix its workers pull from."""

    emulators: Emulators
    log_dir: Path
    topic: str
    prefix: str

    def start_worker(self, name: str) -> Service:
        port = free_port()
        env = python_env(
            **self.emulators.env(),
            WORKER_HTTP_PORT=str(port),
            WORKER_TASKS="embed",
            JOBS_SUBSCRIPTION_PREFIX=self.prefix,
            JOB_LEASE_S=LEASE_S,
            WORKER_MAX_MESSAGES="8",
        )
        argv = [sys.executable, "-m", "worker"]
        return start_service(name, argv, env, "/readyz", port, self.log_dir, 180)

    def publish(self, message: ChunkMessage) -> None:
        data, attributes = chunk_to_pubsub(message)
        publisher = pubsub_v1.PublisherClient()
        path = Topics(self.emulators.project, self.topic).of(message)
        publisher.publish(path, data, **attributes).result(timeout=TIMEOUT)


@pytest.fixture
def route(emulators: Emulators, log_dir: Path) -> Route:
    """Topics and embed subscriptions of the test's own. Fresh ones per test: the emulator keeps
    feeding a stopped worker's stream for a while, and a message it hands a dead stream comes back
    only once its ack deadline lapses. No dead-letter policy either, so deliveries to dead streams
    cannot dead-letter a chunk (the worker counts attempts itself, by its claims)."""
    name = own_routes(emulators, f"chunks-{secrets.token_hex(3)}")
    return Route(emulators, log_dir, name, name)


@pytest.fixture
def workers(route: Route) -> Iterator[list[Service]]:
    started: list[Service] = []
    yield started
    for service in started:
        stop_group(service.process, 30)


def queued_chunk(texts: list[str], tenant: str) -> tuple[str, str]:
    """A batch whose one part is one queued chunk of ``texts`` (one embed item each), counted as
    its acceptance counts it."""
    lines = [json.dumps({"texts": [text]}, separators=(",", ":")).encode() for text in texts]
    return one_chunk_batch("q" * len(texts), tenant, inputs=lines)


def summary(doc: dict[str, Any]) -> tuple[Any, ...]:
    """What a test compares of a finished chunk (its results are too large to show)."""
    fields = ("status", "items", "errors", "attempts", "terminal_writes")
    return tuple(doc.get(name) for name in fields)


def wait_status(batch_id: str, chunk: str, statuses: set[str], timeout_s: float) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        doc = chunk_doc(batch_id, chunk)
        return doc if doc.get("status") in statuses else None

    return wait_for(reached, timeout_s, f"chunk {chunk} to be {statuses}", interval_s=0.1)


def test_a_chunk_runs_whole_with_exact_counts_and_each_items_own_vector(
    route: Route, workers: list[Service]
) -> None:
    from worker.tasks.embed import EmbedAdapter

    workers.append(route.start_worker("chunk-worker"))
    tenant = f"chunks-{secrets.token_hex(3)}"
    texts = [f"Sentence {i} about the harbour, the ships and the weather." for i in range(300)]
    batch_id, chunk = queued_chunk(texts, tenant)
    route.publish(ChunkMessage(batch_id=batch_id, chunk_id=chunk, task="embed", tenant=tenant))

    doc = wait_status(batch_id, chunk, {"succeeded", "failed", "cancelled"}, 180)
    assert summary(doc) == ("succeeded", "s" * 300, {}, 1, 1)
    assert doc["done_at"]
    assert len(doc["results"]) == 300
    assert batch_counts(batch_id) == exact_counts(300, succeeded=300)
    assert in_flight(tenant) == 0

    adapter = EmbedAdapter(device="cpu")
    adapter.load()
    for text, stored in zip(texts, doc["results"], strict=True):
        result = unpack_result(stored)
        assert result["model"] == "all-MiniLM-L6-v2" and result["dimensions"] == 384
        (vector,) = np.asarray(result["embeddings"], dtype=np.float64)
        alone = np.asarray(adapter.encode([text])[0], dtype=np.float64)
        assert abs(np.linalg.norm(vector) - 1.0) < 1e-4
        assert float(vector @ alone) >= 0.9999


def test_a_worker_killed_in_the_middle_of_a_chunk_leaves_it_to_the_next_attempt(
    route: Route, workers: list[Service]
) -> None:
    first = route.start_worker("chunk-worker-killed")
    workers.append(first)
    tenant = f"chunks-{secrets.token_hex(3)}"
    # Longer texts: the chunk runs for seconds, so the kill lands in the middle of it.
    clause = "the harbour master counted ships returning through fog while gulls circled"
    texts = [f"{i}: " + " and ".join([clause] * 3) for i in range(300)]
    batch_id, chunk = queued_chunk(texts, tenant)
    route.publish(ChunkMessage(batch_id=batch_id, chunk_id=chunk, task="embed", tenant=tenant))

    wait_status(batch_id, chunk, {"running"}, 120)
    time.sleep(1.0)  # well into the model's work over the chunk's sub-batches
    os.killpg(first.process.pid, signal.SIGKILL)
    first.process.wait(timeout=TIMEOUT)
    killed = chunk_doc(batch_id, chunk)
    assert killed["status"] == "running", "the chunk ended before the kill: make it longer"
    assert batch_counts(batch_id)["running"] == 300

    workers.append(route.start_worker("chunk-worker-next"))
    doc = wait_status(batch_id, chunk, {"succeeded", "failed", "cancelled"}, 240)
    assert summary(doc) == ("succeeded", "s" * 300, {}, 2, 1)
    assert len(doc["results"]) == 300 and all(
        unpack_result(r)["embeddings"] for r in doc["results"]
    )
    # The takeover moved no count; the commit moved each item once.
    assert batch_counts(batch_id) == exact_counts(300, succeeded=300)
    assert in_flight(tenant) == 0
