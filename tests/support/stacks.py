"""The integration pipeline as processes: the session's emulators (``Emulators``), a worker or
a gunicorn ingress started on them (``Service``), tenants and keys, and Pub/Sub topics and
subscriptions of a test's own. The fixtures that start the session's stack are in
tests/conftest.py and tests/integration/conftest.py."""

from __future__ import annotations

import json
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from subprocess import DEVNULL, STDOUT, Popen
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1  # type: ignore[attr-defined]

from emulators.localrun import ROOT
from emulators.process import Emulator, free_port, stop_group, wait_until_answers
from schemas.chunks import ChunkMessage
from schemas.messages import KINDS, Topics, parse, task_subscription, task_topic
from tests.support import json_lines, python_env

PROJECT = "omni-test"
"""The project of the session's emulators."""


@dataclass(frozen=True)
class Emulators:
    project: str
    pubsub: Emulator
    firestore: Emulator

    def env(self) -> dict[str, str]:
        return {
            "GOOGLE_CLOUD_PROJECT": self.project,
            "PUBSUB_EMULATOR_HOST": self.pubsub.address,
            "FIRESTORE_EMULATOR_HOST": self.firestore.address,
        }


KEYS = {"tenant-a": "key-a-0123456789", "tenant-b": "key-b-0123456789"}
API_KEYS = ",".join(f"{tenant}:{key}" for tenant, key in KEYS.items())


@dataclass
class Service:
    process: Popen[bytes]
    url: str
    log_path: Path

    def log_lines(self) -> list[dict[str, Any]]:
        return json_lines(self.log_path)


def start_service(
    name: str,
    argv: list[str],
    env: dict[str, str],
    ready_path: str,
    port: int,
    log_dir: Path,
    timeout_s: float,
) -> Service:
    """``argv`` as a process of its own (its own session, so it is stopped by process group),
    its output to ``<log_dir>/<name>.log``; returns once ``ready_path`` on ``port`` answers,
    within ``timeout_s``, or stops it and fails."""
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


SSE_PING_S = 1.0
"""The test ingress pings quiet event streams every second, so the tests see pings quickly."""


def start_ingress(emulators: Emulators, log_dir: Path, name: str, **extra: str) -> Service:
    """A gunicorn ingress on a free port; ``extra`` adds to its environment or overrides it
    (``API_KEYS`` included)."""
    port = free_port()
    defaults = {"API_KEYS": API_KEYS, "SSE_PING_S": str(SSE_PING_S)}
    env = python_env(**emulators.env(), **{**defaults, **extra}, HOST="127.0.0.1", PORT=str(port))
    argv = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "ingress" / "gunicorn.conf.py")]
    return start_service(name, argv, env, "/health", port, log_dir, 60)


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
