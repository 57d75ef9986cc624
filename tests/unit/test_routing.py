"""Routing by topic (schemas/messages.py): one topic and one subscription per task and kind, and
every publisher (ingress, dead-letter requeue) picking its topic by the message's task and kind."""

from __future__ import annotations

import base64
from concurrent.futures import Future
from typing import Any

import pytest

from deadletter.main import REQUEUE, Requeue, handle
from ingress.publisher import JobPublisher
from schemas.chunks import ChunkMessage
from schemas.messages import (
    CHUNK_KIND,
    JOB_KIND,
    JobMessage,
    Topics,
    UnknownTask,
    encode,
    parse,
    task_subscription,
    task_topic,
)
from schemas.tasks import TASKS

JOB = JobMessage(job_id="j1", task="forecast", tenant="t")
CHUNK = ChunkMessage(batch_id="b", chunk_id="0000000000", task="embed", tenant="t")


def test_each_task_and_kind_has_its_own_topic_and_subscription() -> None:
    assert task_topic("embed") == "jobs-embed"
    assert task_topic("embed", CHUNK_KIND) == "jobs-embed-chunks"
    assert task_topic("embed", CHUNK_KIND, "t") == "t-embed-chunks"
    assert task_subscription("embed") == "worker-embed"
    assert task_subscription("embed", CHUNK_KIND, "p") == "p-embed-chunks"
    with pytest.raises(ValueError, match="kind"):
        task_topic("embed", "shard")
    names = {task_topic(task, kind) for task in TASKS for kind in (JOB_KIND, CHUNK_KIND)}
    assert len(names) == 2 * len(TASKS)


def test_topics_are_built_once_for_the_catalogue_and_refuse_other_tasks() -> None:
    topics = Topics("p")
    assert topics.of(JOB) == "projects/p/topics/jobs-forecast"
    assert topics.of(CHUNK) == "projects/p/topics/jobs-embed-chunks"
    assert len(topics.paths()) == 2 * len(TASKS)
    with pytest.raises(UnknownTask):
        topics.path("paint")


def test_encode_gives_each_kind_what_parse_reads_back() -> None:
    for message in (JOB, CHUNK):
        assert parse(*encode(message)) == message


class Client:
    """A publisher client that records where each message went."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, str]]] = []

    def publish(self, topic: str, data: bytes, **kwargs: Any) -> Future[str]:
        self.sent.append((topic, {k: v for k, v in kwargs.items() if isinstance(v, str)}))
        done: Future[str] = Future()
        done.set_result("id")
        return done


def test_the_ingress_publishes_a_job_to_its_tasks_topic() -> None:
    client = Client()
    JobPublisher(client, Topics("p"), 1.0).publish(JOB)  # type: ignore[arg-type]
    assert [(topic, attrs["task"]) for topic, attrs in client.sent] == [
        ("projects/p/topics/jobs-forecast", "forecast")
    ]


def test_the_ingress_publishes_chunks_to_their_tasks_chunk_topic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from google.pubsub_v1 import PublisherClient as GeneratedPublisher

    calls: list[tuple[str, int]] = []
    monkeypatch.setattr(
        GeneratedPublisher,
        "publish",
        lambda self, topic, messages, **kwargs: calls.append((topic, len(messages))),
    )
    chunks = [CHUNK, CHUNK.model_copy(update={"chunk_id": "0000000256"})]
    JobPublisher(Client(), Topics("p"), 1.0).publish_chunks(chunks)  # type: ignore[arg-type]
    assert calls == [("projects/p/topics/jobs-embed-chunks", 2)]


def envelope(data: bytes, attributes: dict[str, str]) -> dict[str, Any]:
    """A push subscription's envelope, as the dead-letter function receives it."""
    return {"message": {"data": base64.b64encode(data).decode(), "attributes": attributes}}


class Store:
    """A dead-letter store that always asks for a requeue."""

    def settle(self, message: Any, deliveries: str | None) -> str:
        return REQUEUE


@pytest.mark.parametrize(
    ("message", "topic"),
    [(JOB, "projects/p/topics/jobs-forecast"), (CHUNK, "projects/p/topics/jobs-embed-chunks")],
)
def test_a_requeued_dead_letter_goes_back_to_its_tasks_topic_of_its_kind(
    message: JobMessage | ChunkMessage, topic: str
) -> None:
    client = Client()
    requeue = Requeue(client, Topics("p"))
    outcome = handle(envelope(*encode(message)), Store(), requeue)  # type: ignore[arg-type]
    assert outcome == REQUEUE and [sent for sent, _ in client.sent] == [topic]


def test_a_dead_letter_of_a_task_with_no_topic_is_dropped_not_retried_forever() -> None:
    client = Client()
    data, attributes = encode(JOB)
    bad = envelope(data, {**attributes, "task": "paint"})
    outcome = handle(bad, Store(), Requeue(client, Topics("p")))  # type: ignore[arg-type]
    assert outcome == "unknown task" and client.sent == []
