"""Create Omni's Pub/Sub resources, idempotently, on the emulator or on a real project.

One module, two targets: with ``PUBSUB_EMULATOR_HOST`` set (or ``--emulator HOST:PORT``) the
Google client talks to the emulator; otherwise it uses Application Default Credentials against the
project. Running it again converges an existing subscription to the settings below instead of
failing, so a deploy can always run it.

    python -m emulators.provision --project my-project            # real project
    python -m emulators.provision --project omni-local --emulator 127.0.0.1:8085
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

from google.api_core import exceptions as gexc
from google.protobuf import duration_pb2, field_mask_pb2

from schemas.messages import DEFAULT_SUBSCRIPTION, DEFAULT_TOPIC

logger = logging.getLogger(__name__)

ACK_DEADLINE_S = 20
"""Subscription ack deadline, seconds. Short on purpose: the worker's client extends leases while it
works, and a short deadline brings a dead worker's messages back quickly."""
RETRY_MIN_BACKOFF_S = 10
"""Seconds before the first redelivery of a nacked message (exponential from here)."""
RETRY_MAX_BACKOFF_S = 600
"""Longest wait between redeliveries, seconds (Pub/Sub's own maximum)."""
MESSAGE_RETENTION_S = 7 * 24 * 3600
"""How long an unacked job message is kept, seconds (Pub/Sub's maximum, 7 days)."""
ADMIN_TIMEOUT_S = 30.0
EMULATOR_VARIABLE = "PUBSUB_EMULATOR_HOST"


@dataclass(frozen=True)
class Resources:
    project: str
    topic: str = DEFAULT_TOPIC
    subscription: str = DEFAULT_SUBSCRIPTION

    @property
    def topic_path(self) -> str:
        return f"projects/{self.project}/topics/{self.topic}"

    @property
    def subscription_path(self) -> str:
        return f"projects/{self.project}/subscriptions/{self.subscription}"


def _subscription_settings(resources: Resources) -> dict[str, object]:
    return {
        "name": resources.subscription_path,
        "topic": resources.topic_path,
        "ack_deadline_seconds": ACK_DEADLINE_S,
        "retry_policy": {
            "minimum_backoff": duration_pb2.Duration(seconds=RETRY_MIN_BACKOFF_S),
            "maximum_backoff": duration_pb2.Duration(seconds=RETRY_MAX_BACKOFF_S),
        },
        "message_retention_duration": duration_pb2.Duration(seconds=MESSAGE_RETENTION_S),
    }


@contextlib.contextmanager
def _clients_for(emulator_host: str | None) -> Iterator[None]:
    """While building clients, point them at ``emulator_host`` (they read the variable only
    when built); the process's environment is restored afterwards."""
    if emulator_host is None:
        yield
        return
    saved = os.environ.get(EMULATOR_VARIABLE)
    os.environ[EMULATOR_VARIABLE] = emulator_host
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(EMULATOR_VARIABLE, None)
        else:
            os.environ[EMULATOR_VARIABLE] = saved


def provision(resources: Resources, emulator_host: str | None = None) -> None:
    """Make the topic and the worker subscription exist with the settings above.

    ``emulator_host`` targets that emulator; without it, ``PUBSUB_EMULATOR_HOST`` if set, else
    the real project through Application Default Credentials.
    """
    # Imported here so that importing this module (e.g. for its constants) stays cheap.
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]

    with _clients_for(emulator_host):
        publisher = pubsub_v1.PublisherClient()
        subscriber = pubsub_v1.SubscriberClient()
    try:
        try:
            publisher.create_topic(name=resources.topic_path, timeout=ADMIN_TIMEOUT_S)
            logger.info("created topic %s", resources.topic_path)
        except gexc.AlreadyExists:
            logger.info("topic %s exists", resources.topic_path)

        settings = _subscription_settings(resources)
        try:
            subscriber.create_subscription(request=settings, timeout=ADMIN_TIMEOUT_S)
            logger.info("created subscription %s", resources.subscription_path)
        except gexc.AlreadyExists:
            mutable = ["ack_deadline_seconds", "retry_policy", "message_retention_duration"]
            subscriber.update_subscription(
                request={
                    "subscription": settings,
                    "update_mask": field_mask_pb2.FieldMask(paths=mutable),
                },
                timeout=ADMIN_TIMEOUT_S,
            )
            logger.info("updated subscription %s", resources.subscription_path)
    finally:
        subscriber.close()
        publisher.transport.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default=os.environ.get("GOOGLE_CLOUD_PROJECT"), required=False)
    parser.add_argument("--emulator", help="HOST:PORT of the Pub/Sub emulator")
    parser.add_argument("--topic", default=os.environ.get("JOBS_TOPIC", DEFAULT_TOPIC))
    parser.add_argument(
        "--subscription", default=os.environ.get("JOBS_SUBSCRIPTION", DEFAULT_SUBSCRIPTION)
    )
    args = parser.parse_args(argv)
    if not args.project:
        parser.error("--project or GOOGLE_CLOUD_PROJECT is required")
    from schemas.jsonlog import configure_logging

    configure_logging("INFO")
    resources = Resources(project=args.project, topic=args.topic, subscription=args.subscription)
    provision(resources, emulator_host=args.emulator)


if __name__ == "__main__":
    main()
