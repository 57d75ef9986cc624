"""Webhooks: the URL policy (the SSRF guard), the signing secrets, the event and its ledger.

A job or a batch submitted with ``webhook`` gets one POST when it reaches a terminal state, signed
per the Standard Webhooks specification and sent by ``python -m webhooks`` (``webhooks/``;
``docs/webhooks.md``). The ingress and the sender share this module.

**The guard runs twice.** At submit, the ingress checks the URL's form, its scheme and a literal
address (no DNS lookup on the request path). At every delivery, the sender resolves the host,
refuses it unless *every* address it resolves to is public, and connects to the address it checked
(the TLS name stays the host's), so a DNS answer that changes between the check and the connect
(rebinding) cannot point the POST inward. Redirects are never followed. ``WEBHOOK_ALLOW_PRIVATE=1``
(development and tests) also allows ``http`` and private and loopback addresses; the unspecified
address (``0.0.0.0``, which Linux connects to loopback) and multicast are refused always.

**The delivery ledger** is one document per webhook (``webhook_deliveries/job-ID`` or
``batch-ID``): the URL, the message id every attempt of this event carries (``webhook-id``, so a
receiver can drop duplicates), the state, the next attempt's time and every attempt's outcome.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import socket
from collections.abc import Callable, Iterable
from datetime import datetime
from enum import StrEnum
from typing import Any
from urllib.parse import SplitResult, urlsplit

from pydantic import BaseModel

WEBHOOK_DELIVERIES_COLLECTION = "webhook_deliveries"
"""The ledger's collection (``WEBHOOK_DELIVERIES_COLLECTION``)."""
MAX_URL_CHARS = 2048
"""Longest ``webhook`` URL, characters."""
DEFAULT_BACKOFF_S = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
"""``WEBHOOK_BACKOFF_S``: seconds before each retry after a failed attempt (the Standard Webhooks
schedule: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h); one attempt plus these, about 27 hours."""
SECRET_PREFIX = "whsec_"  # noqa: S105 (the format's prefix, not a secret)
SECRET_BYTES = (24, 64)
"""A signing secret's size after base64 decoding, bytes (the specification's bounds)."""
_BLOCKED_SUFFIXES = (".localhost", ".internal")
_BLOCKED_NAMES = ("localhost", "metadata", "metadata.google.internal")
"""Names that are never public: loopback, and the cloud metadata server's (169.254.169.254)."""

_EMBEDDING_V6 = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "::/96",  # IPv4-compatible (deprecated): ::7f00:1 is 127.0.0.1
        "::ffff:0:0:0/96",  # IPv4-translated
        "64:ff9b::/96",  # NAT64: 64:ff9b::a9fe:a9fe reaches 169.254.169.254 through a gateway
        "64:ff9b:1::/48",  # local-use NAT64
        "2002::/16",  # 6to4: 2002:7f00:1:: wraps 127.0.0.1
        "2001::/32",  # Teredo
        "fec0::/10",  # site-local (deprecated)
    )
)
"""IPv6 ranges that wrap an IPv4 address or are private by another name. Refused whole (not
unwrapped): which of them ``is_global`` accepts changed between Python 3.11 patch releases."""

