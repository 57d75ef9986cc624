"""worker/chunkrun.py through the processor: a chunk's items, sub-batches, stops and settlement,
with a fake chunk store and a fake model (the integration tests run the real ones)."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from pydantic import BaseModel

from schemas.chunks import ChunkMessage, pack_result, unpack_result
from schemas.jobs import JobStatus
from schemas.messages import chunk_to_pubsub
from schemas.tasks.embed import EmbedInput
from tests.support import wait_for
from tests.support.fakes import FakeMessage, handle_all
from worker.attempts import StopToken
from worker.chunkstore import ChunkClaim, ChunkOutcome, doc_bytes, fit
from worker.errors import PermanentError, TransientError
from worker.modellock import ModelLock
from worker.processor import Processor
from worker.store import Busy, Claim, Skip
from worker.tasks.embed import MODEL_NAME, _packed_header

BATCH, CHUNK = "b" * 16, "0000000000"


def chunk_message(task: str = "embed") -> FakeMessage:
    data, attributes = chunk_to_pubsub(
        ChunkMessage(batch_id=BATCH, chunk_id=CHUNK, task=task, tenant="t")
    )
    return FakeMessage(data, attributes)


def lines(*texts: str) -> list[bytes]:
    return [json.dumps({"texts": [text]}).encode() for text in texts]


def chunk_claim(inputs: list[bytes], attempt: int = 1) -> ChunkClaim:
    return ChunkClaim(
        batch_id=BATCH,
        chunk_id=CHUNK,
        path=f"batches/{BATCH}/chunks/{CHUNK}",
        attempt=attempt,
        token="tok",
        task="embed",
        tenant="t",
        inputs=inputs,
        todo=tuple(range(len(inputs))),
        items="r" * len(inputs),
        batch_path=f"batches/{BATCH}",
        counted=True,
        inputs_bytes=sum(len(line) + 1 for line in inputs),
    )


@dataclass
class FakeChunks:
    """Claims answer ``decision``; commits and releases are recorded."""

    decision: ChunkClaim | Skip | Busy
    lease_s: float = 0.2
    verdict: str = "ok"
    owns: bool = True
    commits: list[ChunkOutcome] = field(default_factory=list)
    releases: list[tuple[str | None, bool]] = field(default_factory=list)
    claimed: threading.Event = field(default_factory=threading.Event)

    def claim(
        self, batch_id: str, chunk_id: str, tenant: str, worker: str = ""
    ) -> ChunkClaim | Skip | Busy:
        self.claimed.set()
        return self.decision

    def check(self, claims: Sequence[ChunkClaim]) -> dict[str, str]:
        return {c.token: self.verdict for c in claims}

    def commit(self, claim: ChunkClaim, outcome: ChunkOutcome) -> bool:
        self.commits.append(outcome)
        return self.owns

    def release(
        self, claim: ChunkClaim, last_error: dict[str, str] | None, started: bool = True
    ) -> bool:
        self.releases.append((last_error and last_error["code"], started))
        return self.owns

    def forget(self, claim: ChunkClaim) -> None:
        return None


class NoJobs:
    """The job store of a processor that only sees chunks here."""

    lease_s = 0.2

    def claim_many(self, jobs: Sequence[tuple[str, str]], worker: str = "") -> list[Any]:
        raise AssertionError("no job expected")

    def end_many(self, ends: Sequence[tuple[Claim, JobStatus, dict[str, Any]]]) -> list[bool]:
        raise AssertionError("no job expected")

    def release(self, claim: Claim, last_error: Any, started: bool = True) -> bool:
        raise AssertionError("no job expected")

    def check(self, claims: Sequence[Claim]) -> dict[str, str]:
        return {}


class TextModel:
    """Embeds each text as a vector of its length; ``poison`` fails any call it is in;
    ``on_call`` runs at every call (to stop the chunk from inside, as the watcher would)."""

    name = "embed"

    def __init__(self, poison: str = "", error: Exception | None = None, on_call: Any = None):
        self.poison = poison
        self.error = error or PermanentError("bad_text", "poison")
        self.on_call = on_call
        self.calls: list[int] = []

    def load(self) -> None:
        return None

    def run(self, inputs: list[BaseModel], stop: StopToken) -> list[dict[str, Any]]:
        texts = [text for item in inputs if isinstance(item, EmbedInput) for text in item.texts]
        self.calls.append(len(inputs))
        if self.on_call is not None:
            self.on_call(len(self.calls), texts, stop)
        if self.poison and self.poison in texts:
            raise self.error
        return [
            {"model": "m", "dimensions": 1, "embeddings": [[float(len(text))]]} for text in texts
        ]


def run_chunk(
    chunks: FakeChunks,
    model: TextModel,
    message: FakeMessage | None = None,
    size: int = 4,
    timeout_s: float = 60.0,
) -> FakeMessage:
    message = message or chunk_message()
    worker = Processor(
        NoJobs(),
        {"embed": model},
        task_timeout_s=lambda _task: timeout_s,
        batch_policy=lambda _task: (size, 0.0),
        chunks=chunks,
        watch_interval_s=0.05,
    )
    handle_all(worker, [message])
    return message


def letters(outcome: ChunkOutcome) -> str:
    return outcome.letters.decode()


def test_a_chunk_runs_in_sub_batches_and_commits_once_then_acks() -> None:
    inputs = lines(*(f"text {i}" for i in range(10)))
    chunks, model = FakeChunks(chunk_claim(inputs)), TextModel()
    assert run_chunk(chunks, model).settled == ["ack"]
    assert model.calls == [4, 4, 2]
    (outcome,) = chunks.commits
    assert outcome.status is JobStatus.SUCCEEDED and letters(outcome) == "s" * 10
    assert [unpack_result(r)["embeddings"] for r in outcome.results] == [
        [[float(len(f"text {i}"))]] for i in range(10)
    ]
    assert outcome.errors == {}


def test_identical_items_are_computed_once_and_each_gets_the_outcome() -> None:
    inputs = lines("same", "other", "same", "same", "other", "x")
    chunks, model = FakeChunks(chunk_claim(inputs + [b"not json", b"not json"])), TextModel()
    assert run_chunk(chunks, model).settled == ["ack"]
    assert model.calls == [3]  # "same", "other", "x": one model call, each once
    (outcome,) = chunks.commits
    assert letters(outcome) == "ssssssff"
    vectors = [unpack_result(r)["embeddings"] for r in outcome.results[:6]]
    assert vectors == [[[4.0]], [[5.0]], [[4.0]], [[4.0]], [[5.0]], [[1.0]]]
    assert outcome.errors["6"] == outcome.errors["7"]  # the copy took its source's error


def test_a_bad_item_fails_alone_as_invalid_input() -> None:
    inputs = lines("a", "b") + [b'{"texts": []}', b"not json"] + lines("c")
    chunks = FakeChunks(chunk_claim(inputs))
    assert run_chunk(chunks, TextModel()).settled == ["ack"]
    (outcome,) = chunks.commits
    assert letters(outcome) == "ssffs" and outcome.status is JobStatus.SUCCEEDED
    assert {pos: e["code"] for pos, e in outcome.errors.items()} == {
        "2": "invalid_input",
        "3": "invalid_input",
    }
    assert outcome.results[2] == outcome.results[3] == b""


@pytest.mark.parametrize(
    ("error", "code"),
    [(PermanentError("bad_text", "poison"), "bad_text"), (RuntimeError("bug"), "internal")],
)
def test_a_failing_sub_batch_is_run_again_item_by_item(error: Exception, code: str) -> None:
    inputs = lines("a", "b", "poison", "c", "d")
    chunks, model = FakeChunks(chunk_claim(inputs)), TextModel(poison="poison", error=error)
    assert run_chunk(chunks, model).settled == ["ack"]
    # The first sub-batch (a, b, poison, c) fails, then each alone; d runs in its own.
    assert model.calls == [4, 1, 1, 1, 1, 1]
    (outcome,) = chunks.commits
    assert letters(outcome) == "ssfss" and outcome.errors["2"]["code"] == code


def test_a_cancel_stops_at_the_next_sub_batch_and_unstarted_items_end_cancelled() -> None:
    def cancel_after_first(call: int, _texts: list[str], stop: StopToken) -> None:
        if call == 1:
            stop.stop("cancelled")  # what the watcher does once the batch asks to cancel

    inputs = lines(*(f"t{i}" for i in range(10)))
    chunks, model = FakeChunks(chunk_claim(inputs)), TextModel(on_call=cancel_after_first)
    assert run_chunk(chunks, model).settled == ["ack"]
    assert model.calls == [4]
    (outcome,) = chunks.commits
    assert outcome.status is JobStatus.CANCELLED and letters(outcome) == "ssss" + "c" * 6


def test_a_cancel_seen_by_the_watcher_ends_the_chunk_cancelled() -> None:
    def slow(_call: int, _texts: list[str], stop: StopToken) -> None:
        stop.sleep(0.1)  # long enough for a watch (every 0.05 s) to see the cancel

    inputs = lines(*(f"t{i}" for i in range(40)))
    chunks = FakeChunks(chunk_claim(inputs), verdict="cancelled")
    assert run_chunk(chunks, TextModel(on_call=slow), size=1).settled == ["ack"]
    (outcome,) = chunks.commits
    assert outcome.status is JobStatus.CANCELLED
    assert set(letters(outcome)) <= {"s", "c"} and letters(outcome).endswith("c")
    assert chunks.releases == []


def test_shutdown_past_the_grace_releases_the_chunk_and_nacks() -> None:
    def shutdown(call: int, _texts: list[str], stop: StopToken) -> None:
        stop.stop("shutdown")  # what abandon() does once the grace period is over

    chunks = FakeChunks(chunk_claim(lines(*(f"t{i}" for i in range(10)))))
    assert run_chunk(chunks, TextModel(on_call=shutdown)).settled == ["nack"]
    assert chunks.commits == [] and chunks.releases == [(None, True)]


def test_an_attempt_that_lost_its_chunk_acks_without_writing() -> None:
    def lost(call: int, _texts: list[str], stop: StopToken) -> None:
        stop.stop("lost")

    chunks = FakeChunks(chunk_claim(lines("a", "b", "c", "d", "e")))
    assert run_chunk(chunks, TextModel(on_call=lost)).settled == ["ack"]
    assert chunks.commits == [] and chunks.releases == []


def test_a_transient_failure_releases_the_whole_chunk_for_a_later_delivery() -> None:
    model = TextModel(poison="b", error=TransientError("model server away"))
    chunks = FakeChunks(chunk_claim(lines("a", "b", "c")))
    assert run_chunk(chunks, model).settled == ["drop", "retry in 10s"]
    assert chunks.commits == [] and chunks.releases == [("transient", True)]


def test_without_a_delivery_count_the_last_attempt_fails_what_did_not_end() -> None:
    model = TextModel(poison="c", error=TransientError("model server away"))
    chunks = FakeChunks(chunk_claim(lines("a", "b", "c", "d", "e"), attempt=5))
    message = chunk_message()
    message.delivery_attempt = None
    assert run_chunk(chunks, model, message, size=2).settled == ["ack"]
    (outcome,) = chunks.commits
    # c failed its last attempt, d ran alone beside it, e never started.
    assert outcome.status is JobStatus.FAILED and letters(outcome) == "ssfsf"
    assert {e["code"] for e in outcome.errors.values()} == {"attempts_exhausted"}


def test_a_sub_batch_past_the_time_limit_fails_its_items_and_the_next_one_runs() -> None:
    def slow_first(call: int, _texts: list[str], stop: StopToken) -> None:
        if call == 1:
            stop.sleep(0.5)

    chunks = FakeChunks(chunk_claim(lines("a", "b", "c", "d")))
    assert run_chunk(chunks, TextModel(on_call=slow_first), size=2, timeout_s=0.2).settled == [
        "ack"
    ]
    (outcome,) = chunks.commits
    assert letters(outcome) == "ffss" and outcome.errors["0"]["code"] == "timeout"


@pytest.mark.parametrize("decision", [Skip(CHUNK, "already succeeded"), Skip(CHUNK, "pending")])
def test_a_chunk_with_nothing_to_run_is_acked(decision: Skip) -> None:
    chunks, model = FakeChunks(decision), TextModel()
    assert run_chunk(chunks, model).settled == ["ack"]
    assert model.calls == [] and chunks.commits == []


def test_a_message_of_an_unknown_kind_or_version_is_never_acked() -> None:
    chunks, model = FakeChunks(chunk_claim(lines("a"))), TextModel()
    data, attributes = chunk_to_pubsub(
        ChunkMessage(batch_id=BATCH, chunk_id=CHUNK, task="embed", tenant="t")
    )
    newer = FakeMessage(data.replace(b'"v": 2', b'"v": 3'), attributes)
    other = FakeMessage(data, {**attributes, "kind": "shard"})
    for message in (newer, other):
        assert run_chunk(chunks, model, message).settled == ["drop", "retry in 10s"]
    assert model.calls == []


@pytest.mark.parametrize("data", [b"not json", b"[]", b'{"v": 2, "batch_id": "x"}'])
def test_a_chunk_message_that_is_garbage_is_acked_as_poison(data: bytes) -> None:
    chunks, model = FakeChunks(chunk_claim(lines("a"))), TextModel()
    attributes = {"kind": "chunk", "batch_id": BATCH, "chunk_id": CHUNK, "task": "embed"}
    assert run_chunk(chunks, model, FakeMessage(data, attributes)).settled == ["ack"]
    assert model.calls == []


def test_results_that_do_not_fit_the_document_fail_largest_first() -> None:
    claim = chunk_claim(lines("a", "b", "c", "d"))
    sizes = [300_000, 500_000, 100, 400_000]
    outcome = ChunkOutcome(JobStatus.SUCCEEDED, bytearray(b"ssss"), [b"x" * n for n in sizes])
    assert fit(claim, outcome) == 1
    assert letters(outcome) == "sfss" and outcome.results[1] == b""
    assert outcome.errors["1"]["code"] == "result_too_large"
    assert doc_bytes(claim, outcome) <= 1_000_000


def test_embeds_packed_results_are_what_pack_result_stores() -> None:
    vectors = np.random.default_rng(1).random((3, 384), dtype=np.float32)
    result = {"model": MODEL_NAME, "dimensions": 384, "embeddings": vectors.tolist()}
    assert _packed_header(3) + vectors.astype("<f4").tobytes() == pack_result("embed", result)


def test_a_job_waiting_for_the_model_goes_before_a_chunks_next_sub_batch() -> None:
    lock, order = ModelLock(), []

    def take(kind: str) -> None:
        with lock.job() if kind == "job" else lock.chunk():
            order.append(kind)

    with lock.chunk():  # a sub-batch runs; the chunk's next one, then a job, wait for it
        waiting = [threading.Thread(target=take, args=(kind,)) for kind in ("chunk", "job")]
        for thread in waiting:
            thread.start()
        wait_for(lambda: lock._jobs_waiting == 1, 5, "the job to wait for the model")
    for thread in waiting:
        thread.join(timeout=5)
    assert order == ["job", "chunk"]


def test_a_chunk_still_waiting_for_the_model_when_the_grace_ends_is_given_back() -> None:
    chunks = FakeChunks(chunk_claim(lines("a", "b")))
    worker = Processor(
        NoJobs(),
        {"embed": TextModel()},
        task_timeout_s=lambda _task: 60.0,
        chunks=chunks,
    )
    worker.start()
    message = chunk_message()
    try:
        with worker._model_lock.job():  # the model is busy: the claimed chunk waits to run
            thread = threading.Thread(target=worker.handle, args=([message],))
            thread.start()
            assert chunks.claimed.wait(5)
            worker.drain()
            worker.abandon()
        thread.join(timeout=5)
    finally:
        worker.close()
    assert message.settled == ["nack"] and chunks.commits == []
    assert [error for error, _started in chunks.releases] == [None]
