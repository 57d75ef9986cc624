"""The pieces of a batch's acceptance that need no store: reading and validating NDJSON lines
(``ingress/batches/input.py``), cutting them into chunks with bounded memory and encoding chunk
documents (``ingress/batches/chunkwriter.py``), the accept commit's chunk updates
(``ingress/batches/store.py``), and the chunk settings."""

from __future__ import annotations

import io
import json
import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from google.cloud import firestore
from google.cloud.firestore_v1 import _helpers

from common.settings import ConfigError
from ingress.batches import chunkwriter
from ingress.batches import input as batchinput
from ingress.batches.chunkwriter import ChunkWriter, Written
from ingress.batches.input import NdjsonItems, _schema_gaps
from ingress.errors import BadRequest, PayloadTooLarge
from ingress.settings import Settings
from schemas import get_task
from schemas.chunks import DEFAULT_CHUNK_ITEMS, result_bound, unpack_inputs


class _Request:
    def __init__(self, body: bytes, task: str = "embed"):
        self.stream = io.BytesIO(body)
        self.content_length = len(body)
        self.path = "/v1/batches"
        self.args = {"task": task}
        self.headers: dict[str, str] = {}
        self.max_content_length: int | None = None
        self.environ: dict[str, Any] = {}  # no gunicorn socket: the pace is checked between reads


def read(body: bytes, task: str = "embed", **settings: Any) -> tuple[list[bytes], NdjsonItems]:
    items = NdjsonItems(
        _Request(body, task),  # type: ignore[arg-type]
        Settings(api_keys="t:k", **settings),
        get_task(task),
    )
    return [line for line, _model in items], items


def messages(items: NdjsonItems) -> list[tuple[list[str | int], str]]:
    return [(problem.loc, problem.msg) for problem in items.problems.errors]


# -- lines --------------------------------------------------------------------------------------


def test_valid_lines_are_kept_as_they_came_stripped_and_blank_lines_skipped() -> None:
    good, items = read(b'{"texts": ["a"]}\r\n\n  {"texts":["b", "c"]}  \n')
    assert good == [b'{"texts": ["a"]}', b'{"texts":["b", "c"]}']
    assert items.problems.bad == 0


def test_each_bad_line_is_named_in_the_api_s_words() -> None:
    body = b"\n".join(
        [
            b'{"texts": ["fine"]}',
            b'{"texts": ["a"]',  # 2: not JSON
            b"[" * 50_000,  # 3: too deep for any parser
            b'{"texts": ["\\ud800"]}',  # 4: a lone surrogate
            b"[1]",  # 5: not an object
            b'{"texts": []}',  # 6: the schema
            b'{"texts": ["fine"]}',
        ]
    )
    good, items = read(body)
    assert good == [b'{"texts": ["fine"]}', b'{"texts": ["fine"]}']
    found = messages(items)
    assert found[0][0] == ["body", "line", 2] and found[0][1].startswith("not valid JSON")
    assert found[1] == (["body", "line", 3], "nested deeper than 32 levels")
    assert found[2] == (["body", "line", 4], "contains an unpaired UTF-16 surrogate escape")
    assert found[3] == (["body", "line", 5], "an item is a JSON object: the task's input")
    assert found[4][0] == ["body", "line", 6, "texts"]
    with pytest.raises(Exception, match="5 lines are invalid") as refused:
        items.problems.raise_if_bad("line")
    assert "line 2" in str(refused.value)


def test_guards_the_compiled_parser_lacks_apply_where_a_schema_lets_them_matter() -> None:
    deep = b'{"model": "m", "instances": [' + b"[" * 40 + b"]" * 40 + b"]}"
    good, items = read(deep, task="predict")
    assert good == [] and messages(items)[0][1] == "nested deeper than 32 levels"
    series = [{"ds": "2024-01-01", "y": 1}, {"ds": "2024-01-02", "y": 10**30}]
    body = json.dumps({"series": series, "horizon": 2, "frequency": "D"}).encode()
    good, items = read(body, task="forecast")
    assert good == [] and "cannot be stored" in messages(items)[0][1]


