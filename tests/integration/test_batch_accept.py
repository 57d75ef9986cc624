"""Accepting a batch's items as chunks, against the emulators and gunicorn (no worker): chunk
documents written ``queued`` with exact counts and one message each, a bad line that leaves
nothing behind, open batches taking parts in order, and ``Idempotency-Key`` replays.

The ingress here publishes to topics of its own, its ``embed`` chunks' read by one subscription of
this module only, so every message a request published is seen, and no worker runs the items.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from google.api_core import exceptions as gexc
from google.cloud import firestore, pubsub_v1  # type: ignore[attr-defined]
from google.cloud.firestore_v1.base_query import FieldFilter

from emulators.process import stop_group
from ingress.idempotency import IdempotencyStore
from schemas.chunks import (
    CHUNK_ITEMS,
    CHUNKS,
    DEFAULT_WINDOW_CHUNKS,
    ChunkMessage,
    chunk_id,
    unpack_inputs,
)
from schemas.messages import CHUNK_KIND, Topics
from tests.support import descendants
from tests.support.stacks import Emulators, Service, sink_topic_named, start_ingress
from tests.support.stacks import received_chunks as received

WINDOW = DEFAULT_WINDOW_CHUNKS
"""Chunks of a batch published at acceptance (``BATCH_WINDOW_CHUNKS`` unset)."""
pytestmark = pytest.mark.integration
TIMEOUT = 120
TOPIC = "accept-chunks"
SUBSCRIPTION = "accept-chunks-read"
TENANTS = ("accept-a", "accept-b")
A = {"X-API-Key": "key-accept-a"}
B = {"X-API-Key": "key-accept-b"}
NDJSON = {"Content-Type": "application/x-ndjson"}
PER_CHUNK = CHUNK_ITEMS["embed"]


@pytest.fixture(scope="module")
def subscription(emulators: Emulators) -> str:
    """A subscription on the ingress's topic for ``embed`` chunks."""
    sink_topic_named(emulators, TOPIC)
    subscriber = pubsub_v1.SubscriberClient()
    topic = Topics(emulators.project, TOPIC).path("embed", CHUNK_KIND)
    path = subscriber.subscription_path(emulators.project, SUBSCRIPTION)
    with suppress(gexc.AlreadyExists):
        subscriber.create_subscription(name=path, topic=topic, timeout=30)
    subscriber.close()
    return path


@pytest.fixture(scope="module")
def ingress(emulators: Emulators, log_dir: Path, subscription: str) -> Iterator[Service]:
    keys = ",".join(f"{tenant}:key-{tenant}" for tenant in TENANTS)
    service = start_ingress(emulators, log_dir, "accept-ingress", JOBS_TOPIC=TOPIC, API_KEYS=keys)
    try:
        yield service
    finally:
        stop_group(service.process, 30)


@pytest.fixture
def drained(subscription: str) -> str:
    """The subscription, emptied of what earlier tests published."""
    received(subscription)
    return subscription


def lines(start: int, end: int) -> list[str]:
    return [json.dumps({"texts": [f"text {i}"]}, separators=(",", ":")) for i in range(start, end)]


def post_ndjson(
    url: str,
    items: list[str],
    headers: dict[str, str] = A,
    path: str = "/v1/batches",
    **params: str,
) -> requests.Response:
    body = "".join(line + "\n" for line in items).encode()
    return requests.post(
        f"{url}{path}", params=params, data=body, headers={**headers, **NDJSON}, timeout=TIMEOUT
    )


def chunks_of(batch_id: str) -> list[tuple[str, dict[str, Any]]]:
    ref = firestore.Client().collection("batches").document(batch_id).collection(CHUNKS)
    return [(s.id, s.to_dict() or {}) for s in ref.stream()]


def stored_inputs(batch_id: str) -> list[str]:
    """Every item's stored input line, in chunk id order (input order)."""
    return [
        line.decode()
        for _, doc in sorted(chunks_of(batch_id))
        for line in unpack_inputs(doc["inputs"])
    ]


def tenant_chunks(tenant: str) -> list[Any]:
    query = firestore.Client().collection_group(CHUNKS)
    query = query.where(filter=FieldFilter("tenant", "==", tenant))
    return list(query.stream())


