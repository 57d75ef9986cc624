"""Hostile input against a single-worker gunicorn ingress on the emulators: bodies built to make
parsing super-linear, uploads built to exhaust memory, and repeated cancels built to pile up
threads. Each must get its 4xx (or 503) and leave the worker alive and answering.

The ingress here publishes to a topic no subscription reads (``HOSTILE_TOPIC``): accepted
batches stay queued and no worker of the session spends minutes on 100,000 items.
"""

from __future__ import annotations

import json
import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from google.cloud import firestore, pubsub_v1  # type: ignore[attr-defined]

from emulators.localrun import ROOT
from emulators.process import stop_group
from ingress.batches.chunkstore import ChunkStore
from ingress.batches.documents import Batch as StoredBatch
from ingress.batches.input import ITEM_OVERHEAD_BYTES
from ingress.publisher import JobPublisher
from ingress.settings import MAX_BATCH_BODY_BYTES, MAX_BODY_BYTES, MAX_JSON_BATCH_BODY_BYTES
from schemas.batches import COUNTERS
from schemas.messages import Topics
from tests.support import descendants, wait_for
from tests.support.stacks import KEYS, Emulators, Service, sink_topic_named, start_ingress

pytestmark = pytest.mark.integration
TIMEOUT = 120
HEADERS = {"X-API-Key": KEYS["tenant-a"]}
HOSTILE_TOPIC = "hostile-sink"
"""A topic with no subscription: what this ingress publishes is dropped, its jobs stay queued."""
SMALL = 64 * 1024
LINE_LIMIT = MAX_BODY_BYTES - ITEM_OVERHEAD_BYTES
"""The longest NDJSON line (``ingress/batches/input.py``)."""
RATIO = 40
"""How much longer the largest body may take than the 64 KiB one: linear is ~16×, the old
regex pre-scan was ~250× (and past the worker's timeout at 1 MiB)."""


@pytest.fixture(scope="module")
def hostile_ingress(emulators: Emulators, log_dir: Path) -> Iterator[Service]:
    topic = sink_topic_named(emulators, HOSTILE_TOPIC)
    service = start_ingress(emulators, log_dir, "hostile-ingress", JOBS_TOPIC=topic)
    try:
        yield service
    finally:
        stop_group(service.process, 30)


def worker_pid(service: Service) -> int:
    """The gunicorn worker (the single child of the master)."""
    children = descendants(service.process.pid)
    assert len(children) == 1, children
    return children.pop()


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident set (``VmHWM``), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def cloudrun_memory_limit() -> int:
    doc = yaml.safe_load((ROOT / "cloudrun.yaml").read_text())
    container = doc["spec"]["template"]["spec"]["containers"][0]
    limit = container["resources"]["limits"]["memory"]
    units = {"Mi": 1024**2, "Gi": 1024**3}
    return int(limit[:-2]) * units[limit[-2:]]


# -- pathological bodies -----------------------------------------------------------------------


