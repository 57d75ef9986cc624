"""emulators/: start, stop by process group, reset, idempotent provisioning — on a private pair."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from google.api_core import exceptions as gexc
from google.cloud import firestore, pubsub_v1

from emulators import process
from emulators.process import running_emulators
from emulators.provision import ACK_DEADLINE_S, MAX_DELIVERY_ATTEMPTS, Resources, provision
from emulators.reset import reset_firestore, reset_pubsub
from tests.support import alive, descendants

pytestmark = pytest.mark.integration
PROJECT = "omni-emulators-test"


def test_emulators_answer_then_stop_without_leaving_a_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with running_emulators(PROJECT) as (pubsub, fs):
        pids = {pubsub.process.pid, fs.process.pid}
        for emulator in (pubsub, fs):
            pids |= descendants(emulator.process.pid)
        # gcloud's wrapper and the JVM it starts, for each emulator.
        assert len(pids) >= 4
        java = [pid for pid in pids if b"java" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(java) == 2
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub.address)
        monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", fs.address)

        # An older subscription with a retry policy: provisioning must clear it (the worker
        # backs off itself; see docs/reliability.md).
        resources = Resources(project=PROJECT)
        subscriber = pubsub_v1.SubscriberClient()
        pubsub_v1.PublisherClient().create_topic(name=resources.topic_path("embed"), timeout=10)
        subscriber.create_subscription(
            request={
                "name": resources.subscription_path("embed"),
                "topic": resources.topic_path("embed"),
                "retry_policy": {"minimum_backoff": {"seconds": 10}},
            },
            timeout=10,
        )
        provision(resources)
        provision(resources)  # idempotent: converges instead of failing
        subscription = subscriber.get_subscription(
            subscription=resources.subscription_path("embed"), timeout=10
        )
        assert subscription.topic == resources.topic_path("embed")
        assert subscription.ack_deadline_seconds == ACK_DEADLINE_S
        assert "retry_policy" not in subscription
        assert subscription.dead_letter_policy.dead_letter_topic == resources.dead_letter_topic_path
        assert subscription.dead_letter_policy.max_delivery_attempts == MAX_DELIVERY_ATTEMPTS
        publisher = pubsub_v1.PublisherClient()
        # One subscription on each task's topic of each kind, and only that one.
        for task, kind in resources.routes():
            topic = resources.topic_path(task, kind)
            names = set(publisher.list_topic_subscriptions(topic=topic, timeout=10))
            assert names == {resources.subscription_path(task, kind)}

        reset_pubsub(pubsub.address)
        with pytest.raises(gexc.NotFound):
            subscriber.get_subscription(
                subscription=resources.subscription_path("embed"), timeout=10
            )
        provision(resources)
        fresh = subscriber.get_subscription(
            subscription=resources.subscription_path("embed"), timeout=10
        )
        assert fresh.topic == resources.topic_path("embed") and not fresh.filter
        subscriber.close()

        doc = firestore.Client(project=PROJECT).collection("jobs").document("x")
        doc.set({"a": 1}, timeout=10)
        reset_firestore(fs.address, PROJECT)
        assert not doc.get(timeout=10).exists

    assert not [pid for pid in pids if alive(pid)], "an emulator process outlived stop()"


def test_an_emulator_whose_chosen_port_was_taken_starts_on_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The race that failed CI once: another process binds the port between our pick and the JVM's
    # bind, and the emulator exits 0. Here the first pick is a port that is already listening.
    taker = socket.socket()
    taker.bind(("127.0.0.1", 0))
    taker.listen()
    taken = taker.getsockname()[1]
    picks = iter([process.free_port(), taken])
    real_free_port = process.free_port
    monkeypatch.setattr(process, "free_port", lambda: next(picks, None) or real_free_port())
    try:
        with running_emulators(PROJECT) as (_pubsub, fs):
            assert fs.port != taken
            assert fs.process.poll() is None
        # A port the caller named is theirs: no silent move.
        with (
            pytest.raises(RuntimeError, match="exited"),
            running_emulators(PROJECT, firestore_port=taken),
        ):
            pass
    finally:
        taker.close()
