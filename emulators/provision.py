"""Create Omni's Pub/Sub resources, idempotently, on the emulator or on a real project.

One module, two targets: with ``PUBSUB_EMULATOR_HOST`` set (or ``--emulator HOST:PORT``) the
Google client talks to the emulator; otherwise it uses Application Default Credentials against the
project. Running it again converges an existing subscription to its settings instead of failing,
so a deploy can always run it.

What it creates is drawn in emulators/pubsub_layout.py (the topics, one pair per task and kind,
and each subscription's settings) and, on a real project, in emulators/firestore_indexes.py (the
indexes, TTL policies and index exemptions of ``firestore.indexes.json``).

    python -m emulators.provision --project my-project \
        --deadletter-endpoint https://deadletter-xyz.run.app/ \
        --deadletter-push-service-account omni-deadletter-push@my-project.iam.gserviceaccount.com
    python -m emulators.provision --project omni-local --emulator 127.0.0.1:8085

In production the Pub/Sub service agent needs publisher rights on ``jobs-dead`` and subscriber
rights on each task subscription for dead-lettering to work (see docs/reliability.md). A push
subscription to the dead-letter function authenticates with an OIDC token of its own service
account, which needs ``roles/run.invoker`` on the function (``python -m deploy`` grants it).

Every request is plain data (``pubsub_requests``, ``firestore_admin_requests``), so ``python -m
deploy --dry-run`` prints exactly what provisioning would send.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from google.protobuf import field_mask_pb2

from common.googleapi import AlreadyExists, translated
from emulators.firestore_indexes import INDEXES_FILE as INDEXES_FILE
from emulators.firestore_indexes import firestore_admin_requests as firestore_admin_requests
from emulators.firestore_indexes import firestore_spec as firestore_spec
from emulators.pubsub_layout import ACK_DEADLINE_S as ACK_DEADLINE_S
from emulators.pubsub_layout import MAX_DELIVERY_ATTEMPTS as MAX_DELIVERY_ATTEMPTS
from emulators.pubsub_layout import MESSAGE_RETENTION_S as MESSAGE_RETENTION_S
from emulators.pubsub_layout import RETRY_MAX_BACKOFF_S as RETRY_MAX_BACKOFF_S
from emulators.pubsub_layout import RETRY_MIN_BACKOFF_S as RETRY_MIN_BACKOFF_S
from emulators.pubsub_layout import Resources as Resources

# Private to pubsub_layout.py; tests/ import them from here, where they were first written.
from emulators.pubsub_layout import (
    _dead_letter_subscription_settings as _dead_letter_subscription_settings,
)
from emulators.pubsub_layout import _subscription_settings as _subscription_settings
from emulators.pubsub_layout import pubsub_requests as pubsub_requests
from schemas.messages import DEFAULT_DEAD_LETTER_TOPIC, DEFAULT_SUBSCRIPTION_PREFIX, DEFAULT_TOPIC

logger = logging.getLogger(__name__)

ADMIN_TIMEOUT_S = 30.0
EMULATOR_VARIABLE = "PUBSUB_EMULATOR_HOST"


class ProvisioningUnavailable(RuntimeError):
    """Pub/Sub, or Firestore's Admin API, could not be reached, was overloaded or timed out:
    provisioning did not finish, and running it again converges."""


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
    """Make the topics and the task subscriptions exist with their settings (pubsub_layout.py).

    ``emulator_host`` targets that emulator; without it, ``PUBSUB_EMULATOR_HOST`` if set, else
    the real project through Application Default Credentials.
    """
    # Imported here so that importing this module (e.g. for its constants) stays cheap.
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]

    with _clients_for(emulator_host):
        publisher = pubsub_v1.PublisherClient()
        subscriber = pubsub_v1.SubscriberClient()
    try:
        for method, request in pubsub_requests(resources):
            apply_pubsub(publisher, subscriber, method, request)
    finally:
        subscriber.close()
        publisher.transport.close()


def apply_pubsub(publisher: Any, subscriber: Any, method: str, request: dict[str, Any]) -> None:
    """Send one of ``pubsub_requests``' calls; an existing topic is left as it is."""
    if method == "create_topic":
        try:
            with translated(ProvisioningUnavailable, "topic creation", "Pub/Sub"):
                publisher.create_topic(name=request["name"], timeout=ADMIN_TIMEOUT_S)
            logger.info("created topic %s", request["name"])
        except AlreadyExists:
            logger.info("topic %s exists", request["name"])
    elif method == "converge_subscription":
        _converge(subscriber, request)
    else:
        raise ValueError(f"unknown Pub/Sub call {method}")


