"""The Pub/Sub messages that carry work from the ingress to a worker: a job, or a batch's chunk.

A message names its unit of work; the input stays in its Firestore document (the source of truth),
which the worker reads anyway when it claims it. Attributes repeat the routing fields so that a
router can act without parsing the body. Each task and kind has its own topic and subscription
(``task_topic``, ``task_subscription``): no subscription filter anywhere, so the emulator, which
ignores filters, routes as production does.

Every message says its ``kind`` (attribute and body) and its version (``v``). A job is version 1
(its body also carried no kind before chunks existed: still read as a job); a chunk is version 2.
``parse`` tells garbage (``ValueError``: acked as poison) from a message of a kind or version this
release does not know (``UnknownMessage``: nacked, so a newer worker takes it, during a rollout).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from schemas.chunks import ChunkMessage
from schemas.tasks import TASKS

MESSAGE_VERSION = 1
"""A job message's version; workers refuse versions they do not know."""
CHUNK_VERSION = 2
"""A chunk message's version."""
JOB_KIND, CHUNK_KIND = "job", "chunk"


class UnknownMessage(ValueError):
    """A well-formed message of a kind or version this release cannot read: not poison."""


def _body(data: bytes, version: int, name: str) -> dict[str, Any]:
    """A message's body: a JSON object of ``version`` (``name`` says which message it is in the
    error for another version)."""
    try:
        body: Any = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError("message body is not JSON") from exc
    if not isinstance(body, dict):
        raise ValueError("message body is not a JSON object")
    if body.get("v") != version:
        raise UnknownMessage(f"unknown {name} version {body.get('v')!r}")
    return body


INTERACTIVE, BATCH = "interactive", "batch"
"""A single job's priority classes (``"priority"`` of ``POST /v1/jobs``)."""


class JobMessage(BaseModel):
    model_config = ConfigDict(frozen=True)

    job_id: str = Field(min_length=1)
    task: str = Field(min_length=1)
    tenant: str = Field(min_length=1)
    priority: str = INTERACTIVE
    """``batch``: the worker runs it as batch work (after waiting single jobs, docs/scheduling.md).
    An attribute only when not the default, so an interactive job's message is unchanged."""

    def to_pubsub(self) -> tuple[bytes, dict[str, str]]:
        """The message body and attributes to publish."""
        body = json.dumps({"v": MESSAGE_VERSION, "kind": JOB_KIND, "job_id": self.job_id})
        attributes = {"kind": JOB_KIND, "job_id": self.job_id}
        if self.priority != INTERACTIVE:
            attributes["priority"] = self.priority
        return body.encode(), {**attributes, "task": self.task, "tenant": self.tenant}

    @classmethod
    def from_pubsub(cls, data: bytes, attributes: dict[str, str]) -> JobMessage:
        """Parse a received message; raises ``ValueError`` when it is not one of ours."""
        body = _body(data, MESSAGE_VERSION, "message")
        job_id = body.get("job_id")
        if not isinstance(job_id, str) or job_id != attributes.get("job_id"):
            raise ValueError("job_id in body and attributes differ")
        return cls(
            job_id=job_id,
            task=attributes.get("task", ""),
            tenant=attributes.get("tenant", ""),
            priority=attributes.get("priority", INTERACTIVE),
        )


def chunk_to_pubsub(message: ChunkMessage) -> tuple[bytes, dict[str, str]]:
    """A chunk message's body and attributes."""
    ids = {"batch_id": message.batch_id, "chunk_id": message.chunk_id}
    body = json.dumps({"v": CHUNK_VERSION, "kind": CHUNK_KIND, **ids}).encode()
    return body, {"kind": CHUNK_KIND, **ids, "task": message.task, "tenant": message.tenant}


