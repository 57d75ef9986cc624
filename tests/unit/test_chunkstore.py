"""The ingress's chunk rules that need no store: what a cancel writes to a queued chunk and how
many sweeps run, which items a retry takes from a chunk, the order of a batch event stream's
events, where item events resume, and which ``Last-Event-ID`` is one."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask
from google.api_core import exceptions as gexc
from google.cloud.firestore import SERVER_TIMESTAMP, Increment

from ingress.batches import chunkcancel
from ingress.batches.chunkcancel import CancelSweeper
from ingress.batches.chunkretry import _source
from ingress.batches.chunkstore import LAST_POSITION, ChunkStore, EventKey
from ingress.batches.documents import Batch as StoredBatch
from ingress.batches.events import batch_stream
from ingress.batches.reads import _last_event_id
from ingress.errors import BadRequest
from schemas import get_task
from schemas.batches import CountDeltas
from schemas.chunks import event_id, pack_inputs, parse_event_id
from tests.support import sse_messages

NOW = datetime(2026, 12, 1, tzinfo=UTC)


class Recorder:
    """Collects the writes ``CountDeltas.write`` adds to a commit."""

    def __init__(self) -> None:
        self.writes: dict[str, dict[str, int]] = {}

    def set(self, reference: Any, document_data: dict[str, Any], merge: bool = False) -> None:
        path = str(reference).split("/counters/")[0]
        changes = {k: v.value for k, v in document_data.items() if isinstance(v, Increment)}
        self.writes[path] = changes

    @staticmethod
    def document(*path: str) -> str:
        return "/".join(path)


def test_a_cancel_ends_the_items_not_ended_and_moves_only_their_counts() -> None:
    sweeper = CancelSweeper(None, lambda _id: None, 5.0, 60.0)  # type: ignore[arg-type]
    deltas = CountDeltas()
    doc = {
        "status": "queued",
        "items": "qrqs",
        "tenant": "t",
        "batch_path": "batches/b",
        "in_flight_counted": True,
    }
    changes = sweeper._cancelled(doc, NOW, deltas)
    assert changes["status"] == "cancelled" and changes["items"] == "cccs"
    assert changes["done_at"] is SERVER_TIMESTAMP and changes["finished_by"] == "batch-cancel"
    writer = Recorder()
    deltas.write(writer, writer, NOW)
    # The "r" was counted as running when its attempt claimed it: that count moves, not queued.
    assert writer.writes["batches/b"] == {"queued": -2, "running": -1, "cancelled": 3}
    assert writer.writes["tenants/t"] == {"in_flight": -3}


class Snapshot:
    def __init__(self, doc: dict[str, Any], exists: bool = True):
        self._doc = doc
        self.exists = exists
        self.reference = "batches/b/chunks/0000000000"
        self.update_time = NOW

    def to_dict(self) -> dict[str, Any]:
        return dict(self._doc)


def test_a_retry_takes_exactly_the_failed_items_of_an_ended_chunk() -> None:
    lines = [json.dumps({"texts": [f"t{i}"]}).encode() for i in range(4)]
    doc = {
        "status": "succeeded",
        "start": 10,
        "n": 4,
        "items": "sf>f",
        "inputs": pack_inputs(lines),
    }
    source = _source(Snapshot(doc), get_task("embed"))
    assert source is not None
    assert source.positions == [1, 3] and source.indexes == [11, 13]
    assert source.lines == [lines[1], lines[3]]
    assert "inputs" not in source.doc and source.size > 2 * 384 * 4
    retried = {**doc, "indexes": [5, 9], "n": 2, "items": "fs"}
    del retried["start"]
    assert _source(Snapshot(retried), get_task("embed")).indexes == [5]  # type: ignore[union-attr]
    for nothing in ({**doc, "items": "ss>c"}, {**doc, "status": "running"}):
        assert _source(Snapshot(nothing), get_task("embed")) is None
    assert _source(Snapshot(doc, exists=False), get_task("embed")) is None


class Listener:
    """A listener that delivers one snapshot at once, as Firestore's first one."""

    def __init__(self, docs: list[Any]):
        self.docs = docs

    def on_snapshot(self, callback: Callable[..., None]) -> Listener:
        callback(self.docs, [], NOW)
        return self

    def unsubscribe(self) -> None:
        pass


