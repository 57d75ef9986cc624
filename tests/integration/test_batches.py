"""A batch's items after acceptance, against the emulators and gunicorn: results in input order
(following retries), one item, item events resumed with ``Last-Event-ID``, cancel and retry.

Two kinds of test. The first kind writes chunk documents directly (``schemas/chunks.py``'s
shape) with the outcomes a worker would have written, on an ingress whose topic no worker reads:
it pins the reading, cancel and retry rules exactly, whatever the worker does. The second kind
runs the real worker end to end (acceptance itself: ``test_batch_accept.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from google.cloud import firestore

from emulators.process import stop_group
from schemas.batches import CountDeltas
from schemas.chunks import (
    CHUNKS,
    ITEM_CODES,
    chunk_id,
    item_indexes,
    pack_inputs,
    pack_result,
    parse_event_id,
    unpack_inputs,
)
from schemas.jobs import new_job_id
from tests.support import python_env, sse_messages, wait_for
from tests.support.stacks import KEYS, Emulators, Service, sink_topic_named, start_ingress

pytestmark = pytest.mark.integration
TIMEOUT = 60
A = {"X-API-Key": KEYS["tenant-a"]}
B = {"X-API-Key": KEYS["tenant-b"]}
NDJSON = {"Content-Type": "application/x-ndjson"}
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


# -- talking to the ingress ----------------------------------------------------------------------


def submit_ndjson(
    ingress: Service, task: str, lines: list[str], headers: dict[str, str] = A
) -> requests.Response:
    body = "".join(line + "\n" for line in lines).encode()
    return requests.post(
        f"{ingress.url}/v1/batches",
        params={"task": task},
        data=body,
        headers={**headers, **NDJSON},
        timeout=TIMEOUT,
    )


def get_batch(ingress: Service, batch_id: str) -> dict[str, Any]:
    response = requests.get(f"{ingress.url}/v1/batches/{batch_id}", headers=A, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    batch: dict[str, Any] = response.json()
    return batch


def finished(ingress: Service, batch_id: str, timeout_s: float = 240) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        batch = get_batch(ingress, batch_id)
        return batch if batch["status"] not in ("running", "open") else None

    return wait_for(done, timeout_s, f"batch {batch_id} to finish", interval_s=0.5)


def results(ingress: Service, batch_id: str, **params: Any) -> list[dict[str, Any]]:
    response = requests.get(
        f"{ingress.url}/v1/batches/{batch_id}/results", params=params, headers=A, timeout=TIMEOUT
    )
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in response.text.splitlines()]


def item(ingress: Service, batch_id: str, index: int | str) -> requests.Response:
    url = f"{ingress.url}/v1/batches/{batch_id}/items/{index}"
    return requests.get(url, headers=A, timeout=TIMEOUT)


def post(ingress: Service, batch_id: str, action: str) -> requests.Response:
    url = f"{ingress.url}/v1/batches/{batch_id}/{action}"
    return requests.post(url, headers=A, timeout=TIMEOUT)


def open_events(
    ingress: Service, batch_id: str, last_event_id: str | None = None, **params: str
) -> requests.Response:
    headers = {**A, **({"Last-Event-ID": last_event_id} if last_event_id else {})}
    response = requests.get(
        f"{ingress.url}/v1/batches/{batch_id}/events",
        params=params,
        headers=headers,
        stream=True,
        timeout=TIMEOUT,
    )
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/event-stream")
    return response


def events_of(response: requests.Response) -> Iterator[dict[str, Any]]:
    """The stream's events (pings left out)."""
    for message in sse_messages(response.iter_lines(decode_unicode=True)):
        if "event" in message:
            yield message


def count_sum(counts: dict[str, int]) -> int:
    return sum(counts[s] for s in STATUSES)


# -- chunk documents written as a worker would --------------------------------------------------

DB_TIMEOUT = 30


def chunks_of(batch_id: str) -> dict[str, dict[str, Any]]:
    ref = firestore.Client().collection("batches").document(batch_id).collection(CHUNKS)
    return {s.id: s.to_dict() or {} for s in ref.stream(timeout=DB_TIMEOUT)}


