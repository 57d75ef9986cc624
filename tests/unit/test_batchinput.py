"""ingress/batches/input.py's line reader: lines across read boundaries, an over-long line cut as it
arrives instead of held (and copied) whole, and the pace a body must keep (``UploadPace``)."""

from __future__ import annotations

import hashlib
import io
import threading
import time

import pytest
from werkzeug.exceptions import ClientDisconnected

from ingress.batches import input as batchinput
from ingress.errors import PayloadTooLarge, RequestTimeout
from ingress.limits.uploads import UploadPace


class _Request:
    def __init__(self, body: bytes):
        self.stream = io.BytesIO(body)


def lines(body: bytes, limit: int = 1000, max_line: int = 5) -> list[bytes]:
    pace = UploadPace({}, min_bytes_per_s=1, grace_s=10)
    return list(batchinput._body_lines(_Request(body), limit, hashlib.sha256(), max_line, pace))


def test_lines_are_assembled_across_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batchinput, "READ_BYTES", 3)
    assert lines(b"a\nbbbb\n\nccc") == [b"a", b"bbbb", b"", b"ccc"]
    assert lines(b"\n\n") == [b"", b""]


def test_a_line_past_the_limit_is_cut_to_one_byte_over_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batchinput, "READ_BYTES", 4)
    assert lines(b"abcdefghijklmnopqrstuvwxyz\nxy\n") == [b"abcdef", b"xy"]
    assert lines(b"x" * 500) == [b"xxxxxx"]


def test_a_body_past_the_limit_is_refused_as_it_arrives() -> None:
    with pytest.raises(PayloadTooLarge):
        lines(b"x\n" * 600, limit=1000)


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _SlowStream:
    """Each read takes ``wait_s`` of the clock's time and returns ``size`` bytes, then EOF."""

    def __init__(self, clock: _Clock, wait_s: float, reads: int) -> None:
        self.clock, self.wait_s, self.reads = clock, wait_s, reads

    def read(self, size: int) -> bytes:
        if not self.reads:
            return b""
        self.reads -= 1
        self.clock.now += self.wait_s
        return b"x" * size


def test_a_body_at_the_minimum_pace_is_read_whole() -> None:
    clock = _Clock()
    pace = UploadPace({}, min_bytes_per_s=1000, grace_s=5, clock=clock)
    stream = _SlowStream(clock, wait_s=1.0, reads=100)  # 1,000 bytes a second, for 100 s
    assert sum(len(pace.read(stream, 1000)) for _ in range(101)) == 100_000


def test_a_body_slower_than_the_minimum_pace_is_refused_once_past_the_grace() -> None:
    clock = _Clock()
    pace = UploadPace({}, min_bytes_per_s=1000, grace_s=5, clock=clock)
    stream = _SlowStream(clock, wait_s=1.0, reads=100)  # 500 bytes a second
    got = 0
    with pytest.raises(RequestTimeout, match="minimum pace of 1000 bytes/s after 5 s"):
        while True:
            got += len(pace.read(stream, 500))
    # Refused on the 11th read: 11 s waited for 5,500 bytes, past 5 s + 5,500 / 1,000 = 10.5 s.
    assert got == 5000


def test_time_the_ingress_spends_between_reads_is_not_the_client_s() -> None:
    clock = _Clock()
    pace = UploadPace({}, min_bytes_per_s=1000, grace_s=5, clock=clock)
    stream = _SlowStream(clock, wait_s=0.001, reads=10)
    for _ in range(10):
        pace.read(stream, 1000)
        clock.now += 60  # the chunk writers waited for Firestore
    assert pace.read(stream, 1000) == b""


class _Socket:
    """gunicorn's socket: ``shutdown`` ends the read blocked on it, as an early EOF does."""

    def __init__(self) -> None:
        self.shut = threading.Event()

    def shutdown(self, how: int) -> None:
        self.shut.set()


class _Blocked:
    """A read that gets nothing until the socket is shut, then ends as werkzeug ends it."""

    def __init__(self, sock: _Socket) -> None:
        self.sock = sock

    def read(self, size: int) -> bytes:
        assert self.sock.shut.wait(5), "the read was never cut"
        raise ClientDisconnected()


class _Body:
    failed = False


def test_a_read_that_gets_nothing_is_cut_when_its_budget_runs_out() -> None:
    sock, body = _Socket(), _Body()
    environ = {"gunicorn.socket": sock, "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.input": body}
    pace = UploadPace(environ, min_bytes_per_s=1000, grace_s=0.05)
    with pytest.raises(RequestTimeout, match="0 bytes so far"):
        pace.read(_Blocked(sock), 10)
    assert body.failed  # gunicorn closes the connection instead of reading on from mid-body


def test_a_read_that_returned_is_never_cut_afterwards() -> None:
    sock = _Socket()
    environ = {"gunicorn.socket": sock, "SERVER_PROTOCOL": "HTTP/1.1"}
    pace = UploadPace(environ, min_bytes_per_s=1000, grace_s=0.05)
    assert pace.read(_SlowStream(_Clock(), wait_s=0.0, reads=1), 10) == b"x" * 10
    pace._shut(sock)  # a timer that fired as the read returned
    assert not sock.shut.is_set()


def test_a_client_that_goes_away_is_not_a_timeout() -> None:
    class Gone:
        def read(self, size: int) -> bytes:
            raise ClientDisconnected()

    environ = {"gunicorn.socket": _Socket(), "SERVER_PROTOCOL": "HTTP/1.1"}
    with pytest.raises(ClientDisconnected):
        UploadPace(environ, min_bytes_per_s=1000, grace_s=5).read(Gone(), 10)


def test_an_http2_socket_is_never_shut() -> None:
    sock = _Socket()
    environ = {"gunicorn.socket": sock, "SERVER_PROTOCOL": "HTTP/2"}
    pace = UploadPace(environ, min_bytes_per_s=1000, grace_s=0.01)
    stream = _SlowStream(_Clock(), wait_s=0.0, reads=1)
    time.sleep(0.05)
    assert pace.read(stream, 10) == b"x" * 10 and not sock.shut.is_set()


def test_one_read_asks_for_at_most_half_of_what_the_pace_brings_in_the_grace() -> None:
    pace = UploadPace({}, min_bytes_per_s=200_000, grace_s=1)
    assert pace.size(1 << 20) == 100_000
    assert UploadPace({}, min_bytes_per_s=1 << 20, grace_s=10).size(1 << 20) == 1 << 20
