"""Create Omni's Pub/Sub resources, idempotently, on the emulator or on a real project.

One module, two targets: with ``PUBSUB_EMULATOR_HOST`` set (or ``--emulator HOST:PORT``) the
Google client talks to the emulator; otherwise it uses Application Default Credentials against the
project. Running it again converges an existing subscription to the settings below instead of
failing, so a deploy can always run it.

    jobs-<task>        ──▶ worker-<task>         one pair per task (pull; dead letter
    jobs-<task>-chunks ──▶ worker-<task>-chunks  after 5 deliveries; no retry policy)
                               └──▶ jobs-dead ──▶ jobs-dead-handler (push to the dead-letter
                                                                     function)

One topic per task and kind (a job, a batch's chunk), each with one subscription, and no filter
anywhere: the emulator ignores subscription filters, so routing by topic is what makes it deliver
what production delivers. One subscription per task, not per worker pool: every pool that serves a
task pulls from that task's subscriptions (competing consumers), so pools can be composed freely
(``WORKER_TASKS``) and no task is delivered to two pools (docs/decisions.md, "Routing").

On a real project it also applies ``firestore.indexes.json``: the composite indexes the queries
need, the TTL policies on ``expire_at``, and the single-field index exemptions of its
``fieldOverrides`` (``"indexes": []``): every TTL field (a timestamp that only grows is a write
hotspot when indexed, Firestore's TTL best practice) and the large fields no query reads (a job's
``input``, ``result``, ``events``, ``error``; a chunk's ``inputs``, ``results``, ``errors``,
``items``, ...), whose index entries cost write latency and storage, and for a chunk would pass
Firestore's 40,000 index entries a document. Chunks have a TTL policy of their own: Firestore's TTL
does not delete a batch's subcollections with it. The Firestore emulator has none of these.

    python -m emulators.provision --project my-project \
        --deadletter-endpoint https://deadletter-xyz.run.app/ \
        --deadletter-push-service-account omni-deadletter-push@my-project.iam.gserviceaccount.com
    python -m emulators.provision --project omni-local --emulator 127.0.0.1:8085

The worker subscription has no retry policy: the worker delays a failed job's redelivery itself
(10 s doubling to 600 s), because the emulator strands messages when a retry policy and a
dead-letter policy are combined and a subscriber dies (docs/reliability.md has the measurement).

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
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.api_core import exceptions as gexc
from google.protobuf import field_mask_pb2

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

logger = logging.getLogger(__name__)

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
INDEXES_FILE = Path(__file__).resolve().parent.parent / "firestore.indexes.json"
ADMIN_TIMEOUT_S = 30.0
EMULATOR_VARIABLE = "PUBSUB_EMULATOR_HOST"


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
    """Make the topics and the task subscriptions exist with the settings above.

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
            publisher.create_topic(name=request["name"], timeout=ADMIN_TIMEOUT_S)
            logger.info("created topic %s", request["name"])
        except gexc.AlreadyExists:
            logger.info("topic %s exists", request["name"])
    elif method == "converge_subscription":
        _converge(subscriber, request)
    else:
        raise ValueError(f"unknown Pub/Sub call {method}")


def _converge(subscriber: Any, settings: dict[str, Any]) -> None:
    """Create the subscription, or bring an existing one to ``settings``."""
    try:
        subscriber.create_subscription(request=settings, timeout=ADMIN_TIMEOUT_S)
        logger.info("created subscription %s", settings["name"])
    except gexc.AlreadyExists:
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


def firestore_admin_requests(
    project: str, spec: dict[str, Any]
) -> list[tuple[str, dict[str, Any]]]:
    """The Firestore Admin API calls that apply ``firestore.indexes.json`` to ``project``:
    ``("create_index", request)`` per composite index; per field override, ``("update_field",
    request)`` for its TTL policy (``"ttl": true``) and another for its single-field indexes
    (``"indexes": []`` exempts the field: no index at all). One change per request: the Admin API
    runs each as its own long-running operation."""
    parent = f"projects/{project}/databases/(default)/collectionGroups"
    calls: list[tuple[str, dict[str, Any]]] = []
    for index in spec.get("indexes", []):
        fields = [{"field_path": f["fieldPath"], "order": f["order"]} for f in index["fields"]]
        calls.append(
            (
                "create_index",
                {
                    "parent": f"{parent}/{index['collectionGroup']}",
                    "index": {"query_scope": index["queryScope"], "fields": fields},
                },
            )
        )
    for override in spec.get("fieldOverrides", []):
        name = f"{parent}/{override['collectionGroup']}/fields/{override['fieldPath']}"
        if override.get("ttl"):
            calls.append(
                (
                    "update_field",
                    {
                        "field": {"name": name, "ttl_config": {}},
                        "update_mask": {"paths": ["ttl_config"]},
                    },
                )
            )
        if "indexes" in override:
            indexes = [_single_field_index(entry) for entry in override["indexes"]]
            calls.append(
                (
                    "update_field",
                    {
                        "field": {"name": name, "index_config": {"indexes": indexes}},
                        "update_mask": {"paths": ["index_config"]},
                    },
                )
            )
    return calls


def _single_field_index(entry: dict[str, Any]) -> dict[str, Any]:
    """A fieldOverrides index entry (Firebase CLI's format) as an Admin API index."""
    index: dict[str, Any] = {"query_scope": entry.get("queryScope", "COLLECTION")}
    if "order" in entry:
        index["fields"] = [{"field_path": "*", "order": entry["order"]}]
    else:
        index["fields"] = [{"field_path": "*", "array_config": entry["arrayConfig"]}]
    return index


def firestore_spec() -> dict[str, Any]:
    """``firestore.indexes.json``, parsed."""
    spec: dict[str, Any] = json.loads(INDEXES_FILE.read_text())
    return spec


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
        getattr(admin, method)(request=request, timeout=ADMIN_TIMEOUT_S)
        logger.info("%s applied", method, extra={"request": str(request)})
    except gexc.AlreadyExists:
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