def input_line(index: int) -> bytes:
    return json.dumps({"texts": [f"item {index}"]}).encode()


def result_of(index: int, where: str) -> dict[str, Any]:
    """A stored embed result that says which item and which chunk it came from."""
    return {"model": where, "dimensions": 2, "embeddings": [[float(index), 1.0]]}


def chunk(
    batch_id: str,
    letters: str,
    *,
    start: int | None = None,
    indexes: list[int] | None = None,
    status: str | None = None,
    moved: dict[int, str] | None = None,
    name: str = "",
) -> dict[str, Any]:
    """A chunk document of tenant-a's embed batch: succeeded items hold ``result_of(index,
    name)``, failed ones an error naming them; ``status`` defaults to what the letters say."""
    where = {"start": start} if start is not None else {"indexes": indexes}
    positions = item_indexes({**where, "n": len(letters)})
    if status is None:
        status = "queued" if set(letters) <= {"q"} else "succeeded"
    doc: dict[str, Any] = {
        "tenant": "tenant-a",
        "task": "embed",
        "batch_id": batch_id,
        "batch_path": f"batches/{batch_id}",
        "part": 0,
        **where,
        "n": len(letters),
        "inputs": pack_inputs(input_line(i) for i in positions),
        "items": letters,
        "status": status,
        "in_flight_counted": True,
        "attempts": 0 if status in ("queued", "pending") else 1,
        "terminal_writes": 1 if status in ("succeeded", "failed", "cancelled") else 0,
        "created_at": datetime.now(UTC),
        "updated_at": datetime.now(UTC),
    }
    if status in ("succeeded", "failed", "cancelled"):
        doc["done_at"] = firestore.SERVER_TIMESTAMP
        doc["results"] = [
            pack_result("embed", result_of(i, name)) if code == "s" else b""
            for i, code in zip(positions, letters, strict=True)
        ]
        doc["errors"] = {
            str(p): {"code": "boom", "message": f"item {i} failed in {name}"}
            for p, (i, code) in enumerate(zip(positions, letters, strict=True))
            if code == "f"
        }
    if moved:
        doc["moved"] = {str(p): target for p, target in moved.items()}
    return doc


def store_batch(
    chunks: dict[str, dict[str, Any]],
    counts: dict[str, int],
    *,
    open_: bool = False,
    batch_id: str | None = None,
) -> str:
    """A batch document (accepted) with ``chunks`` and its ``counts``; its id."""
    batch_id = batch_id or new_job_id()
    db = firestore.Client()
    now = datetime.now(UTC)
    total = counts.get("total", sum(counts.get(s, 0) for s in STATUSES))
    ref = db.collection("batches").document(batch_id)
    ref.set(
        {
            "tenant": "tenant-a",
            "task": "embed",
            "state": "accepted",
            "created_at": now,
            "updated_at": now,
            "metadata": {},
            "counts": {"total": total, **{s: counts.get(s, 0) for s in STATUSES}},
            "cancel_requested": False,
            "open": open_,
            "items_accepted": total,
            "parts": 1,
            "expire_at": now + timedelta(days=1),
        },
        timeout=DB_TIMEOUT,
    )
    writes = db.batch()
    for name, doc in chunks.items():
        writes.set(ref.collection(CHUNKS).document(name), doc)
    writes.commit(timeout=DB_TIMEOUT)
    return batch_id


def end_chunk(batch_id: str, name: str, letters: str, status: str = "succeeded") -> None:
    """What a worker's terminal commit does: the chunk's outcome with ``done_at``, and its
    items' counts, moved from queued, in the same commit."""
    db = firestore.Client()
    ref = db.collection("batches").document(batch_id).collection(CHUNKS).document(name)
    before = ref.get(timeout=DB_TIMEOUT).to_dict() or {}
    after = chunk(batch_id, letters, start=before.get("start"), indexes=before.get("indexes"))
    after["status"] = status
    writes = db.batch()
    writes.set(ref, after)
    deltas = CountDeltas()
    for code in set(letters):
        deltas.move(before, ITEM_CODES[code], count=letters.count(code))
    deltas.write(writes, db, datetime.now(UTC))
    writes.commit(timeout=DB_TIMEOUT)