class FakeChunks:
    """Completions from a list; counter shards that say every item ended."""

    def __init__(self, events: list[tuple[EventKey, str, dict[str, Any]]], shards: list[Any]):
        self.events = events
        self.shard_docs = shards
        self.asked: list[EventKey | None] = []

    def completions(
        self, _batch_id: str, after: EventKey | None, _with_results: bool
    ) -> Iterator[tuple[EventKey, str, dict[str, Any]]]:
        self.asked.append(after)
        return iter([e for e in self.events if after is None or e[0] > after])

    def shards(self, _batch_id: str) -> Listener:
        return Listener(self.shard_docs)

    def document(self, _batch_id: str) -> Listener:
        return Listener([])


def item_events(n: int) -> list[tuple[EventKey, str, dict[str, Any]]]:
    out = []
    for i in range(n):
        eid = event_id(NOW, "0000000000", i)
        key = parse_event_id(eid)
        assert key is not None
        out.append((key, eid, {"index": i, "status": "succeeded", "attempts": 1}))
    return out


BATCH = {
    "tenant": "t",
    "task": "embed",
    "created_at": NOW,
    "counts": {"total": 3, "queued": 3},
    "cancel_requested": False,
}
ENDED = [Snapshot({"queued": -3, "succeeded": 3, "at": NOW})]


def run(fake: FakeChunks, doc: dict[str, Any], after: EventKey | None, resumed: bool) -> list[Any]:
    batch = StoredBatch("b", doc, [])
    final = StoredBatch("b", doc, [s.to_dict() for s in ENDED])
    stream = batch_stream(fake, batch, lambda: final, after, resumed, 5.0, False, 30.0)  # type: ignore[arg-type]
    return list(sse_messages("".join(stream).splitlines()))


def test_a_stream_sends_progress_then_each_item_with_its_id_then_done() -> None:
    fake = FakeChunks(item_events(3), ENDED)
    messages = run(fake, BATCH, None, False)
    assert [m["event"] for m in messages] == [
        "progress",
        "item",
        "item",
        "item",
        "progress",
        "done",
    ]
    assert [m["id"] for m in messages[1:4]] == [e[1] for e in fake.events]
    assert all("id" not in m for m in messages if m["event"] != "item")
    assert messages[-1]["data"]["status"] == "succeeded"


def test_a_stream_resumed_on_an_ended_batch_sends_what_was_missed() -> None:
    fake = FakeChunks(item_events(3), ENDED)
    ended = {**BATCH, "counts": {"total": 3, "succeeded": 3}}
    messages = run(fake, ended, fake.events[0][0], True)
    assert [m["event"] for m in messages] == ["progress", "item", "item", "done"]
    assert [m["data"]["index"] for m in messages[1:3]] == [1, 2]
    assert [m["event"] for m in run(fake, ended, None, False)] == ["progress", "done"]


def test_cancel_sweeps_are_capped_per_tenant_and_per_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    release = threading.Event()
    sweeper = CancelSweeper(None, lambda _id: None, 5.0, 60.0)  # type: ignore[arg-type]
    monkeypatch.setattr(sweeper, "sweep_cancelled", lambda _batch_id: release.wait(10) and 0)
    monkeypatch.setattr(chunkcancel, "SWEEPS", 3)
    try:
        assert sweeper.start("a1", "a") and sweeper.start("a2", "a")
        assert not sweeper.start("a1", "a")  # that batch is being swept
        assert not sweeper.start("a3", "a")  # the tenant's cap
        assert sweeper.start("b1", "b")
        assert not sweeper.start("c1", "c")  # the process's cap
    finally:
        release.set()
    for _ in range(200):
        if sweeper.start("a3", "a"):  # room again once they end
            break
        threading.Event().wait(0.01)
    else:
        raise AssertionError("the sweeps did not free their places")


