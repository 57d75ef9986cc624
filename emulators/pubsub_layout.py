"""Omni's Pub/Sub resources as plain data: their names (``Resources``), each subscription's
settings, and the requests that create them (``pubsub_requests``), which emulators/provision.py
sends and ``python -m deploy --dry-run`` prints.

    jobs-<task>        ──▶ worker-<task>         one pair per task (pull; dead letter
    jobs-<task>-chunks ──▶ worker-<task>-chunks  after 5 deliveries; no retry policy)
                               └──▶ jobs-dead ──▶ jobs-dead-handler (push to the dead-letter
                                                                     function)

One topic per task and kind (a job, a batch's chunk), each with one subscription, and no filter
anywhere: the emulator ignores subscription filters, so routing by topic is what makes it deliver
what production delivers. One subscription per task, not per worker pool: every pool that serves a
task pulls from that task's subscriptions (competing consumers), so pools can be composed freely
(``WORKER_TASKS``) and no task is delivered to two pools (docs/decisions.md, "Routing").

The worker subscription has no retry policy: the worker delays a failed job's redelivery itself
(10 s doubling to 600 s), because the emulator strands messages when a retry policy and a
dead-letter policy are combined and a subscriber dies (docs/reliability.md has the measurement).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from schemas.messages import (
    DEFAULT_DEAD_LETTER_SUBSCRIPTION,
    DEFAULT_DEAD_LETTER_TOPIC,
    DEFAULT_SUBSCRIPTION_PREFIX,
    DEFAULT_TOPIC,
    JOB_KIND,
    KINDS,
    task_subscription,
    task_topic,
)
from schemas.tasks import TASKS

ACK_DEADLINE_S = 20
"""Subscription ack deadline, seconds. Short on purpose: the worker's client extends leases while it
works, and a short deadline brings a dead worker's messages back quickly."""
RETRY_MIN_BACKOFF_S = 10
"""Dead-letter push retries: seconds before the first retry (exponential from here)."""
RETRY_MAX_BACKOFF_S = 600
"""Longest wait between push retries, seconds (Pub/Sub's own maximum)."""
MESSAGE_RETENTION_S = 7 * 24 * 3600
"""How long an unacked job message is kept, seconds (Pub/Sub's maximum, 7 days)."""
MAX_DELIVERY_ATTEMPTS = 5
"""Deliveries of one message before it goes to the dead-letter topic (``WORKER_MAX_ATTEMPTS``)."""


@dataclass(frozen=True)
class Resources:
    project: str
    topic: str = DEFAULT_TOPIC
    subscription_prefix: str = DEFAULT_SUBSCRIPTION_PREFIX
    tasks: tuple[str, ...] = tuple(TASKS)
    dead_letter_topic: str = DEFAULT_DEAD_LETTER_TOPIC
    dead_letter_subscription: str = DEFAULT_DEAD_LETTER_SUBSCRIPTION
    # Where the dead-letter subscription pushes (the function's URL); None creates no
    # subscription (an Eventarc trigger makes its own).
    dead_letter_endpoint: str | None = None
    # The identity whose OIDC token the push carries (needs roles/run.invoker on the function);
    # None pushes unauthenticated, which only the emulator's functions-framework accepts.
    dead_letter_push_service_account: str | None = None
    max_delivery_attempts: int = MAX_DELIVERY_ATTEMPTS
    retry_min_backoff_s: int = RETRY_MIN_BACKOFF_S
    retry_max_backoff_s: int = RETRY_MAX_BACKOFF_S

    def _path(self, kind: str, name: str) -> str:
        return f"projects/{self.project}/{kind}/{name}"

    def topic_path(self, task: str, kind: str = JOB_KIND) -> str:
        return self._path("topics", task_topic(task, kind, self.topic))

    def subscription_path(self, task: str, kind: str = JOB_KIND) -> str:
        return self._path("subscriptions", task_subscription(task, kind, self.subscription_prefix))

    def routes(self) -> list[tuple[str, str]]:
        """Every (task, kind): one topic and one subscription each."""
        return [(task, kind) for task in self.tasks for kind in KINDS]

    @property
    def dead_letter_topic_path(self) -> str:
        return self._path("topics", self.dead_letter_topic)

    @property
    def dead_letter_subscription_path(self) -> str:
        return self._path("subscriptions", self.dead_letter_subscription)


def _duration(seconds: int) -> dict[str, int]:
    """A protobuf Duration as plain data (the clients accept the dict; JSON can print it)."""
    return {"seconds": seconds}


def _retry_policy(resources: Resources) -> dict[str, object]:
    return {
        "minimum_backoff": _duration(resources.retry_min_backoff_s),
        "maximum_backoff": _duration(resources.retry_max_backoff_s),
    }


def _subscription_settings(
    resources: Resources, task: str, kind: str = JOB_KIND
) -> dict[str, object]:
    return {
        "name": resources.subscription_path(task, kind),
        "topic": resources.topic_path(task, kind),
        "ack_deadline_seconds": ACK_DEADLINE_S,
        "dead_letter_policy": {
            "dead_letter_topic": resources.dead_letter_topic_path,
            "max_delivery_attempts": resources.max_delivery_attempts,
        },
        "message_retention_duration": _duration(MESSAGE_RETENTION_S),
    }


def _dead_letter_subscription_settings(resources: Resources) -> dict[str, object]:
    push: dict[str, object] = {"push_endpoint": resources.dead_letter_endpoint}
    if resources.dead_letter_push_service_account:
        # Cloud Run checks the token's audience against the service URL.
        push["oidc_token"] = {
            "service_account_email": resources.dead_letter_push_service_account,
            "audience": resources.dead_letter_endpoint,
        }
    return {
        "name": resources.dead_letter_subscription_path,
        "topic": resources.dead_letter_topic_path,
        "ack_deadline_seconds": ACK_DEADLINE_S,
        "push_config": push,
        "retry_policy": _retry_policy(resources),
        "message_retention_duration": _duration(MESSAGE_RETENTION_S),
    }


def pubsub_requests(resources: Resources) -> list[tuple[str, dict[str, Any]]]:
    """What ``provision`` sends, in order: ``("create_topic", {"name": ...})`` per topic, then
    ``("converge_subscription", settings)`` per subscription (create, or update if it exists)."""
    topics = [resources.topic_path(task, kind) for task, kind in resources.routes()]
    calls: list[tuple[str, dict[str, Any]]] = [
        ("create_topic", {"name": topic}) for topic in (resources.dead_letter_topic_path, *topics)
    ]
    # The dead-letter side first: nothing may be dead-lettered before someone listens.
    if resources.dead_letter_endpoint is not None:
        calls.append(("converge_subscription", _dead_letter_subscription_settings(resources)))
    for task, kind in resources.routes():
        calls.append(("converge_subscription", _subscription_settings(resources, task, kind)))
    return calls