Resolver = Callable[..., list[tuple[Any, ...]]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Refused(ValueError):
    """The webhook URL may not be called; the message says why (shown to the client)."""


class DeliveryState(StrEnum):
    WAITING = "waiting"
    """The resource has not ended yet (or its end has not been picked up)."""
    PENDING = "pending"
    """An attempt is due at ``next_attempt_at``."""
    DELIVERING = "delivering"
    """A sender holds it and is sending now."""
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    """Every attempt failed, or the URL was refused; ``POST`` to the ledger sends it again."""


def checked_url(value: str | None) -> str | None:
    """``webhook``'s form (pydantic's ``AfterValidator``); the policy is ``url_refusal``'s."""
    if value is None:
        return None
    if len(value) > MAX_URL_CHARS:
        raise ValueError(f"a webhook URL is at most {MAX_URL_CHARS} characters")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise ValueError("a webhook URL has no spaces or control characters")
    parts = _split(value)
    if parts.scheme not in ("https", "http"):
        raise ValueError("a webhook URL is https://host/path")
    if not parts.hostname:
        raise ValueError("a webhook URL names a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("a webhook URL carries no credentials; its requests are signed")
    if parts.fragment:
        raise ValueError("a webhook URL has no #fragment")
    return value


def _split(value: str) -> SplitResult:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  (raises on a port out of range or not a number)
    except ValueError as exc:
        raise ValueError(f"not a URL: {exc}") from None
    return parts


def url_refusal(url: str, allow_private: bool) -> str | None:
    """Why ``url`` may not be a webhook under this policy, or None. No DNS lookup: a name is
    checked when it is called (``resolve_checked``)."""
    parts = _split(url)
    if parts.scheme != "https" and not allow_private:
        return "only https webhook URLs are accepted"
    host = (parts.hostname or "").rstrip(".").lower()
    address = _literal_address(host)
    if address is not None:
        if not address_allowed(address, allow_private):
            return f"{address} is not a public address"
        return None
    if not allow_private and (host in _BLOCKED_NAMES or host.endswith(_BLOCKED_SUFFIXES)):
        return f"{host} is not a public host"
    return None


def _literal_address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def address_allowed(address: IPAddress, allow_private: bool) -> bool:
    """Whether a connection to ``address`` is allowed: public (``is_global``) unless private ones
    are allowed; never the unspecified address or multicast."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1
    if address.is_unspecified or address.is_multicast:
        return False
    if allow_private:
        return True
    if isinstance(address, ipaddress.IPv6Address) and any(address in n for n in _EMBEDDING_V6):
        return False
    return address.is_global


def resolve_checked(
    host: str, port: int, allow_private: bool, resolve: Resolver = socket.getaddrinfo
) -> list[str]:
    """The addresses ``host`` resolves to, once every one of them is allowed; ``Refused`` if any
    is not (a name with one private answer among public ones is refused whole) or none exist."""
    literal = _literal_address(host)
    if literal is not None:
        if not address_allowed(literal, allow_private):
            raise Refused(f"{literal} is not a public address")
        return [str(literal)]
    try:
        answers = resolve(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise Refused(f"{host} does not resolve: {exc}") from None
    addresses: list[str] = []
    for *_, sockaddr in answers:
        text = str(sockaddr[0]).split("%", 1)[0]  # an IPv6 scope id is not part of the address
        address = ipaddress.ip_address(text)
        if not address_allowed(address, allow_private):
            raise Refused(f"{host} resolves to {address}, not a public address")
        if text not in addresses:
            addresses.append(text)
    if not addresses:
        raise Refused(f"{host} does not resolve")
    return addresses


class SigningSecrets:
    """Each tenant's Standard Webhooks signing secret (``whsec_`` + base64 of 24-64 bytes).

    From ``WEBHOOK_SECRETS`` (``tenant:whsec_...`` pairs, comma-separated; development) and
    ``WEBHOOK_SECRETS_FILE`` (one pair a line; production, mounted from Secret Manager). A tenant
    with no secret cannot submit a webhook: an unsigned POST could not be told from a forgery."""

    def __init__(self, secrets: dict[str, str]):
        self._secrets = dict(secrets)

    @classmethod
    def from_sources(cls, pairs: str, file_lines: Iterable[str] = ()) -> SigningSecrets:
        found: dict[str, str] = {}
        entries = [("WEBHOOK_SECRETS", i + 1, p) for i, p in enumerate(pairs.split(","))]
        entries += [("WEBHOOK_SECRETS_FILE", i + 1, line) for i, line in enumerate(file_lines)]
        for source, number, entry in entries:
            entry = entry.strip()
            if not entry or entry.startswith("#"):
                continue
            tenant, sep, secret = entry.partition(":")
            if not sep or not tenant or not _valid_secret(secret):
                raise ValueError(
                    f"{source} entry {number} is not tenant:{SECRET_PREFIX}<base64 of "
                    f"{SECRET_BYTES[0]}-{SECRET_BYTES[1]} bytes>"
                )
            found[tenant] = secret
        return cls(found)

    @classmethod
    def from_files(cls, pairs: str, path: str | None) -> SigningSecrets:
        if not path:
            return cls.from_sources(pairs)
        with open(path, encoding="utf-8") as lines:
            return cls.from_sources(pairs, lines.read().splitlines())

    def for_tenant(self, tenant: str) -> str | None:
        return self._secrets.get(tenant)

    def tenants(self) -> tuple[str, ...]:
        """The tenants that have a secret, sorted (the sender asks about each one's due webhooks
        in turn)."""
        return tuple(sorted(self._secrets))

    def __contains__(self, tenant: object) -> bool:
        return tenant in self._secrets


def _valid_secret(secret: str) -> bool:
    if not secret.startswith(SECRET_PREFIX):
        return False
    body = secret[len(SECRET_PREFIX) :]
    try:
        # Padding is optional, as the standardwebhooks package reads it.
        raw = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        return False
    return SECRET_BYTES[0] <= len(raw) <= SECRET_BYTES[1]


def parse_backoff(text: str | None) -> tuple[float, ...]:
    """``WEBHOOK_BACKOFF_S``: comma-separated seconds; empty means no retry."""
    if text is None:
        return DEFAULT_BACKOFF_S
    values = tuple(float(part) for part in text.split(",") if part.strip())
    if any(v < 0 for v in values):
        raise ValueError("WEBHOOK_BACKOFF_S values are seconds ≥ 0")
    return values


def delivery_key(kind: str, resource_id: str) -> str:
    """The ledger document's id: ``job-ID`` or ``batch-ID``."""
    return f"{kind}-{resource_id}"


def message_id(kind: str, resource_id: str, sequence: int = 1) -> str:
    """``webhook-id``: one per event, the same on every attempt and redelivery of it. A job ends
    once; a batch that is retried ends again, and its ``sequence``-th end is a new event."""
    suffix = f"_{sequence}" if sequence > 1 else ""
    return f"msg_{kind}_{resource_id}{suffix}"


def event_type(kind: str, status: str) -> str:
    """``job.succeeded``, ``batch.failed``, ..."""
    return f"{kind}.{status}"


class DeliveryAttempt(BaseModel):
    """One POST: when, what came back (``status_code``) or why none did (``error``)."""

    attempt: int
    at: datetime
    webhook_id: str | None = None
    """The event this attempt sent (a retried batch's later ends are new events)."""
    status_code: int | None = None
    latency_ms: float | None = None
    error: str | None = None


class WebhookDeliveries(BaseModel):
    """``GET /v1/jobs/ID/webhook-deliveries`` (and a batch's): the webhook's ledger."""

    url: str
    webhook_id: str
    event: str | None = None
    state: DeliveryState
    next_attempt_at: datetime | None = None
    attempts: list[DeliveryAttempt]

    @classmethod
    def from_document(
        cls, kind: str, resource_id: str, url: str, doc: dict[str, Any] | None
    ) -> WebhookDeliveries:
        """The ledger from its document; ``waiting`` (no attempts) when there is none yet."""
        doc = doc or {}
        state = DeliveryState(doc.get("state") or DeliveryState.WAITING)
        return cls(
            url=doc.get("url") or url,
            webhook_id=message_id(kind, resource_id, int(doc.get("sequence") or 1)),
            event=doc.get("event"),
            state=state,
            next_attempt_at=doc.get("next_at") if state is DeliveryState.PENDING else None,
            attempts=[DeliveryAttempt(**a) for a in doc.get("attempts") or []],
        )

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)