class LostAnswerBatches:
    """The batches collection of a Firestore whose first conditional update lands but whose
    answer is lost: the client's retry then fails its precondition (the update time moved)."""

    def __init__(self, doc: dict[str, Any]):
        self.doc = doc
        self.updates = 0

    def document(self, _batch_id: str) -> LostAnswerBatches:
        return self

    def update(self, changes: dict[str, Any], **_kwargs: Any) -> None:
        self.updates += 1
        self.doc.update(changes)
        raise gexc.FailedPrecondition("the retry of a write that landed")

    def get(self, **_kwargs: Any) -> Snapshot:
        return Snapshot(dict(self.doc))


class WriteOptions:
    def write_option(self, **_kwargs: Any) -> None:
        return None


def test_a_cancel_whose_write_landed_but_whose_answer_was_lost_still_starts_the_sweep() -> None:
    batches = LostAnswerBatches({"tenant": "t", "task": "embed"})
    started: list[str] = []
    store = ChunkStore.__new__(ChunkStore)
    store._client = WriteOptions()  # type: ignore[assignment]
    store._batches = batches
    store._retry, store._timeout_s = None, 5.0
    store._sweeper = type("Sweeper", (), {"start": lambda _s, b, _t: started.append(b)})()  # type: ignore[assignment]
    running = {"total": 3, "queued": 3}
    batch = StoredBatch("b1", dict(batches.doc), [running], datetime.now(UTC))

    answered = store.request_cancel(batch)

    assert batches.updates == 1 and started == ["b1"]
    assert answered.doc["cancel_requested"] is True


class Query:
    """A chunks query that records how it was built and answers one page of snapshots."""

    def __init__(self, pages: list[list[Any]]):
        self.pages = pages
        self.calls: list[tuple[str, Any]] = []

    def __getattr__(self, name: str) -> Callable[..., Query]:
        def record(*args: Any, **kwargs: Any) -> Query:
            self.calls.append((name, args[0] if args else kwargs.get("filter")))
            return self

        return record


class EventSnapshot(Snapshot):
    def __init__(self, chunk: str, doc: dict[str, Any]):
        super().__init__(doc)
        self.id = chunk


def completions(query: Query, after: EventKey | None) -> list[tuple[EventKey, str, Any]]:
    store = ChunkStore.__new__(ChunkStore)
    store._chunks = lambda _batch_id: query  # type: ignore[method-assign]
    store._read = lambda _query, _what: query.pages.pop(0) if query.pages else []  # type: ignore[method-assign]
    return list(store.completions("b", after, False))


def test_item_events_mark_a_chunk_sent_whole_and_resume_after_it() -> None:
    done = {"start": 4, "n": 4, "items": "sf>q", "done_at": NOW, "attempts": 1}
    query = Query([[EventSnapshot("0000000004", done)]])
    got = completions(query, None)
    assert [line["index"] for _, _, line in got] == [4, 5]  # ended items only
    keys = [key for key, _, _ in got]
    sent = [parse_event_id(eid) for _, eid, _ in got]
    assert sent[0] == keys[0] and sent[1] == (keys[0][0], "0000000004", 1)
    assert keys[1] == (keys[0][0], "0000000004", LAST_POSITION)  # the chunk's cursor

    query = Query([])
    completions(query, keys[1])
    assert ("start_after", {"done_at": NOW, "__name__": "0000000004"}) in query.calls
    assert not any(name == "where" for name, _ in query.calls)  # not read again
    query = Query([[EventSnapshot("0000000004", done)]])
    resumed = completions(query, keys[0])  # a client's id within the chunk: read it again
    assert any(name == "where" for name, _ in query.calls)
    assert [line["index"] for _, _, line in resumed] == [5]


@pytest.mark.parametrize(
    "header",
    ["7", "\xb2.0000000004.00001", "1" * 5000 + ".0000000004.00001", "1.0000000004.00001"],
)
def test_a_last_event_id_not_written_by_event_id_is_a_400(header: str) -> None:
    context = Flask(__name__).test_request_context(headers={"Last-Event-ID": header})
    with context, pytest.raises(BadRequest):
        _last_event_id()


def test_a_last_event_id_written_by_event_id_is_its_key() -> None:
    eid = event_id(NOW, "r" + "0" * 32, 12)
    with Flask(__name__).test_request_context(headers={"Last-Event-ID": eid}):
        assert _last_event_id() == parse_event_id(eid)