def parse(data: bytes, attributes: dict[str, str]) -> JobMessage | ChunkMessage:
    """Either kind of message; ``UnknownMessage`` for a kind or version this release does not
    read, ``ValueError`` for anything that is not one of ours."""
    kind = attributes.get("kind", JOB_KIND)
    if kind == JOB_KIND:
        return JobMessage.from_pubsub(data, attributes)
    if kind != CHUNK_KIND:
        raise UnknownMessage(f"unknown message kind {kind!r}")
    body = _body(data, CHUNK_VERSION, "chunk message")
    for field in ("batch_id", "chunk_id"):
        if not isinstance(body.get(field), str) or body[field] != attributes.get(field):
            raise ValueError(f"{field} in body and attributes differ")
    return ChunkMessage(
        batch_id=body["batch_id"],
        chunk_id=body["chunk_id"],
        task=attributes.get("task", ""),
        tenant=attributes.get("tenant", ""),
    )


DEFAULT_TOPIC = "jobs"
"""The topics' base name (``JOBS_TOPIC``): task *t*'s jobs go to ``<base>-t``, its chunks to
``<base>-t-chunks``."""
DEFAULT_SUBSCRIPTION_PREFIX = "worker"
"""Task *t*'s subscriptions are ``<prefix>-t`` and ``<prefix>-t-chunks``
(``JOBS_SUBSCRIPTION_PREFIX``). Not the filtered ``jobs-worker-t`` of the shared topic: a
subscription cannot change topic, and the old ones drain during a rollout (docs/deploy.md)."""
DEFAULT_DEAD_LETTER_TOPIC = "jobs-dead"
"""Where Pub/Sub moves a message after the maximum deliveries (one for every subscription)."""
DEFAULT_DEAD_LETTER_SUBSCRIPTION = "jobs-dead-handler"
"""The push subscription that hands dead letters to the dead-letter function."""
KINDS = (JOB_KIND, CHUNK_KIND)
"""Every kind of message; each has a topic (and a subscription) per task."""


def _routed(name: str, task: str, kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown message kind {kind!r}")
    return f"{name}-{task}" if kind == JOB_KIND else f"{name}-{task}-chunks"


def task_topic(task: str, kind: str = JOB_KIND, base: str = DEFAULT_TOPIC) -> str:
    """The topic ``task``'s messages of ``kind`` are published to. Routing is by topic, not by a
    subscription filter, so that the emulator (which ignores filters) delivers what production
    delivers: a task pool gets only its own tasks' messages, and a batch's chunks have their own
    topic, so they have their own flow control in the worker."""
    return _routed(base, task, kind)


def task_subscription(
    task: str, kind: str = JOB_KIND, prefix: str = DEFAULT_SUBSCRIPTION_PREFIX
) -> str:
    """The subscription on ``task_topic(task, kind)``: every pool serving ``task`` pulls from it
    (competing consumers)."""
    return _routed(prefix, task, kind)


def kind_of(message: JobMessage | ChunkMessage) -> str:
    """The kind of a message, as its ``kind`` attribute says it."""
    return CHUNK_KIND if isinstance(message, ChunkMessage) else JOB_KIND


def encode(message: JobMessage | ChunkMessage) -> tuple[bytes, dict[str, str]]:
    """Either kind of message's body and attributes."""
    if isinstance(message, ChunkMessage):
        return chunk_to_pubsub(message)
    return message.to_pubsub()


class UnknownTask(ValueError):
    """A message for a task the catalogue does not have: it has no topic."""


class Topics:
    """The topic path of every task and kind of the catalogue, built once: a publish costs a
    dict lookup. A task outside the catalogue has no topic (``UnknownTask``)."""

    def __init__(self, project: str, base: str = DEFAULT_TOPIC, tasks: Iterable[str] = TASKS):
        self._paths = {
            (task, kind): f"projects/{project}/topics/{task_topic(task, kind, base)}"
            for task in tasks
            for kind in KINDS
        }

    def path(self, task: str, kind: str = JOB_KIND) -> str:
        try:
            return self._paths[task, kind]
        except KeyError:
            raise UnknownTask(f"no topic for task {task!r} ({kind})") from None

    def of(self, message: JobMessage | ChunkMessage) -> str:
        """Where ``message`` is published."""
        return self.path(message.task, kind_of(message))

    def paths(self) -> list[str]:
        """Every topic path, jobs and chunks of each task."""
        return list(self._paths.values())