@pytest.fixture(scope="module")
def reader(emulators: Emulators, log_dir: Path) -> Iterator[Service]:
    """An ingress whose topic no worker reads: the chunks these tests write stay as written,
    whatever the retry publishes. Two embed items per chunk, so a retry's grouping shows."""
    service = start_ingress(
        emulators,
        log_dir,
        "ingress-chunk-reads",
        JOBS_TOPIC=sink_topic_named(emulators, "chunk-reads-sink"),
        CHUNK_ITEMS_EMBED="2",
    )
    yield service
    stop_group(service.process, 30)


# -- reading results -------------------------------------------------------------------------


def test_results_follow_input_order_and_each_item_s_latest_chunk(
    reader: Service, clean_firestore: Emulators
) -> None:
    # 20 chunks of 3 items (more than a page of chunks), a retry chunk, a retry of a retry, a
    # retry still queued, and a dead request's pending chunk sorting between two accepted ones.
    batch_id = new_job_id()
    first, second, waiting = "r" + "a" * 8, "r" + "b" * 8, "r" + "c" * 8
    docs = {chunk_id(3 * k): chunk(batch_id, "sss", start=3 * k, name="orig") for k in range(20)}
    docs[chunk_id(6)] = chunk(batch_id, "s>f", start=6, moved={1: first}, name="orig")
    docs[chunk_id(27)] = chunk(batch_id, ">s>", start=27, moved={0: first, 2: waiting})
    docs[chunk_id(57)] = chunk(batch_id, "fcs", start=57, name="orig")
    docs[first] = chunk(batch_id, "s>", indexes=[7, 27], moved={1: second}, name="first")
    docs[second] = chunk(batch_id, "f", indexes=[27], name="second")
    docs[waiting] = chunk(batch_id, "q", indexes=[29])
    docs[chunk_id(31)] = chunk(batch_id, "qqq", start=31, status="pending")
    store_batch(
        docs, {"succeeded": 55, "failed": 3, "cancelled": 1, "queued": 1}, batch_id=batch_id
    )

    lines = results(reader, batch_id)
    assert [line["index"] for line in lines] == list(range(60))
    by_index = {line["index"]: line for line in lines}
    assert by_index[0] == {
        "index": 0,
        "status": "succeeded",
        "result": result_of(0, "orig"),
        "attempts": 1,
    }
    assert by_index[7]["result"] == result_of(7, "first")  # the retry's outcome, not the first
    assert by_index[8]["error"] == {"code": "boom", "message": "item 8 failed in orig"}
    assert by_index[27]["error"]["message"] == "item 27 failed in second"  # a retry's retry
    assert by_index[29] == {"index": 29, "status": "queued", "attempts": 0}
    assert by_index[31]["result"] == result_of(31, "orig")  # not the pending chunk's
    assert (by_index[57]["status"], by_index[58]["status"]) == ("failed", "cancelled")
    assert "result" not in by_index[58] and "error" not in by_index[58]

    assert [x["index"] for x in results(reader, batch_id, status="failed")] == [8, 27, 57]
    assert [x["index"] for x in results(reader, batch_id, status="queued")] == [29]
    assert len(results(reader, batch_id, status="succeeded")) == 55
    assert results(reader, batch_id, after=28) == lines[29:]
    assert results(reader, batch_id, after=30, status="failed") == [by_index[57]]
    assert results(reader, batch_id, after=59) == []
    assert results(reader, batch_id, after=500) == []
    url = f"{reader.url}/v1/batches/{batch_id}/results"
    for params in ({"status": "done"}, {"after": "-1"}, {"after": "x"}, {"after": "1.5"}):
        bad = requests.get(url, params=params, headers=A, timeout=TIMEOUT)
        assert bad.status_code == 400, params

    for index in (0, 7, 27, 29, 31, 33, 59):
        one = item(reader, batch_id, index)
        assert one.status_code == 200, one.text
        assert one.json() == by_index[index]
    for missing in (60, 1000, "-1", "x", "00x"):
        assert item(reader, batch_id, missing).status_code == 404, missing