def assert_queued_chunks(batch_id: str, items: list[str], messages: list[ChunkMessage]) -> None:
    """The batch's chunks in input order: its window's first ones queued with one message each,
    the rest held without one (common/pacing.py); every item queued in its chunk's letters."""
    chunks = sorted(chunks_of(batch_id))
    assert len(chunks) == math.ceil(len(items) / PER_CHUNK)
    start = 0
    for k, (name, doc) in enumerate(chunks):
        assert name == chunk_id(start) and doc["start"] == start
        assert doc["status"] == ("queued" if k < WINDOW else "held")
        assert doc["items"] == "q" * doc["n"]
        assert doc["batch_id"] == batch_id and doc["task"] == "embed"
        start += doc["n"]
    assert start == len(items)
    assert stored_inputs(batch_id) == items
    mine = sorted(m.chunk_id for m in messages if m.batch_id == batch_id)
    assert mine == [name for name, _ in chunks[:WINDOW]]  # one message each, none twice


# -- one request ------------------------------------------------------------------------------


def test_an_ndjson_batch_is_written_as_queued_chunks_with_one_message_each(
    ingress: Service, drained: str
) -> None:
    items = lines(0, 1000)
    response = post_ndjson(ingress.url, items, task="embed")
    assert response.status_code == 202, response.text
    batch = response.json()
    assert batch["status"] == "running" and batch["open"] is False
    assert batch["counts"] == {
        "total": 1000,
        "queued": 1000,
        "running": 0,
        "succeeded": 0,
        "failed": 0,
        "cancelled": 0,
    }
    assert_queued_chunks(batch["id"], items, received(drained, at_least=4))


def test_a_json_batch_goes_through_the_same_chunks(ingress: Service, drained: str) -> None:
    inputs = [{"texts": [f"json {i}", "two"]} for i in range(300)]
    response = requests.post(
        f"{ingress.url}/v1/batches",
        json={"task": "embed", "items": inputs},
        headers=A,
        timeout=TIMEOUT,
    )
    assert response.status_code == 202, response.text
    batch = response.json()
    assert batch["counts"]["total"] == batch["counts"]["queued"] == 300
    items = [json.dumps(i, separators=(",", ":")) for i in inputs]
    assert_queued_chunks(batch["id"], items, received(drained, at_least=2))


@pytest.mark.slow
def test_a_bad_line_late_in_a_large_body_is_named_and_leaves_no_chunk(
    ingress: Service, drained: str
) -> None:
    items = lines(0, 100_000)
    items[69_999] = '{"texts": []}'
    before = len(tenant_chunks(TENANTS[0]))
    response = post_ndjson(ingress.url, items, task="embed")
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["errors"][0]["loc"][:3] == ["body", "line", 70_000]
    assert "line 70000" in problem["detail"]
    # Chunks 0..69,887 were written before line 70,000 was read: every one is gone again.
    assert len(tenant_chunks(TENANTS[0])) == before
    assert received(drained) == []


@pytest.mark.slow
def test_a_hundred_thousand_items_are_accepted(ingress: Service, drained: str) -> None:
    items = lines(0, 100_000)
    response = post_ndjson(ingress.url, items, task="embed")
    assert response.status_code == 202, response.text
    assert response.json()["counts"]["queued"] == 100_000
    assert_queued_chunks(response.json()["id"], items, received(drained, at_least=WINDOW))


def test_an_idempotent_batch_is_created_once(ingress: Service, drained: str) -> None:
    headers = {**A, "Idempotency-Key": "accept-batch-key"}
    items = lines(0, 5)
    first = post_ndjson(ingress.url, items, headers, task="embed")
    again = post_ndjson(ingress.url, items, headers, task="embed")
    assert first.status_code == again.status_code == 202, again.text
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["counts"]["total"] == 5
    assert len(chunks_of(first.json()["id"])) == 1
    assert len(received(drained, at_least=1)) == 1  # the replay published nothing
    other = post_ndjson(ingress.url, items[:4], headers, task="embed")
    assert other.status_code == 409


