"""One webhook attempt: sign the body, check where it would go, POST it there, say what came back.

An attempt has one deadline (``WEBHOOK_TIMEOUT_S``) for all of it, lookup included. The
connection goes to an address ``schemas.webhooks.resolve_checked`` allowed, never to what a
second DNS lookup might answer: the URL's host is swapped for the checked address, the ``Host``
header and the TLS name (SNI, and the certificate check) stay the original host's. Redirects are
not followed (a 3xx is a failed attempt), no proxy from the environment is used, and the response
body is never read: only its status matters, and a receiver could send gigabytes.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpcore
import httpx
from standardwebhooks.webhooks import Webhook

from schemas.webhooks import Refused, Resolver, resolve_checked, url_refusal

USER_AGENT = "omni-webhooks/1"
ERROR_CHARS = 300
"""Longest error text kept in the ledger, characters."""


@dataclass(frozen=True)
class Outcome:
    """What one attempt got: a status code, or an error; ``final`` when retrying cannot help
    (the address is refused, or nothing can sign it)."""

    status_code: int | None = None
    latency_ms: float | None = None
    error: str | None = None
    final: bool = False

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def signed_headers(secret: str, message_id: str, body: str, now: datetime) -> dict[str, str]:
    """The Standard Webhooks headers for ``body``, signed with ``secret`` at ``now``."""
    signature = Webhook(secret).sign(message_id, now, body)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


def pinned_request(url: str, address: str, headers: dict[str, str], body: bytes) -> httpx.Request:
    """The POST to ``url`` sent to ``address``: Host and the TLS name stay the URL's host."""
    target = httpx.URL(url)
    host_header = target.netloc.decode("ascii")
    sni = target.raw_host.decode("ascii")
    extensions = {"sni_hostname": sni} if target.scheme == "https" else {}
    return httpx.Request(
        "POST",
        target.copy_with(host=address),
        headers={**headers, "host": host_header},
        content=body,
        extensions=extensions,
    )


class _Watchdog:
    """Ends an attempt at its deadline, whatever the receiver does.

    httpx's timeouts bound each connect, write and read, not the attempt: a receiver that sends
    its status line a byte every few seconds would hold it for ever (and a sender's slot, and
    past the claim's lease another sender would send the same event again). The watchdog's
    network backend records the attempt's socket; at the deadline it shuts the socket down, so
    the blocked read returns at once."""

    def __init__(self) -> None:
        # Guards ``_sock`` and ``_done``: the attempt's thread sets them, the timer reads them.
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._done = False
        self.fired = False

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock

    def done(self) -> None:
        with self._lock:
            self._done = True

    def fire(self) -> None:
        with self._lock:
            if self._done or self._sock is None:
                return
            self.fired = True
            with contextlib.suppress(OSError):  # already closed: nothing to end
                self._sock.shutdown(socket.SHUT_RDWR)


class _WatchedBackend(httpcore.SyncBackend):
    def __init__(self, watchdog: _Watchdog):
        self._watchdog = watchdog

    def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        stream = super().connect_tcp(*args, **kwargs)
        self._watchdog.watch(stream.get_extra_info("socket"))
        return _WatchedStream(stream, self._watchdog)


class _WatchedStream(httpcore.NetworkStream):
    """The connection's stream; TLS replaces the socket object, so the watchdog follows it."""

    def __init__(self, stream: httpcore.NetworkStream, watchdog: _Watchdog):
        self._stream = stream
        self._watchdog = watchdog

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, timeout)

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        stream = self._stream.start_tls(*args, **kwargs)
        self._watchdog.watch(stream.get_extra_info("socket"))
        return _WatchedStream(stream, self._watchdog)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


def _watched_transport(watchdog: _Watchdog) -> httpx.HTTPTransport:
    transport = httpx.HTTPTransport(trust_env=False, retries=0)
    # httpx (pinned: 0.28.1) takes no network backend, so its pool is replaced by one that has
    # the watchdog's; tests/integration/test_webhooks.py shows a trickling receiver is cut off.
    transport._pool = httpcore.ConnectionPool(
        ssl_context=httpx.create_ssl_context(),
        max_connections=1,
        max_keepalive_connections=0,
        retries=0,
        network_backend=_WatchedBackend(watchdog),
    )
    return transport


def attempt(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    allow_private: bool,
    timeout_s: float,
    resolve: Resolver | None = None,
    transport: httpx.BaseTransport | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Outcome:
    """POST ``body`` to ``url`` once, within ``timeout_s`` in all (the lookup, the connect, the
    request and the response's status line). The URL (again: the policy may be stricter here
    than where it was accepted) and every address its host resolves to are checked before any
    connection is opened."""
    started = clock()
    reason = url_refusal(url, allow_private)
    if reason is not None:
        return Outcome(error=f"refused: {reason}", final=True)
    target = httpx.URL(url)
    # The ASCII (IDNA 2008) form httpx puts in the Host header is the one looked up and the one
    # TLS checks: the Unicode form would be encoded again by the resolver (IDNA 2003) and could
    # name another domain (``faß.de`` is not ``fass.de``).
    host = target.raw_host.decode("ascii")
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        addresses = _resolve(host, port, allow_private, resolve, timeout_s)
    except Refused as exc:
        return Outcome(error=f"refused: {exc}", final=True)
    except TimeoutError:
        return Outcome(error=f"looking up {host} took over {timeout_s:g} s")
    request = pinned_request(url, addresses[0], headers, body)
    watchdog = _Watchdog()
    remaining = max(timeout_s - (clock() - started), 0.001)
    timer = threading.Timer(remaining, watchdog.fire)
    timer.daemon = True
    try:
        with httpx.Client(
            transport=transport or _watched_transport(watchdog),
            timeout=timeout_s,
            follow_redirects=False,
            trust_env=False,
        ) as client:
            timer.start()
            try:
                response = client.send(request, stream=True)
            finally:
                watchdog.done()
            response.close()
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if watchdog.fired:
            error = f"no answer within {timeout_s:g} s"
        return Outcome(latency_ms=_ms(clock() - started), error=error[:ERROR_CHARS])
    finally:
        timer.cancel()
    return Outcome(status_code=response.status_code, latency_ms=_ms(clock() - started))


_LOOKUPS = ThreadPoolExecutor(4, thread_name_prefix="webhook-dns")
"""getaddrinfo has no timeout of its own: lookups run here, and an attempt waits for one only
until its deadline (a stuck lookup ends when the system resolver gives up)."""


def _resolve(
    host: str, port: int, allow_private: bool, resolve: Resolver | None, timeout_s: float
) -> list[str]:
    if resolve is not None:
        return resolve_checked(host, port, allow_private, resolve)
    future = _LOOKUPS.submit(resolve_checked, host, port, allow_private)
    try:
        return future.result(timeout=timeout_s)
    except FutureTimeout:
        raise TimeoutError(host) from None


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)