# -- item events ------------------------------------------------------------------------------


def test_item_events_resume_after_last_event_id_losing_and_repeating_nothing(
    reader: Service, clean_firestore: Emulators
) -> None:
    names = [chunk_id(4 * k) for k in range(6)]
    batch_id = new_job_id()
    docs = {name: chunk(batch_id, "qqqq", start=4 * k) for k, name in enumerate(names)}
    store_batch(docs, {"queued": 24}, batch_id=batch_id)

    stream = open_events(reader, batch_id)
    events = events_of(stream)
    first = next(events)
    assert first["event"] == "progress" and first["data"]["counts"]["queued"] == 24
    assert "id" not in first
    for name in names[:3]:
        end_chunk(batch_id, name, "ssss")
    seen: list[dict[str, Any]] = []
    for event in events:
        if event["event"] == "item":
            seen.append(event)
        if len(seen) == 12:
            break
    stream.close()
    assert sorted(e["data"]["index"] for e in seen) == list(range(12))
    keys = [parse_event_id(e["id"]) for e in seen]
    assert None not in keys and keys == sorted(keys)  # type: ignore[type-var]
    assert all(e["data"]["status"] == "succeeded" and "result" not in e["data"] for e in seen)

    # A client that got only eight of them resumes after the eighth.
    kept = seen[:8]
    end_chunk(batch_id, names[3], "ssss")
    end_chunk(batch_id, names[4], "sfss")
    stream = open_events(reader, batch_id, kept[-1]["id"], results="true")
    events = events_of(stream)
    assert next(events)["event"] == "progress"  # the whole counts again: nothing to resume
    for event in events:
        if event["event"] == "item":
            kept.append(event)
        if len(kept) == 20:
            break
    end_chunk(batch_id, names[5], "sscc", status="cancelled")
    tail = list(events)
    stream.close()
    kept += [e for e in tail if e["event"] == "item"]
    assert [e["event"] for e in tail][-1] == "done"
    done = tail[-1]["data"]
    assert done["status"] == "failed" and done["counts"]["cancelled"] == 2
    assert done["counts"]["failed"] == 1 and done["counts"]["succeeded"] == 21
    indexes = [e["data"]["index"] for e in kept]
    assert sorted(indexes) == list(range(24))  # each item once: none lost, none repeated
    ids = [e["id"] for e in kept]
    assert len(set(ids)) == 24
    keyed = [parse_event_id(i) for i in ids]
    assert keyed == sorted(keyed)  # type: ignore[type-var]
    resumed = {e["data"]["index"]: e["data"] for e in kept[8:]}
    assert resumed[17] == {
        "index": 17,
        "status": "failed",
        "error": resumed[17]["error"],
        "attempts": 1,
    }
    assert resumed[16]["result"] == result_of(16, "")  # ?results=true
    assert resumed[22]["status"] == "cancelled"

    # The batch has ended: a client resuming gets what it missed, then done; a new one, done.
    again = list(events_of(open_events(reader, batch_id, kept[19]["id"])))
    assert [e["event"] for e in again] == ["progress"] + ["item"] * 4 + ["done"]
    assert [e["id"] for e in again[1:5]] == ids[20:]
    fresh = list(events_of(open_events(reader, batch_id)))
    assert [e["event"] for e in fresh] == ["progress", "done"]
    bad = requests.get(
        f"{reader.url}/v1/batches/{batch_id}/events",
        headers={**A, "Last-Event-ID": "7"},
        timeout=TIMEOUT,
    )
    assert bad.status_code == 400
    unknown = requests.get(
        f"{reader.url}/v1/batches/{'0' * 32}/events",
        headers={**A, "Last-Event-ID": "7"},
        timeout=TIMEOUT,
    )
    assert unknown.status_code == 404  # no batch to resume: the header is not what is wrong