def test_only_schemas_with_free_form_values_or_open_integers_pay_for_the_guards() -> None:
    assert _schema_gaps("embed") == (False, False)
    assert _schema_gaps("entities") == (False, False)
    assert _schema_gaps("similar") == (False, False)
    assert _schema_gaps("forecast") == (False, True)  # y: any number
    assert _schema_gaps("predict") == (True, True)  # instances: any JSON


def test_a_line_that_is_not_utf8_is_a_400() -> None:
    with pytest.raises(BadRequest, match="line 2 is not valid UTF-8"):
        read(b'{"texts": ["a"]}\n{"texts": ["\xff"]}\n')


def test_bad_lines_past_the_reported_errors_are_only_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    listed: list[int] = []
    line_problems = batchinput._line_problems

    def spy(*args: Any) -> Any:
        listed.append(args[4])
        return line_problems(*args)

    monkeypatch.setattr(batchinput, "_line_problems", spy)
    many = b'{"texts": [' + b",".join([b"1"] * 50) + b"]}"  # 50 errors: more than reported
    good, items = read(b"\n".join([many] * 30 + [b'{"texts": []}']))
    assert good == [] and items.problems.bad == 31
    assert len(items.problems.errors) == 20
    assert listed == [1, 31]  # the lines after the first listed nothing (one error still does)
    with pytest.raises(Exception, match="31 lines are invalid"):
        items.problems.raise_if_bad("line")
    with pytest.raises(BadRequest, match="line 31 is not valid UTF-8"):
        read(b"\n".join([many] * 30 + [b'{"texts": ["\xff"]}']))


def test_more_items_than_a_request_holds_is_a_413_as_they_arrive() -> None:
    with pytest.raises(PayloadTooLarge, match="at most 3 items"):
        read(b'{"texts": ["a"]}\n' * 10, max_batch_items=3)


# -- chunks -------------------------------------------------------------------------------------


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> firestore.Client:
    """A client that never connects: only its paths and encoders are used."""
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", "127.0.0.1:9")
    return firestore.Client(project="unit")


def writer(client: firestore.Client, max_items: int, base: int = 0) -> ChunkWriter:
    fields = {
        "tenant": "t",
        "task": "embed",
        "part": 0,
        chunkwriter.ACCEPT_TOKEN: "tok",
        "created_at": datetime.now(UTC),
    }
    return ChunkWriter(
        client,
        client.collection("batches").document("b"),
        fields,
        base,
        max_items,
        lambda task_input, size: result_bound("embed", task_input, size),
        5.0,
        None,
    )


def _recorded(monkeypatch: pytest.MonkeyPatch, delay_s: float = 0.0) -> list[tuple[int, int]]:
    """Replace the store write of each chunk: record ``(start, n)``, take ``delay_s``."""
    lock = threading.Lock()
    written: list[tuple[int, int]] = []

    def write(self: ChunkWriter, start: int, lines: list[bytes]) -> Written:
        time.sleep(delay_s)
        with lock:
            written.append((start, len(lines)))
        return Written(chunkwriter.chunk_id(start), start, len(lines), datetime.now(UTC))

    monkeypatch.setattr(ChunkWriter, "_write_in_context", write)
    return written


def add_all(chunks: ChunkWriter, lines: list[bytes], most_in_hand: list[int]) -> None:
    model = get_task("embed").input_model
    for line in lines:
        chunks.add(line, model.model_validate_json(line))
        most_in_hand.append(sum(1 for f in chunks._futures if not f.done()))


