"""Provisioning: subscription settings and Firestore Admin calls, built without a server."""

from __future__ import annotations

import json

from emulators.provision import (
    INDEXES_FILE,
    Resources,
    _dead_letter_subscription_settings,
    _subscription_settings,
    firestore_admin_requests,
    pubsub_requests,
)


def test_each_task_and_kind_has_its_own_topic_and_unfiltered_subscription() -> None:
    resources = Resources(project="p")
    assert set(resources.tasks) == {"embed", "similar", "entities", "forecast", "predict"}
    jobs = _subscription_settings(resources, "forecast")
    assert jobs["name"] == "projects/p/subscriptions/worker-forecast"
    assert jobs["topic"] == "projects/p/topics/jobs-forecast"
    chunks = _subscription_settings(resources, "forecast", "chunk")
    assert chunks["name"] == "projects/p/subscriptions/worker-forecast-chunks"
    assert chunks["topic"] == "projects/p/topics/jobs-forecast-chunks"
    # The emulator ignores filters: routing is by topic, so a filter would only differ there.
    assert "filter" not in jobs and "filter" not in chunks
    # Both kinds dead-letter and lease alike.
    assert {k: v for k, v in jobs.items() if k not in ("name", "topic")} == {
        k: v for k, v in chunks.items() if k not in ("name", "topic")
    }


def test_provisioning_makes_every_topic_before_any_subscription() -> None:
    calls = pubsub_requests(Resources(project="p", tasks=("embed", "forecast")))
    topics = [request["name"] for method, request in calls if method == "create_topic"]
    assert topics == [
        "projects/p/topics/jobs-dead",
        "projects/p/topics/jobs-embed",
        "projects/p/topics/jobs-embed-chunks",
        "projects/p/topics/jobs-forecast",
        "projects/p/topics/jobs-forecast-chunks",
    ]
    subscriptions = [(r["name"], r["topic"]) for m, r in calls if m == "converge_subscription"]
    assert [m for m, _ in calls] == ["create_topic"] * 5 + ["converge_subscription"] * 4
    assert all(
        name.replace("subscriptions/worker-", "topics/jobs-") == topic
        for name, topic in subscriptions
    )


def test_the_worker_subscription_dead_letters_and_has_no_retry_policy() -> None:
    settings = _subscription_settings(Resources(project="p"), "embed")
    assert settings["dead_letter_policy"] == {
        "dead_letter_topic": "projects/p/topics/jobs-dead",
        "max_delivery_attempts": 5,
    }
    # The worker backs off itself (docs/reliability.md): a retry policy here strands messages.
    assert "retry_policy" not in settings
    assert settings["ack_deadline_seconds"] == 20


def test_the_dead_letter_subscription_pushes_to_the_function() -> None:
    resources = Resources(project="p", dead_letter_endpoint="https://dl.example/")
    settings = _dead_letter_subscription_settings(resources)
    assert settings["topic"] == "projects/p/topics/jobs-dead"
    assert settings["push_config"] == {"push_endpoint": "https://dl.example/"}


def test_a_production_push_carries_an_oidc_token_for_the_functions_url() -> None:
    # Cloud Run refuses an unauthenticated push; the token's audience is the pushed URL.
    resources = Resources(
        project="p",
        dead_letter_endpoint="https://dl.example/",
        dead_letter_push_service_account="push@p.iam.gserviceaccount.com",
    )
    push = _dead_letter_subscription_settings(resources)["push_config"]
    assert push == {
        "push_endpoint": "https://dl.example/",
        "oidc_token": {
            "service_account_email": "push@p.iam.gserviceaccount.com",
            "audience": "https://dl.example/",
        },
    }


def test_every_request_is_plain_data_the_clients_accept() -> None:
    # python -m deploy --dry-run prints them as JSON; the clients take the same dicts.
    from google.pubsub_v1.types import Subscription

    resources = Resources(project="p", dead_letter_endpoint="https://dl.example/")
    calls = pubsub_requests(resources)
    assert json.loads(json.dumps(calls)) == [list(call) for call in calls]
    topics = 1 + 2 * len(resources.tasks)  # the dead letters', and two per task
    assert {method for method, _ in calls[:topics]} == {"create_topic"}
    for method, request in calls[topics:]:
        assert method == "converge_subscription"
        Subscription(**request)  # raises on a field the API does not know


def test_firestore_ttl_policies_cover_jobs_and_idempotency_records() -> None:
    calls = firestore_admin_requests("p", json.loads(INDEXES_FILE.read_text()))
    ttl_fields = [
        req["field"]["name"]
        for method, req in calls
        if method == "update_field" and req["update_mask"]["paths"] == ["ttl_config"]
    ]
    base = "projects/p/databases/(default)/collectionGroups"
    assert ttl_fields == [
        f"{base}/jobs/fields/expire_at",
        f"{base}/idempotency/fields/expire_at",
        f"{base}/batches/fields/expire_at",
        f"{base}/webhook_deliveries/fields/expire_at",
        f"{base}/ingress_instances/fields/expire_at",
        # Firestore's TTL never deletes a subcollection with its parent: chunks expire on their own.
        f"{base}/chunks/fields/expire_at",
        f"{base}/result_cache/fields/expire_at",
    ]


