"""Pub/Sub or Firestore unreachable: the client gets 503 + Retry-After and nothing is lost.

An outage is simulated by pausing an emulator's process group (SIGSTOP, later SIGCONT): the port
stays open but nothing answers, as with a network partition, and no state is lost. These tests run
on a private pair of emulators so that pausing one cannot disturb the rest of the suite.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from flask.testing import FlaskClient
from google.api_core import exceptions as gexc
from google.cloud import firestore, pubsub_v1

from emulators.process import Emulator, running_emulators
from emulators.provision import Resources, provision
from emulators.reset import reset_firestore
from ingress import create_app
from ingress.settings import HEALTH_CACHE_S, Settings
from schemas.messages import task_subscription
from tests.support import paused, wait_for

pytestmark = pytest.mark.integration
PROJECT = "omni-outage-test"
KEY = {"X-API-Key": "outage-key"}
EMBED = {"task": "embed", "input": {"texts": ["hello"]}}


@dataclass
class Pair:
    pubsub: Emulator
    firestore: Emulator


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    with running_emulators(PROJECT) as (pubsub, fs), pytest.MonkeyPatch.context() as patch:
        patch.setenv("PUBSUB_EMULATOR_HOST", pubsub.address)
        patch.setenv("FIRESTORE_EMULATOR_HOST", fs.address)
        provision(Resources(project=PROJECT))
        yield Pair(pubsub, fs)


def client_for(pair: Pair, **overrides: Any) -> FlaskClient:
    """An in-process ingress whose Google clients point at the private pair."""
    settings = Settings(
        project=PROJECT,
        api_keys="outage:outage-key",
        publish_timeout_s=2.0,
        firestore_timeout_s=2.0,
        **overrides,
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PUBSUB_EMULATOR_HOST", pair.pubsub.address)
        patch.setenv("FIRESTORE_EMULATOR_HOST", pair.firestore.address)
        return create_app(settings, configure_logs=False).test_client()


def stored_jobs(pair: Pair) -> list[dict[str, Any]]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FIRESTORE_EMULATOR_HOST", pair.firestore.address)
        client = firestore.Client(project=PROJECT)
    return [{"id": doc.id, **(doc.to_dict() or {})} for doc in client.collection("jobs").stream()]


def drain_messages(pair: Pair, wait_s: float) -> int:
    """Pull and ack whatever the embed subscription holds; how many there were."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PUBSUB_EMULATOR_HOST", pair.pubsub.address)
        subscriber = pubsub_v1.SubscriberClient()
    path = subscriber.subscription_path(PROJECT, task_subscription("embed"))
    count = 0
    try:
        while True:
            response = subscriber.pull(subscription=path, max_messages=100, timeout=wait_s)
            if not response.received_messages:
                break
            count += len(response.received_messages)
            ack_ids = [m.ack_id for m in response.received_messages]
            subscriber.acknowledge(subscription=path, ack_ids=ack_ids)
    except gexc.DeadlineExceeded:
        pass  # the emulator holds an empty pull open until the deadline
    finally:
        subscriber.close()
    return count


@pytest.fixture(autouse=True)
def _clean(pair: Pair) -> None:
    reset_firestore(pair.firestore.address, PROJECT)


def assert_503(response: Any) -> None:
    assert response.status_code == 503, response.get_data(as_text=True)
    assert response.headers["Content-Type"] == "application/problem+json"
    assert int(response.headers["Retry-After"]) > 0


def test_pubsub_down_answers_503_and_the_job_does_not_stay_queued(pair: Pair) -> None:
    client = client_for(pair)
    with paused(pair.pubsub):
        response = client.post("/v1/jobs", json=EMBED, headers=KEY)
    assert_503(response)
    (job,) = stored_jobs(pair)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "publish_failed"
    assert job["finished_at"] >= job["created_at"]


def test_unknown_topic_answers_503_and_marks_the_job_failed(pair: Pair) -> None:
    client = client_for(pair, jobs_topic="no-such-topic")
    assert_503(client.post("/v1/jobs", json=EMBED, headers=KEY))
    (job,) = stored_jobs(pair)
    assert (job["status"], job["error"]["code"]) == ("failed", "publish_failed")


def test_firestore_down_answers_503_and_publishes_nothing(pair: Pair) -> None:
    client = client_for(pair)
    drain_messages(pair, wait_s=1)
    with paused(pair.firestore):
        assert_503(client.post("/v1/jobs", json=EMBED, headers=KEY))
        assert_503(client.get("/v1/jobs/" + "a" * 32, headers=KEY))
        health = client.get("/health")
        assert health.status_code == 503
        assert health.get_json() == {
            "ok": False,
            "pubsub_ok": True,
            "firestore_ok": False,
            "service": "ingress",
        }
    assert drain_messages(pair, wait_s=3) == 0, (
        "a job message was published for a job never written"
    )
    assert stored_jobs(pair) == []
    # Back up: the same client recovers without a restart; /health once its cached check
    # (HEALTH_CACHE_S) has expired.
    assert client.post("/v1/jobs", json=EMBED, headers=KEY).status_code == 202
    wait_for(
        lambda: client.get("/health").status_code == 200,
        HEALTH_CACHE_S + 10,
        "/health to answer 200 again",
    )