def test_a_batch_whose_request_died_is_abandoned_on_an_idempotent_retry(
    ingress: Service,
) -> None:
    # As if an ingress had died while accepting: the key reserved, the batch still "creating"
    # ten minutes later. The client's retry with the key must not wait forever on it.
    body = json.dumps({"texts": ["lost"]}) + "\n"
    batch_id = "e" * 32
    started = datetime.now(UTC) - timedelta(minutes=10)
    db = firestore.Client()
    digest = hashlib.sha256(b"/v1/batches\x00embed\x00" + body.encode()).hexdigest()
    db.collection("idempotency").document(IdempotencyStore._doc_id(TENANTS[0], "died")).set(
        {
            "tenant": TENANTS[0],
            "fingerprint": digest,
            "resource_id": batch_id,
            "created_at": started,
            "expire_at": started + timedelta(hours=24),
        }
    )
    batch_doc = {"tenant": TENANTS[0], "task": "embed", "state": "creating", "created_at": started}
    db.collection("batches").document(batch_id).set(batch_doc)
    retry = post_ndjson(ingress.url, [body.strip()], {**A, "Idempotency-Key": "died"}, task="embed")
    assert retry.status_code == 409 and "use a new key" in retry.json()["detail"]
    stored = db.collection("batches").document(batch_id).get().to_dict() or {}
    assert stored["state"] == "abandoned" and stored["cancel_requested"] is True
    fresh = post_ndjson(ingress.url, [body.strip()], {**A, "Idempotency-Key": "anew"}, task="embed")
    assert fresh.status_code == 202


# -- open batches ------------------------------------------------------------------------------


def open_batch(url: str) -> dict[str, Any]:
    response = requests.post(
        f"{url}/v1/batches", params={"task": "embed", "open": "1"}, headers=A, timeout=TIMEOUT
    )
    assert response.status_code == 202, response.text
    batch: dict[str, Any] = response.json()
    return batch


def test_an_open_batch_takes_parts_in_order_until_it_is_closed(
    ingress: Service, drained: str
) -> None:
    batch = open_batch(ingress.url)
    assert batch["status"] == "open" and batch["open"] is True
    assert batch["counts"]["total"] == 0 and "open_expires_at" in batch
    items_url = f"/v1/batches/{batch['id']}/items"
    parts = [lines(0, 300), lines(300, 700), lines(700, 1000)]
    for k, part in enumerate(parts):
        response = post_ndjson(ingress.url, part, path=items_url)
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "open"
        assert response.json()["counts"]["queued"] == sum(len(p) for p in parts[: k + 1])

    # Another tenant sees no such batch, on every route.
    assert post_ndjson(ingress.url, lines(0, 1), B, path=items_url).status_code == 404
    url = f"{ingress.url}/v1/batches/{batch['id']}"
    assert requests.post(f"{url}/close", headers=B, timeout=TIMEOUT).status_code == 404
    assert requests.get(url, headers=B, timeout=TIMEOUT).status_code == 404

    closed = requests.post(f"{url}/close", headers=A, timeout=TIMEOUT)
    assert closed.status_code == 200, closed.text
    assert closed.json()["open"] is False and closed.json()["status"] == "running"
    assert "closed_at" in closed.json()
    again = requests.post(f"{url}/close", headers=A, timeout=TIMEOUT)
    assert again.status_code == 200 and again.json()["closed_at"] == closed.json()["closed_at"]
    late = post_ndjson(ingress.url, lines(0, 1), path=items_url)
    assert late.status_code == 409 and "closed" in late.json()["detail"]

    everything = [line for part in parts for line in part]
    chunks = sorted(chunks_of(batch["id"]))
    assert [doc["part"] for _, doc in chunks] == [0, 0, 1, 1, 2, 2]
    assert [doc["start"] for _, doc in chunks] == [0, 256, 300, 556, 700, 956]
    assert stored_inputs(batch["id"]) == everything
    mine = sorted(m.chunk_id for m in received(drained, at_least=6))
    assert mine == [name for name, _ in chunks]


