"""The running pipeline for integration tests: a real worker process and a real gunicorn ingress,
both on the session's emulators. Tests talk HTTP to the ingress, as a client would."""

from __future__ import annotations

import json
import secrets
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from subprocess import DEVNULL, STDOUT, Popen
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from google.cloud import firestore, pubsub_v1  # type: ignore[attr-defined]

from emulators.localrun import ROOT
from emulators.process import free_port, stop_group, wait_until_answers
from schemas.batches import COUNTERS, CountDeltas, counts_of
from schemas.chunks import CHUNKS, ChunkMessage, chunk_id, pack_inputs
from schemas.jobs import new_job_id
from schemas.messages import KINDS, Topics, parse, task_subscription, task_topic
from schemas.quota import COUNTED_FLAG, in_flight_of, shard_paths
from tests.conftest import Emulators
from tests.support import json_lines, python_env

KEYS = {"tenant-a": "key-a-0123456789", "tenant-b": "key-b-0123456789"}
API_KEYS = ",".join(f"{tenant}:{key}" for tenant, key in KEYS.items())


@dataclass
class Service:
    process: Popen[bytes]
    url: str
    log_path: Path

    def log_lines(self) -> list[dict[str, Any]]:
        return json_lines(self.log_path)


def _start(
    name: str,
    argv: list[str],
    env: dict[str, str],
    ready_path: str,
    port: int,
    log_dir: Path,
    timeout_s: float,
) -> Service:
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        process = Popen(
            argv, env=env, stdin=DEVNULL, stdout=log, stderr=STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answers(url + ready_path, process, timeout_s, name)
    except BaseException:
        stop_group(process, 10)
        raise
    return Service(process, url, log_path)


@pytest.fixture(scope="session")
def log_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="omni-test-logs-") as path:
        yield Path(path)


@pytest.fixture(scope="session")
def model_repository() -> Iterator[Path]:
    """The worker's ``MODEL_REPOSITORY``: empty at start; tests publish models into it."""
    with tempfile.TemporaryDirectory(prefix="omni-models-") as path:
        yield Path(path)


@pytest.fixture(scope="session")
def worker(emulators: Emulators, log_dir: Path, model_repository: Path) -> Iterator[Service]:
    """``python -m worker`` with every real model, pulling from the session's subscription."""
    port = free_port()
    env = python_env(
        **emulators.env(), WORKER_HTTP_PORT=str(port), MODEL_REPOSITORY=str(model_repository)
    )
    service = _start("worker", [sys.executable, "-m", "worker"], env, "/readyz", port, log_dir, 180)
    yield service
    stop_group(service.process, 30)


@pytest.fixture(scope="session")
def ingress(emulators: Emulators, log_dir: Path) -> Iterator[Service]:
    """gunicorn serving ``ingress:create_app()`` from its config file, two tenants' keys set."""
    service = start_ingress(emulators, log_dir, "ingress")
    yield service
    stop_group(service.process, 30)


SSE_PING_S = 1.0
"""The test ingress pings quiet event streams every second, so the tests see pings quickly."""


def start_ingress(emulators: Emulators, log_dir: Path, name: str, **extra: str) -> Service:
    """A gunicorn ingress on a free port; ``extra`` adds to its environment or overrides it
    (``API_KEYS`` included)."""
    port = free_port()
    defaults = {"API_KEYS": API_KEYS, "SSE_PING_S": str(SSE_PING_S)}
    env = python_env(**emulators.env(), **{**defaults, **extra}, HOST="127.0.0.1", PORT=str(port))
    argv = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "ingress" / "gunicorn.conf.py")]
    return _start(name, argv, env, "/health", port, log_dir, 60)


def fresh_tenants(*names: str) -> dict[str, str]:
    """Fresh tenant names for one test, by role (a random suffix): their counters, buckets and
    stream counts start empty. Each one's key is ``tenant_key(tenant)``."""
    suffix = secrets.token_hex(3)
    return {name: f"{name}-{suffix}" for name in names}


def tenant_key(tenant: str) -> dict[str, str]:
    """The API key header of a tenant of ``limited_ingress``."""
    return {"X-API-Key": f"key-{tenant}"}


@contextmanager
def limited_ingress(
    emulators: Emulators,
    log_dir: Path,
    name: str,
    names: list[str],
    limits: dict[str, Any],
    **extra: str,
) -> Iterator[Service]:
    """A gunicorn ingress whose tenants are ``names`` (key ``key-<tenant>``) under ``limits``
    (``TENANT_LIMITS``)."""
    service = start_ingress(
        emulators,
        log_dir,
        name,
        API_KEYS=",".join(f"{tenant}:key-{tenant}" for tenant in names),
        TENANT_LIMITS=json.dumps(limits),
        **extra,
    )
    try:
        yield service
    finally:
        stop_group(service.process, 30)


def sink_topic_named(emulators: Emulators, name: str) -> str:
    """A topics' base name (``JOBS_TOPIC``) whose topics no subscription reads (created if
    missing, one per task and kind): an ingress publishing to them leaves its jobs queued, and no
    worker of the session spends time on them."""
    publisher = pubsub_v1.PublisherClient()
    for topic in Topics(emulators.project, name).paths():
        with suppress(gexc.AlreadyExists):
            publisher.create_topic(name=topic, timeout=30)
    return name


