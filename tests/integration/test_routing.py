"""Routing by topic, on the emulator, which ignores subscription filters: each task and kind has a
topic and a subscription of its own, so what the emulator delivers is what production delivers.

An ingress publishes to topics of this module's own (``JOBS_TOPIC``), provisioned as production is
under a prefix of this module's own; no worker pulls them, so the subscriptions are pulled here,
synchronously: a job of one task reaches that task's jobs subscription and no other, and a batch's
chunk reaches its task's chunk subscription and no other.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from google.cloud import pubsub_v1  # type: ignore[attr-defined]

from emulators.process import stop_group
from emulators.provision import Resources, provision
from schemas.messages import CHUNK_KIND, JOB_KIND, parse
from tests.support import wait_for
from tests.support.stacks import KEYS, Emulators, Service, start_ingress

pytestmark = pytest.mark.integration
TIMEOUT = 30
A = {"X-API-Key": KEYS["tenant-a"]}
TOPIC = "routing"
PREFIX = "routing-worker"
SERIES = [{"ds": f"2026-01-{day:02d}", "y": day % 7} for day in range(1, 29)]


@pytest.fixture(scope="module")
def resources(emulators: Emulators) -> Resources:
    resources = Resources(project=emulators.project, topic=TOPIC, subscription_prefix=PREFIX)
    provision(resources)
    return resources


@pytest.fixture(scope="module")
def routed_ingress(emulators: Emulators, log_dir: Path, resources: Resources) -> Iterator[Service]:
    service = start_ingress(emulators, log_dir, "routing-ingress", JOBS_TOPIC=TOPIC)
    try:
        yield service
    finally:
        stop_group(service.process, 30)


@pytest.fixture
def subscriber() -> Iterator[Any]:
    client = pubsub_v1.SubscriberClient()
    yield client
    client.close()


def pull(subscriber: Any, subscription: str) -> list[dict[str, str]]:
    """What ``subscription`` holds now (acked): each message's attributes."""
    response = subscriber.pull(
        subscription=subscription, max_messages=100, timeout=TIMEOUT, return_immediately=True
    )
    received = response.received_messages
    if received:
        subscriber.acknowledge(subscription=subscription, ack_ids=[m.ack_id for m in received])
    for message in received:
        parse(message.message.data, dict(message.message.attributes))  # one of ours
    return [dict(m.message.attributes) for m in received]


def others_hold_nothing(subscriber: Any, resources: Resources, but: tuple[str, str]) -> None:
    """Every subscription but ``but``'s (task, kind) stays empty. Pulled twice each: the emulator
    fans a message out to every subscription of its topic as it is published, and the expected
    one already has it."""
    for task, kind in resources.routes():
        if (task, kind) != but:
            path = resources.subscription_path(task, kind)
            assert pull(subscriber, path) == [] and pull(subscriber, path) == [], path


def drain(subscriber: Any, resources: Resources) -> None:
    for task, kind in resources.routes():
        pull(subscriber, resources.subscription_path(task, kind))


def test_a_job_reaches_its_tasks_jobs_subscription_only(
    routed_ingress: Service, resources: Resources, subscriber: Any
) -> None:
    drain(subscriber, resources)
    for task, task_input in (
        ("embed", {"texts": ["routed"]}),
        ("forecast", {"series": SERIES, "horizon": 3, "frequency": "D"}),
    ):
        response = requests.post(
            f"{routed_ingress.url}/v1/jobs",
            json={"task": task, "input": task_input},
            headers=A,
            timeout=TIMEOUT,
        )
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]

        own = resources.subscription_path(task, JOB_KIND)
        got = wait_for(lambda own=own: pull(subscriber, own) or None, TIMEOUT, f"{task}'s job")
        assert [(m["kind"], m["task"], m["job_id"]) for m in got] == [(JOB_KIND, task, job_id)]
        others_hold_nothing(subscriber, resources, (task, JOB_KIND))


def test_a_batchs_chunk_reaches_its_tasks_chunk_subscription_only(
    routed_ingress: Service, resources: Resources, subscriber: Any
) -> None:
    drain(subscriber, resources)
    response = requests.post(
        f"{routed_ingress.url}/v1/batches",
        json={"task": "embed", "items": [{"texts": [f"item {i}"]} for i in range(3)]},
        headers=A,
        timeout=TIMEOUT,
    )
    assert response.status_code == 202, response.text
    batch_id = response.json()["id"]

    own = resources.subscription_path("embed", CHUNK_KIND)
    got = wait_for(lambda: pull(subscriber, own) or None, TIMEOUT, "the batch's chunk")
    assert [(m["kind"], m["task"], m["batch_id"]) for m in got] == [(CHUNK_KIND, "embed", batch_id)]
    others_hold_nothing(subscriber, resources, ("embed", CHUNK_KIND))