def test_items_are_cut_into_chunks_written_with_a_few_in_hand_at_most(
    client: firestore.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = _recorded(monkeypatch, delay_s=0.01)
    chunks = writer(client, max_items=10, base=500)
    in_hand: list[int] = []
    add_all(chunks, [json.dumps({"texts": [f"t{i}"]}).encode() for i in range(205)], in_hand)
    result = chunks.finish()
    assert [(c.start, c.n) for c in result] == [(500 + 10 * k, 10) for k in range(20)] + [(700, 5)]
    assert sorted(written) == [(c.start, c.n) for c in result]
    # The slow store holds the reader back: memory is a few chunks, not the request.
    assert max(in_hand) <= chunkwriter.WRITERS + chunkwriter.QUEUED


def test_a_chunk_is_cut_by_bytes_before_it_is_full(
    client: firestore.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    _recorded(monkeypatch)
    chunks = writer(client, max_items=256)
    line = json.dumps({"texts": ["x"] * 256}).encode()  # 256 vectors: ~393 KB of result each
    add_all(chunks, [line] * 5, [])
    # Two such items fill a chunk's budget.
    assert [(c.start, c.n) for c in chunks.finish()] == [(0, 2), (2, 2), (4, 1)]


def test_a_stopped_writer_counts_items_but_writes_nothing(
    client: firestore.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = _recorded(monkeypatch)
    deleted: list[list[Written]] = []
    monkeypatch.setattr(
        chunkwriter, "delete_chunks", lambda _c, _r, chunks, *_a: deleted.append(chunks)
    )
    chunks = writer(client, max_items=2)
    line = b'{"texts": ["a"]}'
    add_all(chunks, [line] * 3, [])
    chunks.stop()
    add_all(chunks, [line] * 5, [])
    chunks.discard()
    assert chunks.items == 8
    assert written == [(0, 2)]  # the first full chunk only, written before the stop
    assert [[c.start for c in page] for page in deleted] == [[0]]  # and deleted again


def test_a_chunk_document_is_encoded_with_its_own_fields_over_the_shared_ones(
    client: firestore.Client,
) -> None:
    shared = {"tenant": "t", "task": "embed", "part": 3, "created_at": datetime.now(UTC)}
    chunks = client.collection("batches").document("b").collection("chunks")
    encoder = chunkwriter._Encoder(chunks, shared)
    now = datetime.now(UTC)
    pb = encoder.create("0000000512", 512, 2, b'{"texts":["a"]}\n{"texts":["b"]}', now)
    assert pb.update.name.endswith("/documents/batches/b/chunks/0000000512")
    assert pb.current_document.exists is False
    doc = _helpers.decode_dict(pb.update.fields, client)
    assert doc["status"] == "pending" and doc["part"] == 3 and doc["tenant"] == "t"
    assert doc["start"] == 512 and doc["n"] == 2 and doc["items"] == "qq"
    assert unpack_inputs(doc["inputs"]) == [b'{"texts":["a"]}', b'{"texts":["b"]}']
    assert doc["expire_at"] > doc["updated_at"]


def test_the_accept_commit_changes_each_chunk_only_as_this_request_wrote_it(
    client: firestore.Client,
) -> None:
    chunks = client.collection("batches").document("b").collection("chunks")
    first = datetime(2026, 1, 1, tzinfo=UTC)
    second = datetime(2026, 1, 2, tzinfo=UTC)
    written = [
        Written(
            "0000000000",
            0,
            256,
            _helpers.DatetimeWithNanoseconds.from_timestamp_pb(_timestamp(first)),
        ),
        Written(
            "0000000256",
            256,
            10,
            _helpers.DatetimeWithNanoseconds.from_timestamp_pb(_timestamp(second)),
        ),
    ]
    pbs = chunkwriter.chunk_updates(chunks, written, {"status": "queued"})
    assert [pb.update.name.rsplit("/", 1)[1] for pb in pbs] == ["0000000000", "0000000256"]
    assert [pb.current_document.update_time.ToDatetime(UTC) for pb in pbs] == [first, second]
    assert all(pb.update.fields["status"].string_value == "queued" for pb in pbs)
    assert list(pbs[0].update_mask.field_paths) == ["status"]


def _timestamp(moment: datetime) -> Any:
    from google.protobuf.timestamp_pb2 import Timestamp

    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


# -- settings -----------------------------------------------------------------------------------


def test_chunk_sizes_per_task_can_be_overridden() -> None:
    settings = Settings.from_env({"API_KEYS": "t:k", "CHUNK_ITEMS_EMBED": "512"})
    assert settings.chunk_items_for("embed") == 512
    assert settings.chunk_items_for("forecast") == 8
    assert settings.chunk_items_for("unknown") == DEFAULT_CHUNK_ITEMS
    assert settings.open_batch_ttl_s == 24 * 3600
    for bad in ("0", "many"):
        with pytest.raises(ConfigError, match="CHUNK_ITEMS_EMBED"):
            Settings.from_env({"API_KEYS": "t:k", "CHUNK_ITEMS_EMBED": bad})