def test_a_part_sent_again_with_its_key_appends_nothing(ingress: Service, drained: str) -> None:
    batch = open_batch(ingress.url)
    items_url = f"/v1/batches/{batch['id']}/items"
    key = {**A, "Idempotency-Key": f"part-{batch['id']}"}
    first = post_ndjson(ingress.url, lines(0, 10), key, path=items_url)
    again = post_ndjson(ingress.url, lines(0, 10), key, path=items_url)
    assert first.status_code == again.status_code == 202, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["counts"]["total"] == 10
    assert len(chunks_of(batch["id"])) == 1
    assert len(received(drained, at_least=1)) == 1
    changed = post_ndjson(ingress.url, lines(0, 11), key, path=items_url)
    assert changed.status_code == 409


def test_a_bad_part_leaves_nothing_and_the_next_part_takes_its_indexes(
    ingress: Service, drained: str
) -> None:
    batch = open_batch(ingress.url)
    items_url = f"/v1/batches/{batch['id']}/items"
    bad = [*lines(0, 600), "not json"]
    response = post_ndjson(ingress.url, bad, path=items_url)
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["loc"] == ["body", "line", 601]
    assert chunks_of(batch["id"]) == []
    good = post_ndjson(ingress.url, lines(0, 5), path=items_url)
    assert good.status_code == 202, good.text
    assert [name for name, _ in chunks_of(batch["id"])] == [chunk_id(0)]
    assert len(received(drained, at_least=1)) == 1


def test_a_part_while_another_is_being_appended_gets_409(ingress: Service) -> None:
    batch = open_batch(ingress.url)
    # As if a part were being appended now: its lease on the batch document.
    ref = firestore.Client().collection("batches").document(batch["id"])
    lease = datetime.now(UTC) + timedelta(minutes=5)
    ref.update({"appending_token": "someone", "appending_until": lease})
    items_url = f"/v1/batches/{batch['id']}/items"
    response = post_ndjson(ingress.url, lines(0, 3), path=items_url)
    assert response.status_code == 409 and "another part" in response.json()["detail"]
    close = requests.post(
        f"{ingress.url}/v1/batches/{batch['id']}/close", headers=A, timeout=TIMEOUT
    )
    assert close.status_code == 409
    # A lease whose part died expires: the next part goes in.
    ref.update({"appending_until": datetime.now(UTC) - timedelta(seconds=1)})
    assert post_ndjson(ingress.url, lines(0, 3), path=items_url).status_code == 202


def test_a_batch_not_created_open_takes_no_part(ingress: Service) -> None:
    created = post_ndjson(ingress.url, lines(0, 2), task="embed")
    assert created.status_code == 202
    items_url = f"/v1/batches/{created.json()['id']}/items"
    response = post_ndjson(ingress.url, lines(0, 2), path=items_url)
    assert response.status_code == 409 and "not created open" in response.json()["detail"]


@pytest.mark.slow
def test_a_million_items_are_accepted_in_parts(ingress: Service, drained: str) -> None:
    batch = open_batch(ingress.url)
    items_url = f"/v1/batches/{batch['id']}/items"
    for k in range(10):
        part = lines(k * 100_000, (k + 1) * 100_000)
        response = post_ndjson(ingress.url, part, path=items_url)
        assert response.status_code == 202, response.text
    url = f"{ingress.url}/v1/batches/{batch['id']}"
    closed = requests.post(f"{url}/close", headers=A, timeout=TIMEOUT)
    assert closed.status_code == 200, closed.text
    assert closed.json()["counts"]["total"] == closed.json()["counts"]["queued"] == 1_000_000
    ref = firestore.Client().collection("batches").document(batch["id"]).collection(CHUNKS)
    chunks = [(s.id, s.to_dict() or {}) for s in ref.select(["start", "n", "status"]).stream()]
    starts = [doc["start"] for _, doc in sorted(chunks)]
    assert starts == sorted(starts) and sum(doc["n"] for _, doc in chunks) == 1_000_000
    # The window's chunks queued and published (by the first part), the rest held.
    statuses = [doc["status"] for _, doc in sorted(chunks)]
    assert statuses == ["queued"] * WINDOW + ["held"] * (len(chunks) - WINDOW)
    assert len(received(drained, at_least=WINDOW)) == WINDOW
    worker = next(iter(descendants(ingress.process.pid)))
    print(f"\npeak RSS of the ingress worker: {peak_rss_mib(worker):.0f} MiB")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")