# -- cancel -----------------------------------------------------------------------------------


def test_cancel_ends_every_queued_chunk_and_leaves_the_running_one_to_its_worker(
    reader: Service, clean_firestore: Emulators
) -> None:
    batch_id = new_job_id()
    running = chunk(batch_id, "rrr", start=6, status="running")
    docs = {
        chunk_id(0): chunk(batch_id, "ss", start=0),
        chunk_id(2): chunk(batch_id, "qqqq", start=2),
        chunk_id(6): running,
        chunk_id(9): chunk(batch_id, "qq", start=9),
    }
    store_batch(docs, {"succeeded": 2, "queued": 6, "running": 3}, batch_id=batch_id)

    response = post(reader, batch_id, "cancel")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "running"  # the running chunk has not stopped yet

    def swept() -> dict[str, Any] | None:
        current = get_batch(reader, batch_id)
        return current if current["counts"]["queued"] == 0 else None

    batch = wait_for(swept, 30, "the sweep to cancel the queued chunks")
    assert batch["counts"] == {
        "total": 11,
        "queued": 0,
        "running": 3,
        "succeeded": 2,
        "failed": 0,
        "cancelled": 6,
    }
    stored = chunks_of(batch_id)
    for name in (chunk_id(2), chunk_id(9)):
        doc = stored[name]
        assert doc["status"] == "cancelled" and set(doc["items"]) == {"c"}
        assert doc["attempts"] == 0 and doc["terminal_writes"] == 1
        assert doc["done_at"] is not None and doc["finished_by"] == "batch-cancel"
    assert stored[chunk_id(6)]["status"] == "running"  # its worker stops it at a safe point
    assert post(reader, batch_id, "cancel").status_code == 200  # still running: answered again

    end_chunk(batch_id, chunk_id(6), "scc", status="cancelled")
    done = finished(reader, batch_id, 30)
    assert done["status"] == "cancelled" and done["counts"]["cancelled"] == 8
    lines = results(reader, batch_id)
    assert [line["status"] for line in lines] == ["succeeded"] * 2 + ["cancelled"] * 4 + [
        "succeeded"
    ] + ["cancelled"] * 4
    again = post(reader, batch_id, "cancel")
    assert again.status_code == 409 and "cancelled" in again.json()["detail"]
    assert post(reader, batch_id, "retry").status_code == 409


def test_cancelling_an_open_batch_closes_it(reader: Service, clean_firestore: Emulators) -> None:
    batch_id = store_batch({}, {}, open_=True)
    assert get_batch(reader, batch_id)["status"] == "open"
    response = post(reader, batch_id, "cancel")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled" and response.json()["open"] is False
    doc = firestore.Client().collection("batches").document(batch_id).get().to_dict() or {}
    assert doc["open"] is False and doc["cancel_requested"] is True and doc["closed_at"]
    assert post(reader, batch_id, "cancel").status_code == 409


# -- retry ------------------------------------------------------------------------------------