def test_ttl_fields_and_large_unqueried_fields_are_exempt_from_single_field_indexes() -> None:
    # Firestore's TTL best practice: an only-growing timestamp indexed is a write hotspot. The
    # large fields no query reads (input, result, events, error) only cost writes when indexed.
    calls = firestore_admin_requests("p", json.loads(INDEXES_FILE.read_text()))
    exempt = {
        req["field"]["name"].split("/collectionGroups/")[1]
        for method, req in calls
        if method == "update_field" and req["update_mask"]["paths"] == ["index_config"]
        if req["field"]["index_config"] == {"indexes": []}
    }
    assert exempt == {
        "jobs/fields/expire_at",
        "idempotency/fields/expire_at",
        "batches/fields/expire_at",
        "webhook_deliveries/fields/expire_at",
        "ingress_instances/fields/expire_at",
        "jobs/fields/input",
        "jobs/fields/result",
        "jobs/fields/events",
        "jobs/fields/error",
        # A chunk's inputs, outcomes and item letters: up to a MiB and thousands of entries,
        # never queried (Firestore's limit is 40,000 index entries a document).
        "chunks/fields/expire_at",
        "chunks/fields/inputs",
        "chunks/fields/results",
        "chunks/fields/errors",
        "chunks/fields/items",
        "chunks/fields/moved",
        "chunks/fields/indexes",
        "chunks/fields/events",
        # The cache's results are read by id only; the jobs' keys too.
        "result_cache/fields/expire_at",
        "result_cache/fields/result",
        "jobs/fields/cache_key",
        "chunks/fields/error",
    }


def test_the_reconcilers_queries_have_their_composite_indexes() -> None:
    calls = firestore_admin_requests("p", json.loads(INDEXES_FILE.read_text()))
    indexes = {
        tuple(f["field_path"] for f in req["index"]["fields"])
        for method, req in calls
        if method == "create_index"
    }
    assert ("status", "updated_at") in indexes
    assert ("status", "lease_expires_at") in indexes


def test_the_reconcilers_chunk_and_open_batch_queries_have_their_indexes() -> None:
    # reconciler/sweep.py: stale chunks of every batch at once (a collection-group query, which
    # no automatic index serves), and open batches past their time.
    calls = firestore_admin_requests("p", json.loads(INDEXES_FILE.read_text()))
    indexes = {
        (
            req["parent"].rpartition("/")[2],
            req["index"]["query_scope"],
            tuple(f["field_path"] for f in req["index"]["fields"]),
        )
        for method, req in calls
        if method == "create_index"
    }
    assert ("chunks", "COLLECTION_GROUP", ("status", "updated_at")) in indexes
    assert ("chunks", "COLLECTION_GROUP", ("status", "lease_expires_at")) in indexes
    assert ("batches", "COLLECTION", ("open", "open_expires_at")) in indexes


def test_the_batch_queries_have_their_composite_indexes() -> None:
    # ingress/batches/store.py: results in input order (optionally by status), and the listener on
    # items finishing behind GET /v1/batches/ID/events.
    calls = firestore_admin_requests("p", json.loads(INDEXES_FILE.read_text()))
    indexes = {
        tuple(f["field_path"] for f in req["index"]["fields"])
        for method, req in calls
        if method == "create_index"
    }
    assert ("batch_id", "superseded_by", "batch_index") in indexes
    assert ("batch_id", "superseded_by", "status", "batch_index") in indexes
    assert ("batch_id", "finished_at") in indexes


def test_the_webhook_senders_query_has_its_composite_index() -> None:
    # webhooks/outbox.py: ended jobs still waiting to be taken into the ledger
    # (webhook_pending == true and status in the terminal states).
    calls = firestore_admin_requests("p", json.loads(INDEXES_FILE.read_text()))
    indexes = {
        (req["parent"].rpartition("/")[2], tuple(f["field_path"] for f in req["index"]["fields"]))
        for method, req in calls
        if method == "create_index"
    }
    assert ("jobs", ("webhook_pending", "status")) in indexes
    # webhooks/fairness.py: one tenant's due deliveries, oldest first.
    assert ("webhook_deliveries", ("tenant", "next_at")) in indexes


def test_the_job_listing_queries_have_their_composite_indexes() -> None:
    # ingress/jobs/store.py's page(): the tenant's jobs, optionally by status and task, newest
    # first with the id as the tie-break.
    calls = firestore_admin_requests("p", json.loads(INDEXES_FILE.read_text()))
    indexes = {
        tuple((f["field_path"], f["order"]) for f in req["index"]["fields"])
        for method, req in calls
        if method == "create_index" and req["parent"].endswith("/jobs")
    }
    newest = (("created_at", "DESCENDING"), ("__name__", "DESCENDING"))
    for filters in ((), ("status",), ("task",), ("status", "task")):
        equalities = (("tenant", "ASCENDING"), *((f, "ASCENDING") for f in filters))
        assert (*equalities, *newest) in indexes, filters