def _converge(subscriber: Any, settings: dict[str, Any]) -> None:
    """Create the subscription, or bring an existing one to ``settings``."""
    try:
        with translated(ProvisioningUnavailable, "subscription creation", "Pub/Sub"):
            subscriber.create_subscription(request=settings, timeout=ADMIN_TIMEOUT_S)
        logger.info("created subscription %s", settings["name"])
    except AlreadyExists:
        # retry_policy is always in the mask: absent from ``settings``, it is cleared.
        mutable = sorted(
            {key for key in settings if key not in ("name", "topic", "filter")} | {"retry_policy"}
        )
        subscriber.update_subscription(
            request={
                "subscription": settings,
                "update_mask": field_mask_pb2.FieldMask(paths=mutable),
            },
            timeout=ADMIN_TIMEOUT_S,
        )
        logger.info("updated subscription %s", settings["name"])
        found = subscriber.get_subscription(subscription=settings["name"], timeout=ADMIN_TIMEOUT_S)
        # Pub/Sub fixes a subscription's topic and filter at creation, and recreating it here
        # would drop its backlog: an operator deletes it once drained (docs/deploy.md).
        for key in ("topic", "filter"):
            wanted, have = settings.get(key, ""), getattr(found, key)
            if have != wanted:
                logger.warning(
                    "subscription %s has %s %r, not %r: delete and re-create it once drained",
                    settings["name"],
                    key,
                    have,
                    wanted,
                )


def provision_firestore(project: str) -> None:
    """Apply ``firestore.indexes.json`` (indexes and TTL policies) to a real project.

    Skipped on the emulator, which has no Admin API: it needs no index, and keeps no data long
    enough for a TTL to matter."""
    if os.environ.get("FIRESTORE_EMULATOR_HOST"):
        logger.info("Firestore emulator: no indexes or TTL policies to apply")
        return
    from google.cloud import firestore_admin_v1

    admin = firestore_admin_v1.FirestoreAdminClient()
    for method, request in firestore_admin_requests(project, firestore_spec()):
        apply_firestore(admin, method, request)


def apply_firestore(admin: Any, method: str, request: dict[str, Any]) -> None:
    """Send one of ``firestore_admin_requests``' calls; an existing index is left as it is."""
    try:
        with translated(ProvisioningUnavailable, method):
            getattr(admin, method)(request=request, timeout=ADMIN_TIMEOUT_S)
        logger.info("%s applied", method, extra={"request": str(request)})
    except AlreadyExists:
        logger.info("%s: already there", method)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default=os.environ.get("GOOGLE_CLOUD_PROJECT"), required=False)
    parser.add_argument("--emulator", help="HOST:PORT of the Pub/Sub emulator")
    parser.add_argument(
        "--topic",
        default=os.environ.get("JOBS_TOPIC", DEFAULT_TOPIC),
        help="topics are named TOPIC-TASK (jobs) and TOPIC-TASK-chunks",
    )
    parser.add_argument(
        "--subscription-prefix",
        default=os.environ.get("JOBS_SUBSCRIPTION_PREFIX", DEFAULT_SUBSCRIPTION_PREFIX),
        help="task subscriptions are named PREFIX-TASK and PREFIX-TASK-chunks",
    )
    parser.add_argument(
        "--deadletter-endpoint",
        default=os.environ.get("DEADLETTER_ENDPOINT"),
        help="URL the dead-letter subscription pushes to (omit when an Eventarc trigger is used)",
    )
    parser.add_argument(
        "--deadletter-push-service-account",
        default=os.environ.get("DEADLETTER_PUSH_SERVICE_ACCOUNT"),
        help="the identity whose OIDC token the push carries (roles/run.invoker on the function)",
    )
    parser.add_argument(
        "--deploy-deadletter",
        action="store_true",
        help="also create or update the dead-letter function (gcloud; needs --region)",
    )
    parser.add_argument("--region", default=os.environ.get("REGION"))
    parser.add_argument(
        "--deadletter-service-account", help="the identity the dead-letter function runs as"
    )
    parser.add_argument(
        "--deadletter-trigger-service-account",
        help="the identity its Eventarc trigger invokes it as (roles/run.invoker on it)",
    )
    args = parser.parse_args(argv)
    if not args.project:
        parser.error("--project or GOOGLE_CLOUD_PROJECT is required")
    if args.deploy_deadletter and (args.emulator or not args.region):
        parser.error("--deploy-deadletter needs --region and a real project (no --emulator)")
    from common.jsonlog import configure_logging

    configure_logging("INFO")
    resources = Resources(
        project=args.project,
        topic=args.topic,
        subscription_prefix=args.subscription_prefix,
        dead_letter_endpoint=args.deadletter_endpoint,
        dead_letter_push_service_account=args.deadletter_push_service_account,
    )
    provision(resources, emulator_host=args.emulator)
    if args.emulator is None:
        provision_firestore(args.project)
    if args.deploy_deadletter:
        from emulators.deadletter_deploy import deploy

        deploy(
            args.project,
            args.region,
            DEFAULT_DEAD_LETTER_TOPIC,
            args.deadletter_service_account,
            trigger_service_account=args.deadletter_trigger_service_account,
        )


if __name__ == "__main__":
    main()