def test_retry_moves_exactly_the_failed_items_to_new_retry_chunks(
    reader: Service, clean_firestore: Emulators
) -> None:
    batch_id = new_job_id()
    docs = {
        chunk_id(0): chunk(batch_id, "sfs", start=0),
        chunk_id(3): chunk(batch_id, "sss", start=3),
        chunk_id(6): chunk(batch_id, "f", start=6),
        chunk_id(7): chunk(batch_id, "fff", start=7, status="failed"),  # dead-lettered
        chunk_id(10): chunk(batch_id, "cs>", start=10, moved={2: "r" + "0" * 8}),
        "r" + "0" * 8: chunk(batch_id, "f", indexes=[12]),
    }
    store_batch(docs, {"succeeded": 6, "failed": 6, "cancelled": 1}, batch_id=batch_id)
    assert finished(reader, batch_id)["status"] == "failed"
    before = chunks_of(batch_id)

    response = post(reader, batch_id, "retry")
    assert response.status_code == 200, response.text
    batch = response.json()
    assert batch["status"] == "running"
    assert batch["counts"] == {
        "total": 13,
        "queued": 6,
        "running": 0,
        "succeeded": 6,
        "failed": 0,
        "cancelled": 1,
    }
    after = chunks_of(batch_id)
    new = {name: doc for name, doc in after.items() if name not in before}
    assert all(name.startswith("r") for name in new)
    moved = sorted(i for doc in new.values() for i in doc["indexes"])
    assert moved == [1, 6, 7, 8, 9, 12]
    # Two items a chunk on this ingress, but a source's failed items never split: 1 and 6
    # together, 7-9 (three, from one chunk) alone, 12 alone.
    assert sorted(doc["indexes"] for doc in new.values()) == [[1, 6], [7, 8, 9], [12]]
    for doc in new.values():
        assert doc["status"] == "queued" and doc["items"] == "q" * doc["n"]
        assert unpack_inputs(doc["inputs"]) == [input_line(i) for i in doc["indexes"]]
        assert doc["attempts"] == 0 and doc["tenant"] == "tenant-a" and doc["task"] == "embed"
    assert after[chunk_id(0)]["items"] == "s>s"
    assert after[chunk_id(7)]["items"] == ">>>"
    assert after["r" + "0" * 8]["items"] == ">"
    target = after[chunk_id(0)]["moved"]["1"]
    assert new[target]["indexes"] == [1, 6]
    assert after[chunk_id(3)] == before[chunk_id(3)]  # nothing failed there: untouched
    lines = {line["index"]: line for line in results(reader, batch_id)}
    assert [i for i, line in lines.items() if line["status"] == "queued"] == moved
    assert lines[0]["status"] == "succeeded" and lines[10]["status"] == "cancelled"

    # Nothing has failed since: a second retry changes nothing.
    again = post(reader, batch_id, "retry")
    assert again.status_code == 200 and again.json()["counts"] == batch["counts"]
    assert chunks_of(batch_id) == after


# -- tenancy ----------------------------------------------------------------------------------


def test_another_tenant_gets_404_on_every_read_route(
    reader: Service, clean_firestore: Emulators
) -> None:
    batch_id = store_batch({chunk_id(0): chunk(new_job_id(), "s", start=0)}, {"succeeded": 1})
    base = f"{reader.url}/v1/batches/{batch_id}"
    for method, url in [
        ("GET", base),
        ("GET", base + "/results"),
        ("GET", base + "/items/0"),
        ("GET", base + "/events"),
        ("POST", base + "/cancel"),
        ("POST", base + "/retry"),
    ]:
        theirs = requests.request(method, url, headers=B, timeout=30)
        unknown = requests.request(method, url.replace(batch_id, "0" * 32), headers=A, timeout=30)
        assert theirs.status_code == unknown.status_code == 404, (method, url)
        assert theirs.json()["detail"] == unknown.json()["detail"]
        assert requests.request(method, url, timeout=30).status_code == 401


# -- end to end, with the real worker ------------------------------------------------------------


