"""The Pub/Sub message that carries a job from the ingress to a worker.

The message names the job; the job's input stays in its Firestore document (the source of truth),
which the worker reads anyway when it claims the job. Attributes repeat the routing fields so that a
subscription filter or a router can act without parsing the body.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MESSAGE_VERSION = 1
"""Bumped when the body's shape changes; workers refuse versions they do not know."""


class JobMessage(BaseModel):
    model_config = ConfigDict(frozen=True)

    job_id: str = Field(min_length=1)
    task: str = Field(min_length=1)
    tenant: str = Field(min_length=1)

    def to_pubsub(self) -> tuple[bytes, dict[str, str]]:
        """The message body and attributes to publish."""
        body = json.dumps({"v": MESSAGE_VERSION, "job_id": self.job_id}).encode()
        return body, {"job_id": self.job_id, "task": self.task, "tenant": self.tenant}

    @classmethod
    def from_pubsub(cls, data: bytes, attributes: dict[str, str]) -> JobMessage:
        """Parse a received message; raises ``ValueError`` when it is not one of ours."""
        try:
            body: Any = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError("message body is not JSON") from exc
        if not isinstance(body, dict):
            raise ValueError("message body is not a JSON object")
        if body.get("v") != MESSAGE_VERSION:
            raise ValueError(f"unknown message version {body.get('v')!r}")
        job_id = body.get("job_id")
        if not isinstance(job_id, str) or job_id != attributes.get("job_id"):
            raise ValueError("job_id in body and attributes differ")
        return cls(
            job_id=job_id, task=attributes.get("task", ""), tenant=attributes.get("tenant", "")
        )


DEFAULT_TOPIC = "jobs"
"""Topic the ingress publishes jobs to (``JOBS_TOPIC``)."""
DEFAULT_SUBSCRIPTION_PREFIX = "jobs-worker"
"""Task subscriptions are named ``<prefix>-<task>`` (``JOBS_SUBSCRIPTION_PREFIX``)."""
DEFAULT_DEAD_LETTER_TOPIC = "jobs-dead"
"""Where Pub/Sub moves a job message after the maximum deliveries."""
DEFAULT_DEAD_LETTER_SUBSCRIPTION = "jobs-dead-handler"
"""The push subscription that hands dead letters to the dead-letter function."""


def task_subscription(task: str, prefix: str = DEFAULT_SUBSCRIPTION_PREFIX) -> str:
    """The subscription one task's workers pull from: every pool serving ``task`` shares it."""
    return f"{prefix}-{task}"


def task_filter(task: str) -> str:
    """The subscription filter that lets only ``task``'s messages through (production Pub/Sub
    honours it; the emulator does not, so the worker applies the same rule, see
    ``worker.consumer``)."""
    return f'attributes.task = "{task}"'