def escaped_quotes(n: int) -> bytes:
    """An unterminated string of escaped quotes: ``"`` then ``\\"`` repeated."""
    return b'"' + b'\\"' * ((n - 1) // 2)


def open_brackets(n: int) -> bytes:
    return b"[" * n


def tiny_objects(n: int) -> bytes:
    """About n/3 empty objects in an array left open (parsed to the end, then malformed)."""
    return b"[" + b"{}," * ((n - 1) // 3)


def backslashes(n: int) -> bytes:
    """An unterminated string of backslashes."""
    return b'"' + b"\\" * (n - 1)


def deep_object(n: int) -> bytes:
    """An item-shaped object whose ``texts`` opens ``[`` to the end."""
    head = b'{"texts": '
    return head + b"[" * (n - len(head))


BODIES: dict[str, Callable[[int], bytes]] = {
    "escaped_quotes": escaped_quotes,
    "open_brackets": open_brackets,
    "tiny_objects": tiny_objects,
    "backslashes": backslashes,
    "deep_object": deep_object,
}
PARSE_WORDS = ("JSON", "nested deeper", "Unterminated", "Expecting")
"""What a detail naming the parse failure says (never the size)."""


def post_job(url: str, body: bytes) -> requests.Response:
    headers = {**HEADERS, "Content-Type": "application/json"}
    return requests.post(f"{url}/v1/jobs", data=body, headers=headers, timeout=TIMEOUT)


def post_line(url: str, body: bytes) -> requests.Response:
    headers = {**HEADERS, "Content-Type": "application/x-ndjson"}
    return requests.post(
        f"{url}/v1/batches", params={"task": "embed"}, data=body, headers=headers, timeout=TIMEOUT
    )


def timed(post: Callable[[str, bytes], requests.Response], url: str, body: bytes) -> float:
    """The fastest of three posts of ``body``, each answered with a 4xx naming a parse failure."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        response = post(url, body)
        elapsed = time.perf_counter() - started
        assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
        detail = response.json()["detail"]
        assert any(word in detail for word in PARSE_WORDS), detail
        assert "bytes" not in detail, detail  # the failure, not the size
        best = min(best, elapsed)
    return best


class HealthProbe:
    """Polls ``/health`` from a thread while the body is processed; every probe must answer."""

    def __init__(self, url: str):
        self._url = url
        self._stop = threading.Event()
        self.answers: list[int] = []
        self.failures: list[str] = []
        self._thread = threading.Thread(target=self._run, name="health-probe", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.answers.append(requests.get(f"{self._url}/health", timeout=10).status_code)
            except requests.RequestException as exc:
                self.failures.append(type(exc).__name__)
            self._stop.wait(0.02)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(15)


@pytest.mark.parametrize("name", sorted(BODIES))
@pytest.mark.parametrize(
    ("where", "limit"),
    [("job", MAX_BODY_BYTES), ("ndjson_line", LINE_LIMIT)],
)
def test_a_pathological_body_is_refused_in_time_linear_in_its_size(
    hostile_ingress: Service, name: str, where: str, limit: int
) -> None:
    build = BODIES[name]
    post = post_job if where == "job" else post_line
    url = hostile_ingress.url
    with HealthProbe(url) as probe:
        small = timed(post, url, build(SMALL))
        large = timed(post, url, build(limit - 16))  # just under the limit that applies
    print(f"\n{where} {name}: 64 KiB {small * 1000:.1f} ms, {limit - 16} B {large * 1000:.1f} ms")
    assert large <= RATIO * small, (small, large)
    assert probe.answers and not probe.failures, probe.failures
    assert set(probe.answers) <= {200, 503}  # answered (503 only if a backend is down)


def test_a_body_with_sixty_thousand_bad_values_gets_a_short_422(
    hostile_ingress: Service,
) -> None:
    """One error per bad value would answer megabytes to a 1 MiB body: the 422 lists the first
    few and says how many there were."""
    metadata = {f"{i:x}": i for i in range(60_000)}  # ~0.9 MiB
    body = json.dumps({"task": "embed", "input": {"texts": ["x"]}, "metadata": metadata})
    response = post_job(hostile_ingress.url, body.encode())
    assert response.status_code == 422, response.text[:300]
    problem = response.json()
    assert len(problem["errors"]) == 20
    assert problem["detail"].startswith("60000 problems")
    assert len(response.content) < 8 * 1024


# -- memory ------------------------------------------------------------------------------------


def ndjson_upload(items: int, target_bytes: int) -> bytes:
    """``items`` embed lines filling just under ``target_bytes``."""
    per_line = target_bytes // items
    text_len = per_line - len('{"texts":[""]}\n') - 1
    lines = [
        json.dumps({"texts": [f"{i:08d} " + "x" * (text_len - 9)]}, separators=(",", ":"))
        for i in range(items)
    ]
    body = ("\n".join(lines) + "\n").encode()
    assert len(body) <= target_bytes, len(body)
    return body


@pytest.mark.slow
def test_concurrent_large_uploads_are_admitted_one_at_a_time_within_memory(
    hostile_ingress: Service,
) -> None:
    url = hostile_ingress.url
    pid = worker_pid(hostile_ingress)
    body = ndjson_upload(100_000, MAX_BATCH_BODY_BYTES)
    start = threading.Barrier(4)

    def upload(_i: int) -> requests.Response:
        start.wait(30)
        return post_line(url, body)

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(upload, range(4)))
    statuses = sorted(r.status_code for r in answers)
    assert statuses.count(202) >= 1, [(r.status_code, r.text[:200]) for r in answers]
    assert set(statuses) <= {202, 503}, statuses
    for refused in (r for r in answers if r.status_code == 503):
        assert int(refused.headers["Retry-After"]) > 0
        assert refused.headers["Content-Type"].startswith("application/problem+json")
        assert "large upload" in refused.json()["detail"]
    accepted = next(r for r in answers if r.status_code == 202).json()
    assert accepted["counts"]["total"] == 100_000

    # The largest JSON batch of the tiniest objects: parsed whole (the costliest bytes there
    # are), then refused for its item count. Sent alone, so an upload slot is free.
    prefix = b'{"task": "embed", "items": ['
    count = (MAX_JSON_BATCH_BODY_BYTES - len(prefix) - 8) // 3
    json_body = prefix + b"{}," * (count - 1) + b"{}]}"
    response = requests.post(
        f"{url}/v1/batches",
        data=json_body,
        headers={**HEADERS, "Content-Type": "application/json"},
        timeout=TIMEOUT,
    )
    assert response.status_code == 413, response.text[:300]
    assert "at most" in response.json()["detail"]

    # Past the JSON form's own limit, the 413 points at NDJSON.
    response = requests.post(
        f"{url}/v1/batches",
        data=json_body + b" " * 1024,
        headers={**HEADERS, "Content-Type": "application/json"},
        timeout=TIMEOUT,
    )
    assert response.status_code == 413 and "NDJSON" in response.json()["detail"]

    assert worker_pid(hostile_ingress) == pid  # the same worker: never killed or restarted
    assert requests.get(f"{url}/health", timeout=10).status_code == 200
    peak = peak_rss_bytes(pid)
    print(f"\npeak RSS of the gunicorn worker: {peak / 2**20:.0f} MiB")
    assert peak < cloudrun_memory_limit(), peak


def test_a_body_that_is_one_endless_line_is_refused_for_its_line_length(
    hostile_ingress: Service,
) -> None:
    """32 MiB with no newline: the line is cut as it arrives (never held or copied whole) and the
    422 names it; the body is read to its end at the cost of its size, not its square."""
    small = post_line(hostile_ingress.url, b"x" * (LINE_LIMIT + 1))
    body = b"x" * (MAX_BATCH_BODY_BYTES - 1)
    started = time.perf_counter()
    response = post_line(hostile_ingress.url, body)
    elapsed = time.perf_counter() - started
    for answer in (small, response):
        assert answer.status_code == 422, answer.text[:300]
        assert answer.json()["errors"][0]["loc"] == ["body", "line", 1]
        assert "at most" in answer.json()["errors"][0]["msg"]
    print(f"\none 32 MiB line refused in {elapsed * 1000:.0f} ms")


def test_an_upload_of_unknown_length_takes_a_slot_too(hostile_ingress: Service) -> None:
    """A chunked body declares no length: it is treated as large (and still accepted)."""

    def chunks() -> Iterator[bytes]:
        yield b'{"texts": ["one"]}\n'
        yield b'{"texts": ["two"]}\n'

    response = requests.post(
        f"{hostile_ingress.url}/v1/batches",
        params={"task": "embed"},
        data=chunks(),
        headers={**HEADERS, "Content-Type": "application/x-ndjson"},
        timeout=TIMEOUT,
    )
    assert response.status_code == 202, response.text
    assert response.json()["counts"]["total"] == 2


# -- slow uploads ------------------------------------------------------------------------------

GRACE_S = 1.0
MIN_PACE = 200_000
"""Bytes a second: the paced ingress's ``UPLOAD_MIN_BYTES_PER_S``."""


@pytest.fixture(scope="module")
def paced_ingress(emulators: Emulators, log_dir: Path) -> Iterator[Service]:
    topic = sink_topic_named(emulators, HOSTILE_TOPIC)
    service = start_ingress(
        emulators,
        log_dir,
        "paced-ingress",
        JOBS_TOPIC=topic,
        UPLOAD_GRACE_S=str(GRACE_S),
        UPLOAD_MIN_BYTES_PER_S=str(MIN_PACE),
    )
    try:
        yield service
    finally:
        stop_group(service.process, 30)


def open_upload(url: str) -> socket.socket:
    """A chunked NDJSON batch upload (a large upload: of unknown length) with its headers sent
    and no byte of its body yet."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=TIMEOUT)
    head = (
        "POST /v1/batches?task=embed HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        f"X-API-Key: {HEADERS['X-API-Key']}\r\n"
        "Content-Type: application/x-ndjson\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    sock.sendall(head.encode())
    return sock


def send_chunk(sock: socket.socket, data: bytes) -> None:
    sock.sendall(b"%x\r\n%s\r\n" % (len(data), data))


def answer(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    """The status and problem body of the response on ``sock``."""
    raw = b""
    while b"\r\n\r\n" not in raw or not raw.rstrip().endswith(b"}"):
        got = sock.recv(65536)
        if not got:
            break
        raw += got
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body[body.index(b"{") :])


def assert_slot_free(url: str) -> None:
    """A large upload (chunked, so of unknown length) is admitted and accepted."""
    lines = (b'{"texts": ["after %d"]}\n' % i for i in range(10))
    response = requests.post(
        f"{url}/v1/batches",
        params={"task": "embed"},
        data=lines,
        headers={**HEADERS, "Content-Type": "application/x-ndjson"},
        timeout=TIMEOUT,
    )
    assert response.status_code == 202, response.text


def test_a_stalled_upload_gets_408_and_gives_its_slot_back(paced_ingress: Service) -> None:
    """Without a read timeout the upload would hold the process's one upload slot, and its
    thread, for as long as the client kept the connection open."""
    with open_upload(paced_ingress.url) as sock:
        send_chunk(sock, b"".join(b'{"texts": ["stalled %d"]}\n' % i for i in range(10)))
        status, problem = answer(sock)  # and then nothing more is sent
    assert status == 408, problem
    assert "minimum pace of 200000 bytes/s after 1 s" in problem["detail"], problem
    assert_slot_free(paced_ingress.url)


def test_a_stalled_json_batch_gets_408_and_gives_its_slot_back(paced_ingress: Service) -> None:
    """The JSON form over ``LARGE_UPLOAD_BYTES`` takes the slot too, and is read at the pace."""
    host, port = paced_ingress.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
        head = (
            "POST /v1/batches HTTP/1.1\r\n"
            f"Host: {host}:{port}\r\n"
            f"X-API-Key: {HEADERS['X-API-Key']}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {MAX_JSON_BATCH_BODY_BYTES}\r\n\r\n"
        )
        sock.sendall(head.encode() + b'{"task": "embed", "items": [')
        status, problem = answer(sock)
    assert status == 408, problem
    assert "minimum pace" in problem["detail"], problem
    assert_slot_free(paced_ingress.url)


def test_a_trickled_upload_gets_408_and_gives_its_slot_back(paced_ingress: Service) -> None:
    """A line every 0.1 s: never silent for long, but far under the pace; a read of a socket
    timeout alone would never end."""
    with open_upload(paced_ingress.url) as sock:
        for i in range(600):
            try:
                send_chunk(sock, b'{"texts": ["trickle %d"]}\n' % i)
            except OSError:  # the server answered and closed
                break
            if select.select([sock], [], [], 0.1)[0]:
                break  # the answer is here
        status, problem = answer(sock)
    assert status == 408, problem
    assert f"minimum pace of {MIN_PACE} bytes/s" in problem["detail"], problem
    assert_slot_free(paced_ingress.url)


# -- cancels -----------------------------------------------------------------------------------


def test_fifty_cancels_of_one_batch_start_one_sweep(hostile_ingress: Service) -> None:
    url = hostile_ingress.url
    body = b"".join(b'{"texts": ["item %d"]}\n' % i for i in range(300))
    created = post_line(url, body)
    assert created.status_code == 202, created.text
    batch_id = created.json()["id"]

    def cancel(_i: int) -> int:
        return requests.post(
            f"{url}/v1/batches/{batch_id}/cancel", headers=HEADERS, timeout=TIMEOUT
        ).status_code

    with ThreadPoolExecutor(10) as pool:
        statuses = list(pool.map(cancel, range(40)))
    statuses += [cancel(i) for i in range(10)]  # and again once the first sweep has run
    assert set(statuses) <= {200, 409}, statuses
    assert statuses.count(200) >= 1

    def counts() -> dict[str, Any] | None:
        batch = requests.get(f"{url}/v1/batches/{batch_id}", headers=HEADERS, timeout=30).json()
        return batch if batch["counts"]["cancelled"] == 300 else None

    wait_for(counts, 60, "every queued item cancelled")
    started = [
        line
        for line in hostile_ingress.log_lines()
        if line.get("message") == "batch cancel sweep started" and line.get("batch_id") == batch_id
    ]
    assert len(started) == 1, started


def test_a_cancel_decided_on_a_stale_read_starts_no_second_sweep(
    hostile_ingress: Service, emulators: Emulators, caplog: pytest.LogCaptureFixture
) -> None:
    """Two cancels that read the batch before either wrote, the second arriving only once the
    first's sweep has ended (what a slow request meets, or one on another instance): the second
    is answered from the batch and starts nothing."""
    created = post_line(
        hostile_ingress.url, b"".join(b'{"texts": ["x %d"]}\n' % i for i in range(300))
    )
    assert created.status_code == 202, created.text
    batch_id = created.json()["id"]
    client = firestore.Client()
    store = ChunkStore(
        client,
        "batches",
        JobPublisher(pubsub_v1.PublisherClient(), Topics(emulators.project, HOSTILE_TOPIC), 30),
        timeout_s=30,
        result_ttl_s=3600,
        chunk_items=lambda _task: 256,
    )

    def read() -> StoredBatch:
        ref = client.collection("batches").document(batch_id)
        shards = [s.to_dict() or {} for s in ref.collection(COUNTERS).stream()]
        snapshot = ref.get()
        return StoredBatch(batch_id, snapshot.to_dict() or {}, shards, snapshot.update_time)

    first, second = read(), read()
    caplog.set_level(logging.INFO, logger="ingress.batches.chunkcancel")
    store.request_cancel(first)

    def swept() -> bool:
        return any(r.getMessage() == "batch cancel swept" for r in caplog.records)

    wait_for(swept, 60, "the first cancel's sweep ended")
    answered = store.request_cancel(second)

    assert answered.doc["cancel_requested"] is True
    started = [r for r in caplog.records if r.getMessage() == "batch cancel sweep started"]
    assert len(started) == 1, started


def test_webhook_url_in_a_header_or_the_query_but_not_two_different(
    hostile_ingress: Service,
) -> None:
    """The header keeps a receiver's URL (and any token in it) out of request logs."""
    url = hostile_ingress.url
    headers = {**HEADERS, "Content-Type": "application/x-ndjson", "Webhook-URL": "https://a.test/"}
    response = requests.post(
        f"{url}/v1/batches",
        params={"task": "embed", "webhook": "https://b.test/"},
        data=b'{"texts": ["x"]}\n',
        headers=headers,
        timeout=TIMEOUT,
    )
    assert response.status_code == 400 and "Webhook-URL" in response.json()["detail"]
    # A header alone is checked like the query form (this ingress allows no private receivers
    # and tenant-a has no signing secret): refused with a 422 that names the header.
    response = requests.post(
        f"{url}/v1/batches",
        params={"task": "embed"},
        data=b'{"texts": ["x"]}\n',
        headers={**headers, "Webhook-URL": "http://127.0.0.1:9/hook"},
        timeout=TIMEOUT,
    )
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["loc"] == ["header", "Webhook-URL"]