def own_routes(
    emulators: Emulators, name: str, tasks: tuple[str, ...] = ("embed",), ack_deadline_s: int = 10
) -> str:
    """Topics and subscriptions of a test's own, for each of ``tasks`` and each kind: the topics
    of base ``name`` (``JOBS_TOPIC``) and subscriptions of prefix ``name``
    (``JOBS_SUBSCRIPTION_PREFIX``), without a dead-letter policy (the worker counts attempts
    itself, by its claims). Returns ``name``."""
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    try:
        for task in tasks:
            for kind in KINDS:
                topic = publisher.topic_path(emulators.project, task_topic(task, kind, name))
                publisher.create_topic(name=topic, timeout=30)
                subscription = task_subscription(task, kind, name)
                request = {
                    "name": subscriber.subscription_path(emulators.project, subscription),
                    "topic": topic,
                    "ack_deadline_seconds": ack_deadline_s,
                }
                subscriber.create_subscription(request=request, timeout=30)
    finally:
        subscriber.close()
    return name


def received_chunks(subscription: str, at_least: int = 0) -> list[ChunkMessage]:
    """Every chunk message the subscription holds (acked): until ``at_least`` came and two pulls
    came back empty, so a message published too many is seen too."""
    subscriber = pubsub_v1.SubscriberClient()
    found: list[ChunkMessage] = []
    empty = 0
    try:
        while empty < 2 or len(found) < at_least:
            response = subscriber.pull(
                subscription=subscription, max_messages=1000, timeout=10, return_immediately=True
            )
            if not response.received_messages:
                empty += 1
                if empty > 30:
                    break
                continue
            empty = 0
            for item in response.received_messages:
                message = parse(item.message.data, dict(item.message.attributes))
                assert isinstance(message, ChunkMessage)
                found.append(message)
            subscriber.acknowledge(
                subscription=subscription, ack_ids=[m.ack_id for m in response.received_messages]
            )
    finally:
        subscriber.close()
    return found


# -- batches and chunks written directly, as the ingress would leave them -----------------------

FIRESTORE_TIMEOUT = 30
"""Seconds a helper below waits for one Firestore read or write."""


def write_chunk(
    batch: firestore.DocumentReference,
    start: int,
    items: str,
    tenant: str,
    at: datetime,
    inputs: list[bytes] | None = None,
    counted: bool = True,
    **fields: Any,
) -> str:
    """A chunk of ``batch`` (its part 0) from item ``start`` on, queued and last changed ``at``
    unless ``fields`` say otherwise, whose items stand as ``items`` says; its id. Its input lines
    are ``inputs`` (one embed text each by default). If ``counted``, the same commit counts its
    items as acceptance counts them and moves each running, succeeded or failed letter to its
    status."""
    client = firestore.Client()
    lines = inputs if inputs is not None else [b'{"texts":["x"]}'] * len(items)
    doc = {
        "tenant": tenant,
        "task": "embed",
        "batch_id": batch.id,
        "batch_path": batch.path,
        "part": 0,
        "start": start,
        "n": len(items),
        "inputs": pack_inputs(lines),
        "items": items,
        COUNTED_FLAG: True,
        "status": "queued",
        "attempts": 0,
        "terminal_writes": 0,
        "created_at": at,
        "updated_at": at,
        **fields,
    }
    writes = client.batch()
    writes.create(batch.collection(CHUNKS).document(chunk_id(start)), doc)
    if counted:
        deltas = CountDeltas()
        deltas.added(batch.path, tenant, len(items))
        for code, status in (("r", "running"), ("s", "succeeded"), ("f", "failed")):
            deltas.move({**doc, "status": "queued"}, status, count=items.count(code))
        deltas.write(writes, client, at)
    writes.commit(timeout=FIRESTORE_TIMEOUT)
    return chunk_id(start)


def one_chunk_batch(
    items: str,
    tenant: str,
    inputs: list[bytes] | None = None,
    counted: bool = True,
    **fields: Any,
) -> tuple[str, str]:
    """A new batch of embed items of ``tenant`` whose one part is one chunk (``write_chunk``
    with these arguments), both written now; ``(batch_id, chunk_id)``."""
    now = datetime.now(UTC)
    batch = firestore.Client().collection("batches").document(new_job_id())
    batch.create({"tenant": tenant, "task": "embed", "created_at": now, "counts": {}})
    chunk = write_chunk(batch, 0, items, tenant, now, inputs, counted, **fields)
    return batch.id, chunk


def chunk_doc(batch_id: str, chunk: str) -> dict[str, Any]:
    ref = firestore.Client().document("batches", batch_id, CHUNKS, chunk)
    return ref.get(timeout=FIRESTORE_TIMEOUT).to_dict() or {}


def batch_counts(batch_id: str) -> dict[str, int]:
    """The batch's counts, its counter shards summed."""
    ref = firestore.Client().collection("batches").document(batch_id)
    shards = [s.to_dict() or {} for s in ref.collection(COUNTERS).stream(timeout=FIRESTORE_TIMEOUT)]
    return counts_of(ref.get(timeout=FIRESTORE_TIMEOUT).to_dict() or {}, shards).model_dump()


def exact_counts(total: int, **nonzero: int) -> dict[str, int]:
    """What ``batch_counts`` of ``total`` items reads when only the statuses named are not 0."""
    statuses = ("queued", "running", "succeeded", "failed", "cancelled")
    assert set(nonzero) <= set(statuses), nonzero
    return {"total": total, **{status: nonzero.get(status, 0) for status in statuses}}


def in_flight(tenant: str) -> int:
    """The tenant's items in flight, its counter shards summed."""
    client = firestore.Client()
    refs = [client.document(*parts) for parts in shard_paths(tenant)]
    return in_flight_of([s.to_dict() or {} for s in client.get_all(refs) if s.exists])