@contextmanager
def paused(worker: Service) -> Iterator[None]:
    """The worker stopped (SIGSTOP): nothing is claimed until the block ends."""
    group = os.getpgid(worker.process.pid)
    os.killpg(group, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(group, signal.SIGCONT)


def stored_statuses(batch_id: str) -> dict[int, str]:
    """Each item's latest status as its chunks store it (following ``moved``)."""
    docs = chunks_of(batch_id)
    out: dict[int, str] = {}
    for name, doc in sorted(docs.items()):
        if name.startswith("r") or doc["status"] == "pending":
            continue
        for position, index in enumerate(item_indexes(doc)):
            holder, where = doc, position
            while holder["items"][where] == ">":
                holder = docs[holder["moved"][str(where)]]
                where = item_indexes(holder).index(index)
            out[index] = ITEM_CODES[holder["items"][where]]
    return out


@pytest.mark.timeout(600)  # the worker's start (when first) and 1,000 encodes alone, here
def test_a_thousand_items_finish_with_exact_counts_and_each_item_s_own_embedding(
    ingress: Service, worker: Service, clean_firestore: Emulators
) -> None:
    texts = [f"item number {i} is about {'cats' if i % 3 else 'the sea'}" for i in range(1000)]
    response = submit_ndjson(ingress, "embed", [json.dumps({"texts": [t]}) for t in texts])
    assert response.status_code == 202, response.text
    batch = response.json()
    assert batch["counts"]["total"] == 1000 and count_sum(batch["counts"]) == 1000

    done = finished(ingress, batch["id"])
    assert done["status"] == "succeeded", done
    assert done["counts"] == {
        "total": 1000,
        "queued": 0,
        "running": 0,
        "succeeded": 1000,
        "failed": 0,
        "cancelled": 0,
    }
    lines = results(ingress, batch["id"])
    assert [line["index"] for line in lines] == list(range(1000))
    assert all("job_id" not in line for line in lines)
    assert stored_statuses(batch["id"]) == dict.fromkeys(range(1000), "succeeded")

    import numpy as np

    from worker.tasks.embed import EmbedAdapter

    alone = EmbedAdapter(device="cpu", threads=1)  # one core: the worker may still run
    alone.load()
    for line, text in zip(lines, texts, strict=True):
        vector = np.array(line["result"]["embeddings"][0])
        own = alone.encode([text])[0]
        cosine = float(vector @ own / (np.linalg.norm(vector) * np.linalg.norm(own)))
        assert cosine >= 0.9999, (line["index"], cosine)
    for index in (0, 417, 999):
        one = item(ingress, batch["id"], index)
        assert one.status_code == 200 and one.json() == lines[index]


MODEL = """
import sys, keras
keras.utils.set_random_seed(3)
model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
model.save(sys.argv[1] + "/model.keras")
"""


def test_retry_runs_only_the_failed_items_as_new_chunks(
    ingress: Service, worker: Service, model_repository: Path, clean_firestore: Emulators
) -> None:
    ready = model_repository / "chunk-ready" / "1"
    ready.mkdir(parents=True)
    subprocess.run(
        [sys.executable, "-c", MODEL, str(ready)],
        check=True,
        timeout=120,
        capture_output=True,
        env=python_env(TF_CPP_MIN_LOG_LEVEL="3"),
    )
    # Even items use a model that exists, odd ones a model published only after they failed.
    lines = [
        json.dumps({"model": "chunk-ready" if i % 2 == 0 else "chunk-late", "instances": [[i, 1]]})
        for i in range(8)
    ]
    batch = submit_ndjson(ingress, "predict", lines).json()
    first = finished(ingress, batch["id"])
    assert first["status"] == "failed"
    assert (first["counts"]["succeeded"], first["counts"]["failed"]) == (4, 4)
    failed = results(ingress, batch["id"], status="failed")
    assert [line["index"] for line in failed] == [1, 3, 5, 7]
    assert all(line["error"]["code"] == "unknown_model" for line in failed)
    before = chunks_of(batch["id"])

    shutil.copytree(ready.parent, model_repository / "chunk-late")
    response = post(ingress, batch["id"], "retry")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "running"
    assert response.json()["counts"]["failed"] == 0 and response.json()["counts"]["total"] == 8
    second = finished(ingress, batch["id"])
    assert second["status"] == "succeeded" and second["counts"]["succeeded"] == 8
    after = chunks_of(batch["id"])
    new = {name: doc for name, doc in after.items() if name not in before}
    assert sorted(i for doc in new.values() for i in doc["indexes"]) == [1, 3, 5, 7]
    assert all(name.startswith("r") and doc["status"] == "succeeded" for name, doc in new.items())
    for name, doc in before.items():  # the first chunks did not run again
        assert after[name]["attempts"] == doc["attempts"]
        assert after[name]["terminal_writes"] == 1
        assert after[name]["results"] == doc["results"]
    assert [line["status"] for line in results(ingress, batch["id"])] == ["succeeded"] * 8

    again = post(ingress, batch["id"], "retry")
    assert again.status_code == 200 and again.json()["status"] == "succeeded"
    assert chunks_of(batch["id"]).keys() == after.keys()  # nothing failed now: no new chunk


def test_cancel_during_a_run_ends_every_item_succeeded_or_cancelled(
    ingress: Service, worker: Service, clean_firestore: Emulators
) -> None:
    lines = [json.dumps({"texts": [f"racing {i}", "two texts"]}) for i in range(3000)]
    batch = submit_ndjson(ingress, "embed", lines).json()
    wait_for(
        lambda: get_batch(ingress, batch["id"])["counts"]["succeeded"] > 0, 120, "a first result"
    )
    assert post(ingress, batch["id"], "cancel").status_code == 200
    done = finished(ingress, batch["id"], 180)
    counts = done["counts"]
    assert done["status"] == "cancelled"
    assert counts["succeeded"] + counts["cancelled"] == 3000 and counts["failed"] == 0
    assert counts["cancelled"] > 0
    statuses = stored_statuses(batch["id"])
    tally = {s: list(statuses.values()).count(s) for s in STATUSES}
    assert tally == {s: counts[s] for s in STATUSES}
    for doc in chunks_of(batch["id"]).values():
        for position, code in enumerate(doc["items"]):
            if code == "c":  # never ran: no result stored
                assert not (doc.get("results") or [b""] * doc["n"])[position]
        if set(doc["items"]) == {"c"} and doc.get("started_at") is None:
            assert doc["attempts"] == 0  # ended by the sweep or at its claim, never run
    assert [line["index"] for line in results(ingress, batch["id"])] == list(range(3000))


def test_a_worker_never_starts_a_chunk_of_a_cancelled_batch(
    ingress: Service, worker: Service, clean_firestore: Emulators
) -> None:
    # The cancel recorded, and nothing else: as if the ingress died before its sweep. The
    # worker reads the batch with every claim and ends its chunks itself.
    lines = [json.dumps({"texts": [f"orphan {i}"]}) for i in range(600)]
    with paused(worker):
        batch = submit_ndjson(ingress, "embed", lines).json()
        firestore.Client().collection("batches").document(batch["id"]).update(
            {"cancel_requested": True}
        )
    done = finished(ingress, batch["id"], 120)
    assert done["status"] == "cancelled" and done["counts"]["cancelled"] == 600
    for doc in chunks_of(batch["id"]).values():
        assert doc["status"] == "cancelled" and set(doc["items"]) == {"c"}
        assert doc["attempts"] == 0 and "started_at" not in doc


def test_the_event_stream_resumes_with_last_event_id_while_the_worker_runs(
    ingress: Service, worker: Service, clean_firestore: Emulators
) -> None:
    lines = [json.dumps({"texts": [f"streamed {i}"]}) for i in range(1200)]
    with paused(worker):
        batch = submit_ndjson(ingress, "embed", lines).json()
        stream = open_events(ingress, batch["id"])
        events = events_of(stream)
        first = next(events)
        assert first["event"] == "progress" and first["data"]["counts"]["queued"] == 1200
    got: list[dict[str, Any]] = []
    for event in events:
        if event["event"] == "item":
            got.append(event)
        if len(got) == 300:
            break
    stream.close()
    ended = False
    while not ended:  # resumed as often as it takes, each time after the last id received
        stream = open_events(ingress, batch["id"], got[-1]["id"])
        events = events_of(stream)
        assert next(events)["event"] == "progress"
        resumed_at = len(got)
        for event in events:
            if event["event"] == "item":
                got.append(event)
            ended = event["event"] == "done"
            if ended or len(got) == resumed_at + 400:
                break  # done, or drop the connection again mid-way
        stream.close()
    indexes = [e["data"]["index"] for e in got]
    assert sorted(indexes) == list(range(1200))
    assert all(e["data"]["status"] == "succeeded" for e in got)
    keys = [parse_event_id(e["id"]) for e in got]
    assert keys == sorted(keys)  # type: ignore[type-var]
