"""schemas/: limits, shapes and the stored form, without network."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from schemas import TASKS, Job, JobMessage, JobRequest, JobStatus, get_task
from schemas.jobs import TERMINAL_STATUSES, new_job_document, new_job_id
from schemas.tasks import UnknownTaskError
from schemas.tasks.embed import MAX_TEXT_CHARS, MAX_TEXTS, MAX_TOTAL_TEXT_BYTES, EmbedInput
from schemas.vectors import pack_f32, unpack_f32

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def locs(exc: ValidationError) -> list[tuple[str | int, ...]]:
    return [tuple(error["loc"]) for error in exc.errors()]


@pytest.mark.parametrize("count", [1, MAX_TEXTS])
def test_embed_accepts_1_to_256_texts(count: int) -> None:
    assert len(EmbedInput.model_validate({"texts": ["t"] * count}).texts) == count


@pytest.mark.parametrize(
    ("texts", "loc"),
    [
        ([], ("texts",)),
        (["t"] * (MAX_TEXTS + 1), ("texts",)),
        ("cat", ("texts",)),
        ([3], ("texts", 0)),
        ([""], ("texts", 0)),
        (["x" * (MAX_TEXT_CHARS + 1)], ("texts", 0)),
    ],
)
def test_embed_rejects_bad_texts_naming_the_field(
    texts: object, loc: tuple[str | int, ...]
) -> None:
    with pytest.raises(ValidationError) as info:
        EmbedInput.model_validate({"texts": texts})
    assert loc in locs(info.value)


def test_embed_limits_total_bytes_so_input_and_result_fit_one_document() -> None:
    # 4-byte characters: each text is within the character limit, the sum is not.
    texts = ["😀" * MAX_TEXT_CHARS] * (MAX_TOTAL_TEXT_BYTES // (4 * MAX_TEXT_CHARS) + 1)
    with pytest.raises(ValidationError, match="at most"):
        EmbedInput.model_validate({"texts": texts})
    stored_vectors = MAX_TEXTS * 384 * 4
    assert MAX_TOTAL_TEXT_BYTES + stored_vectors < 1024 * 1024 - 64 * 1024


def test_embed_rejects_unknown_fields() -> None:
    with pytest.raises(ValidationError) as info:
        EmbedInput.model_validate({"texts": ["a"], "model": "x"})
    assert ("model",) in locs(info.value)


def test_job_request_rejects_extra_fields_and_oversized_metadata() -> None:
    with pytest.raises(ValidationError) as info:
        JobRequest.model_validate({"task": "embed", "input": {}, "priority": 1})
    assert ("priority",) in locs(info.value)
    with pytest.raises(ValidationError, match="metadata"):
        JobRequest.model_validate(
            {"task": "embed", "input": {}, "metadata": {str(i): "v" for i in range(17)}}
        )


def test_job_request_checks_a_webhook_urls_form() -> None:
    ok = JobRequest.model_validate({"task": "embed", "input": {}, "webhook": "https://x.test/h"})
    assert ok.webhook == "https://x.test/h"
    for bad in ("ftp://x.test/h", "https://user:pw@x.test/h", "/relative", "https://x.test/ h"):
        with pytest.raises(ValidationError, match="webhook"):
            JobRequest.model_validate({"task": "embed", "input": {}, "webhook": bad})


def test_unknown_task_raises() -> None:
    with pytest.raises(UnknownTaskError):
        get_task("paint")


def test_tasks_describe_themselves_as_json_schema() -> None:
    described = TASKS["embed"].describe()
    assert described["name"] == "embed"
    assert described["input_schema"]["required"] == ["texts"]
    assert described["output_schema"]["properties"]["dimensions"]["default"] == 384


def test_statuses_and_terminal_set() -> None:
    assert [s.value for s in JobStatus] == ["queued", "running", "succeeded", "failed", "cancelled"]
    assert JobStatus.RUNNING not in TERMINAL_STATUSES and JobStatus.CANCELLED in TERMINAL_STATUSES


def test_job_ids_are_unique_hex() -> None:
    ids = {new_job_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(len(i) == 32 for i in ids)


def test_float32_round_trip_is_close() -> None:
    values = [0.1, -0.5, 1 / 3, 0.0]
    restored = unpack_f32(pack_f32(values))
    assert all(
        math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7)
        for a, b in zip(values, restored, strict=True)
    )
    with pytest.raises(ValueError):
        unpack_f32(b"abc")


def _doc(**changes: object) -> dict[str, object]:
    doc = new_job_document(tenant="t", task="embed", input={"texts": ["a"]}, metadata=None, now=NOW)
    doc.update(changes)
    return doc


def test_job_resource_from_a_queued_document_hides_the_tenant() -> None:
    job = Job.from_document("a" * 32, _doc()).to_json_dict()
    assert job["status"] == "queued" and job["attempts"] == 0
    assert job["created_at"] == "2026-11-26T12:00:00Z"
    assert "tenant" not in job and "result" not in job and "error" not in job
    assert job["links"]["self"] == "/v1/jobs/" + "a" * 32


def test_job_resource_gives_nested_vectors_from_the_stored_form() -> None:
    stored = TASKS["embed"].result_to_store(
        {"model": "m", "dimensions": 384, "embeddings": [[0.5] * 384, [0.25] * 384]}
    )
    assert isinstance(stored["embeddings_f32"][0], bytes)  # no arrays of arrays in Firestore
    doc = _doc(status="succeeded", result=stored, finished_at=NOW + timedelta(seconds=1))
    job = Job.from_document("b" * 32, doc).to_json_dict()
    assert job["result"]["embeddings"] == [[0.5] * 384, [0.25] * 384]


def test_result_only_when_succeeded_error_only_when_failed() -> None:
    error = {"code": "internal", "message": "boom"}
    failed = Job.from_document("c" * 32, _doc(status="failed", error=error, result={"x": 1}))
    assert failed.result is None and failed.error is not None and failed.error.code == "internal"
    running = Job.from_document("d" * 32, _doc(status="running", error=error))
    assert running.error is None


def test_job_message_round_trip_and_rejections() -> None:
    message = JobMessage(job_id="e" * 32, task="embed", tenant="t")
    data, attributes = message.to_pubsub()
    assert attributes == {"kind": "job", "job_id": "e" * 32, "task": "embed", "tenant": "t"}
    assert JobMessage.from_pubsub(data, attributes) == message
    batch = JobMessage(job_id="e" * 32, task="embed", tenant="t", priority="batch")
    batch_data, batch_attributes = batch.to_pubsub()
    assert batch_attributes["priority"] == "batch"  # an interactive job's carries none
    assert JobMessage.from_pubsub(batch_data, batch_attributes) == batch
    for bad_data, bad_attributes in [
        (b"not json", attributes),
        (b'{"v": 99, "job_id": "' + b"e" * 32 + b'"}', attributes),
        (data, {**attributes, "job_id": "f" * 32}),
        (data, {"job_id": "e" * 32, "task": "embed"}),
    ]:
        with pytest.raises(ValueError):
            JobMessage.from_pubsub(bad_data, bad_attributes)
