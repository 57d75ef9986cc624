"""Chunk documents' pure parts: ids, sizing, stored inputs and results, how unfinished items end
(the dead-letter function, the reconciler), result lines, event ids, and the two kinds of
messages."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from google.cloud.firestore import SERVER_TIMESTAMP

from schemas.batches import CountDeltas
from schemas.chunks import (
    DOC_BUDGET_BYTES,
    END_FIELDS,
    ChunkCutter,
    ChunkMessage,
    chunk_id,
    end_unfinished,
    event_id,
    item_indexes,
    item_line,
    pack_inputs,
    pack_result,
    parse_event_id,
    result_bound,
    unpack_inputs,
    unpack_result,
)
from schemas.jobs import JobStatus
from schemas.messages import (
    JobMessage,
    UnknownMessage,
    chunk_to_pubsub,
    parse,
)
from schemas.tasks import get_task
from schemas.tasks.embed import DIMENSIONS, MAX_TEXT_CHARS, MAX_TEXTS
from tests.support.fakes import chunk_document, totals
from worker.chunkstore import DOC_LIMIT_BYTES, DOC_OVERHEAD_BYTES

ERROR = {"code": "attempts_exhausted", "message": "gave up"}


def test_original_chunk_ids_sort_in_input_order_and_before_retry_chunks() -> None:
    ids = [chunk_id(start) for start in (0, 256, 1024, 999_744, 12_345_678)]
    assert ids == sorted(ids)
    assert all(i < "r" for i in ids)


def test_item_indexes_of_an_original_and_a_retry_chunk() -> None:
    assert item_indexes({"start": 512, "n": 3}) == [512, 513, 514]
    assert item_indexes({"indexes": [7, 300, 9000], "n": 3}) == [7, 300, 9000]


def test_the_cutter_cuts_by_count_and_by_bytes_and_an_item_alone_always_fits() -> None:
    cutter = ChunkCutter(max_items=3)
    sizes = [(10, 1600)] * 7
    chunks, current = [], 0
    for input_bytes, result_bytes in sizes:
        if not cutter.fits(input_bytes, result_bytes):
            chunks.append(current)
            cutter.reset()
            current = 0
        cutter.add(input_bytes, result_bytes)
        current += 1
    chunks.append(current)
    assert chunks == [3, 3, 1]

    big = ChunkCutter(max_items=256)
    assert big.fits(100, DOC_BUDGET_BYTES * 2), "an item alone makes a chunk, whatever its size"
    big.add(100, DOC_BUDGET_BYTES * 2)
    assert not big.fits(1, 1)


def test_an_embed_chunk_of_256_one_text_items_fits_a_document_and_256_texts_fill_one() -> None:
    spec = get_task("embed")
    one = spec.input_model.model_validate({"texts": ["a short sentence"]})
    assert 256 * result_bound("embed", one, 40) < DOC_BUDGET_BYTES
    # The largest embed item: 256 texts, 512 KiB of text, and its 256 vectors.
    full = {"texts": ["x" * MAX_TEXT_CHARS] * MAX_TEXTS}
    line = spec.input_model.model_validate(full).model_dump_json().encode()
    bound = result_bound("embed", spec.input_model.model_validate_json(line), len(line))
    vectors = {"model": "all-MiniLM-L6-v2", "dimensions": DIMENSIONS}
    stored = pack_result("embed", {**vectors, "embeddings": [[0.5] * DIMENSIONS] * MAX_TEXTS})
    assert len(stored) <= bound, "the embed bound is an upper bound of the stored result"
    assert len(line) + bound + DOC_OVERHEAD_BYTES < DOC_LIMIT_BYTES, "alone, its result fits"
    cutter = ChunkCutter(max_items=256)
    cutter.add(len(line), bound)
    assert not cutter.fits(len(line), bound), "two such items share no chunk"
    assert not cutter.fits(40, result_bound("embed", one, 40)), "nor one with another item"


def test_running_items_of_a_running_chunk_fail_from_running() -> None:
    deltas = CountDeltas()
    changes = end_unfinished(chunk_document("rrr", "running"), JobStatus.FAILED, deltas, ERROR)
    errors = {"0": ERROR, "1": ERROR, "2": ERROR}
    assert changes == {"items": "fff", "errors": errors, "done_at": SERVER_TIMESTAMP}
    assert totals(deltas) == {"running": -3, "failed": 3, "in_flight": -3}


def test_items_that_ended_keep_their_outcome_and_each_letter_moves_its_own_count() -> None:
    earlier = {"code": "bad_input", "message": "no"}
    doc = chunk_document("qsfcr", "queued", errors={"2": earlier})
    deltas = CountDeltas()
    changes = end_unfinished(doc, JobStatus.FAILED, deltas, ERROR)
    assert changes["items"] == "fsfcf"
    assert changes["errors"] == {"0": ERROR, "2": earlier, "4": ERROR}
    assert doc["errors"] == {"2": earlier}, "the document read is not changed"
    assert totals(deltas) == {"queued": -1, "running": -1, "failed": 2, "in_flight": -2}


def test_a_chunk_without_letters_counts_each_of_its_items_as_queued() -> None:
    deltas = CountDeltas()
    changes = end_unfinished({**chunk_document("", "queued"), "n": 2}, JobStatus.FAILED, deltas)
    assert changes["items"] == "ff"
    assert totals(deltas) == {"queued": -2, "failed": 2, "in_flight": -2}


def test_a_given_up_queued_chunk_fails_each_item_with_the_error() -> None:
    deltas = CountDeltas()
    changes = end_unfinished(chunk_document("qqq", "queued"), JobStatus.FAILED, deltas, ERROR)
    assert changes["items"] == "fff" and changes["done_at"] is SERVER_TIMESTAMP
    assert changes["errors"] == {str(i): ERROR for i in range(3)}
    assert totals(deltas) == {"queued": -3, "failed": 3, "in_flight": -3}


def test_a_cancelled_chunk_cancels_its_queued_items_and_records_no_error() -> None:
    deltas = CountDeltas()
    changes = end_unfinished(chunk_document("qq", "queued"), JobStatus.CANCELLED, deltas)
    assert changes["items"] == "cc" and "errors" not in changes
    assert totals(deltas) == {"queued": -2, "cancelled": 2, "in_flight": -2}


def test_ending_items_reads_only_the_fields_its_callers_select() -> None:
    doc = chunk_document("qsr", "running", errors={"1": ERROR}, inputs=b"x", task="embed")
    selected = {k: v for k, v in doc.items() if k in END_FIELDS}
    whole, projected = CountDeltas(), CountDeltas()
    changes = end_unfinished(doc, JobStatus.FAILED, whole, ERROR)
    assert end_unfinished(selected, JobStatus.FAILED, projected, ERROR) == changes
    assert (
        totals(projected)
        == totals(whole)
        == {
            "queued": -1,
            "running": -1,
            "failed": 2,
            "in_flight": -2,
        }
    )


def test_inputs_round_trip_as_lines() -> None:
    lines = [b'{"texts":["a"]}', b'{"texts":["b","c"]}']
    assert unpack_inputs(pack_inputs(lines)) == lines
    assert unpack_inputs(b"") == []


def test_an_embed_result_is_stored_as_float32_and_read_back_in_the_api_shape() -> None:
    rows = [[0.6, 0.8, 0.0], [0.0, 0.0, 1.0]]
    result = {"model": "all-MiniLM-L6-v2", "dimensions": 3, "embeddings": rows}
    stored = pack_result("embed", result)
    assert len(stored) < 100, "6 floats as float32, not as JSON numbers"
    back = unpack_result(stored)
    assert back["model"] == result["model"] and back["dimensions"] == 3
    for got, want in zip(back["embeddings"], rows, strict=True):
        assert all(math.isclose(g, w, rel_tol=1e-6) for g, w in zip(got, want, strict=True))


def test_other_results_are_stored_as_json_with_nested_arrays_intact() -> None:
    result = {"model": "m", "version": 2, "predictions": [[1, 2], [3, [4, 5]]], "note": "é"}
    assert unpack_result(pack_result("predict", result)) == result
    with pytest.raises(ValueError):
        unpack_result(b"Xnot ours")


def test_result_lines_show_each_items_outcome_and_attempts() -> None:
    doc = {
        "items": "sfcq>",
        "attempts": 2,
        "results": [pack_result("entities", {"entities": []}), b"", b"", b"", b""],
        "errors": {"1": {"code": "unknown_model", "message": "no model x"}},
    }
    assert item_line(10, doc, 0) == {
        "index": 10,
        "status": "succeeded",
        "result": {"entities": []},
        "attempts": 2,
    }
    assert item_line(11, doc, 0, with_result=False) == {
        "index": 11,
        "status": "succeeded",
        "attempts": 2,
    }
    failed = item_line(12, doc, 1)
    assert failed["status"] == "failed" and failed["error"]["code"] == "unknown_model"
    assert item_line(13, doc, 2)["status"] == "cancelled"
    assert item_line(14, doc, 3) == {"index": 14, "status": "queued", "attempts": 0}


def test_event_ids_order_as_completions_and_parse_back() -> None:
    early = datetime(2026, 12, 5, 8, 0, 0, 123456, tzinfo=UTC)
    late = datetime(2026, 12, 5, 8, 0, 1, tzinfo=UTC)
    ids = [
        event_id(early, chunk_id(512), 3),
        event_id(early, chunk_id(512), 12),
        event_id(late, chunk_id(0), 0),
    ]
    assert ids == sorted(ids)
    assert parse_event_id(ids[1]) == (int(early.timestamp() * 1_000_000), chunk_id(512), 12)
    for bad in ("", "12", "a.b.c", "1.x.y", f"{'²' * 16}.x.00001", f"{'9' * 5000}.x.00001"):
        assert parse_event_id(bad) is None


def test_both_kinds_of_message_parse_and_unknown_ones_are_not_poison() -> None:
    chunk = ChunkMessage(batch_id="b1", chunk_id=chunk_id(256), task="embed", tenant="acme")
    data, attributes = chunk_to_pubsub(chunk)
    assert parse(data, attributes) == chunk
    job = JobMessage(job_id="j1", task="embed", tenant="acme")
    assert parse(*job.to_pubsub()) == job
    # A job message from before messages said their kind is still a job.
    legacy = (b'{"v": 1, "job_id": "j1"}', {"job_id": "j1", "task": "embed", "tenant": "acme"})
    assert parse(*legacy) == job
    with pytest.raises(UnknownMessage):
        parse(b'{"v": 3, "kind": "chunk"}', {**attributes})
    with pytest.raises(UnknownMessage):
        parse(b"{}", {"kind": "shard"})
    with pytest.raises(UnknownMessage):
        parse(b'{"v": 2, "job_id": "j1"}', {"job_id": "j1"})
    with pytest.raises(ValueError):
        parse(b"not json", attributes)
    with pytest.raises(ValueError):
        parse(data, {**attributes, "chunk_id": "another"})
