"""One webhook attempt: sign the body, check where it would go, POST it there, say what came back.

The connection goes to an address ``schemas.webhooks.resolve_checked`` allowed, never to what a
second DNS lookup might answer: the URL's host is swapped for the checked address, the ``Host``
header and the TLS name (SNI, and the certificate check) stay the original host's. Redirects are
not followed (a 3xx is a failed attempt), no proxy from the environment is used, and the response
body is never read: only its status matters, and a receiver could send gigabytes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

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
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    return httpx.Request(
        "POST",
        target.copy_with(host=address),
        headers={**headers, "host": host_header},
        content=body,
        extensions=extensions,
    )


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
    """POST ``body`` to ``url`` once. The URL (again: the policy may be stricter here than where
    it was accepted) and every address its host resolves to are checked before any connection
    is opened."""
    reason = url_refusal(url, allow_private)
    if reason is not None:
        return Outcome(error=f"refused: {reason}", final=True)
    target = httpx.URL(url)
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        if resolve is None:
            addresses = resolve_checked(target.host, port, allow_private)
        else:
            addresses = resolve_checked(target.host, port, allow_private, resolve)
    except Refused as exc:
        return Outcome(error=f"refused: {exc}", final=True)
    request = pinned_request(url, addresses[0], headers, body)
    started = clock()
    try:
        with httpx.Client(
            transport=transport, timeout=timeout_s, follow_redirects=False, trust_env=False
        ) as client:
            response = client.send(request, stream=True)
            response.close()
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return Outcome(latency_ms=_ms(clock() - started), error=error[:ERROR_CHARS])
    return Outcome(status_code=response.status_code, latency_ms=_ms(clock() - started))


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)
