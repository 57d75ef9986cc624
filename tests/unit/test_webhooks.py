"""The webhook URL policy, the address guard, signing and one attempt (no network: every
connection here goes to an ``httpx.MockTransport`` or is refused before one is tried)."""

from __future__ import annotations

import base64
import json
import socket
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from common.settings import ConfigError
from schemas.webhooks import (
    DEFAULT_BACKOFF_S,
    DeliveryState,
    Refused,
    SigningSecrets,
    WebhookDeliveries,
    checked_url,
    parse_backoff,
    resolve_checked,
    url_refusal,
)
from webhooks.delivery import Outcome, attempt, pinned_request, signed_headers
from webhooks.fairness import Due, TenantRotation, round_robin
from webhooks.health import outcome_label
from webhooks.outbox import Claimed
from webhooks.sender import Sender
from webhooks.settings import SenderSettings

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


def _answers(*addresses: str) -> Any:
    """A resolver that answers ``addresses`` (getaddrinfo's shape) and records what it was asked."""
    asked: list[str] = []

    def resolve(host: str, port: int, **_: Any) -> list[tuple[Any, ...]]:
        asked.append(host)
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in addresses
        ]

    resolve.asked = asked  # type: ignore[attr-defined]
    return resolve


def _no_connection() -> httpx.MockTransport:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"a connection was attempted to {request.url}")

    return httpx.MockTransport(refuse)


# -- the URL's form and the submit-time policy -------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/h",
        "https:///path",
        "https://user:pw@example.com/h",
        "https://example.com/h#frag",
        "https://example.com:99999/h",
        "https://exa mple.com/h",
        "https://example.com/\x00",
        "https://example.com/" + "a" * 2048,
    ],
)
def test_malformed_webhook_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        checked_url(url)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://example.com/h", "only https"),
        ("https://127.0.0.1/h", "not a public address"),
        ("https://10.1.2.3/h", "not a public address"),
        ("https://192.168.0.1/h", "not a public address"),
        ("https://172.16.5.4/h", "not a public address"),
        ("https://169.254.169.254/computeMetadata/v1/", "not a public address"),
        ("https://100.64.0.1/h", "not a public address"),
        ("https://[::1]/h", "not a public address"),
        ("https://[fd00::1]/h", "not a public address"),
        ("https://[::ffff:10.0.0.1]/h", "not a public address"),
        ("https://[64:ff9b::a9fe:a9fe]/h", "not a public address"),  # NAT64 of the metadata IP
        ("https://[64:ff9b:1::a00:1]/h", "not a public address"),
        ("https://[2002:7f00:1::]/h", "not a public address"),  # 6to4 of 127.0.0.1
        ("https://[2001:0:4136:e378::1]/h", "not a public address"),  # Teredo
        ("https://[::7f00:1]/h", "not a public address"),  # IPv4-compatible 127.0.0.1
        ("https://[::ffff:0:7f00:1]/h", "not a public address"),  # IPv4-translated
        ("https://[fec0::1]/h", "not a public address"),  # site-local
        ("https://0.0.0.0/h", "not a public address"),
        ("https://localhost/h", "not a public host"),
        ("https://api.localhost/h", "not a public host"),
        ("https://metadata.google.internal/h", "not a public host"),
        ("https://metadata/h", "not a public host"),
    ],
)
def test_the_policy_refuses_http_and_private_addresses(url: str, reason: str) -> None:
    refusal = url_refusal(url, allow_private=False)
    assert refusal is not None and reason in refusal


def test_the_policy_accepts_public_https() -> None:
    assert url_refusal("https://hooks.example.com/omni?x=1", allow_private=False) is None
    assert url_refusal("https://8.8.8.8/h", allow_private=False) is None


def test_allow_private_accepts_http_and_loopback_but_never_the_unspecified_address() -> None:
    assert url_refusal("http://127.0.0.1:8080/h", allow_private=True) is None
    assert url_refusal("http://localhost:8080/h", allow_private=True) is None
    assert url_refusal("http://[::1]:8080/h", allow_private=True) is None
    assert url_refusal("http://0.0.0.0:8080/h", allow_private=True) is not None


# -- the delivery-time guard: every resolved address is checked --------------------------------


def test_a_name_resolving_to_a_private_address_is_refused() -> None:
    with pytest.raises(Refused, match="10.0.0.7"):
        resolve_checked("hooks.example.com", 443, False, _answers("10.0.0.7"))


def test_one_private_answer_among_public_ones_refuses_the_name() -> None:
    with pytest.raises(Refused, match="127.0.0.1"):
        resolve_checked("hooks.example.com", 443, False, _answers("93.184.215.14", "127.0.0.1"))


def test_a_decimal_host_is_resolved_and_checked() -> None:
    # "2130706433" is 127.0.0.1 to getaddrinfo; the submit-time check (no lookup) lets it by.
    assert url_refusal("https://2130706433/h", allow_private=False) is None
    with pytest.raises(Refused):
        resolve_checked("2130706433", 443, False)


def test_public_answers_are_returned_in_order_once_each() -> None:
    resolve = _answers("93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c", "93.184.215.14")
    assert resolve_checked("hooks.example.com", 443, False, resolve) == [
        "93.184.215.14",
        "2606:2800:21f:cb07:6820:80da:af6b:8b2c",
    ]


def test_a_refused_address_is_never_connected_to() -> None:
    resolve = _answers("192.168.1.20")
    outcome = attempt(
        "https://hooks.example.com/h",
        b"{}",
        {},
        allow_private=False,
        timeout_s=1,
        resolve=resolve,
        transport=_no_connection(),
    )
    assert outcome.final and outcome.status_code is None
    assert outcome.error is not None and outcome.error.startswith("refused")
    assert resolve.asked == ["hooks.example.com"]


def test_a_literal_private_address_is_refused_without_a_lookup() -> None:
    resolve = _answers("93.184.215.14")
    outcome = attempt(
        "https://10.0.0.1/h",
        b"{}",
        {},
        allow_private=False,
        timeout_s=1,
        resolve=resolve,
        transport=_no_connection(),
    )
    assert outcome.final and resolve.asked == []


# -- the request: pinned to the checked address, signed ----------------------------------------


def test_an_international_name_is_looked_up_and_verified_in_its_ascii_form() -> None:
    """``faß.de`` (IDNA 2008: xn--fa-hia.de) is not ``fass.de`` (what IDNA 2003 would make of
    it): the lookup, the Host header and the TLS name must all be the same domain."""
    resolve = _answers("93.184.215.14")
    seen: list[httpx.Request] = []

    def receive(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    outcome = attempt(
        "https://faß.de/h",
        b"{}",
        {},
        allow_private=False,
        timeout_s=1,
        resolve=resolve,
        transport=httpx.MockTransport(receive),
    )
    assert outcome.delivered and resolve.asked == ["xn--fa-hia.de"]
    (request,) = seen
    assert request.headers["host"] == "xn--fa-hia.de"
    assert request.extensions["sni_hostname"] == "xn--fa-hia.de"


def test_the_request_goes_to_the_checked_address_with_the_hosts_name() -> None:
    request = pinned_request("https://hooks.example.com:8443/a?b=1", "93.184.215.14", {}, b"x")
    assert request.url.host == "93.184.215.14" and request.url.port == 8443
    assert request.url.raw_path == b"/a?b=1"
    assert request.headers["host"] == "hooks.example.com:8443"
    assert request.extensions["sni_hostname"] == "hooks.example.com"
    six = pinned_request("https://hooks.example.com/a", "2606:2800::1", {}, b"x")
    assert six.url.host == "2606:2800::1" and six.headers["host"] == "hooks.example.com"


def test_an_attempt_posts_the_signed_body_and_reports_the_status() -> None:
    seen: list[httpx.Request] = []

    def receive(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    now = datetime.now(UTC)
    body = json.dumps({"type": "job.succeeded", "data": {"id": "x"}})
    outcome = attempt(
        "https://hooks.example.com/h",
        body.encode(),
        signed_headers(SECRET, "msg_job_x", body, now),
        allow_private=False,
        timeout_s=1,
        resolve=_answers("93.184.215.14"),
        transport=httpx.MockTransport(receive),
    )
    assert outcome.delivered and outcome.status_code == 204 and outcome.latency_ms is not None
    (request,) = seen
    assert request.url.host == "93.184.215.14"
    headers = {k: v for k, v in request.headers.items()}
    # The package's own verifier accepts what the sender signed.
    assert Webhook(SECRET).verify(request.content, headers) == json.loads(body)
    assert headers["webhook-id"] == "msg_job_x"
    assert headers["webhook-timestamp"] == str(int(now.timestamp()))


def test_a_signature_does_not_verify_with_another_secret_or_body() -> None:
    now = datetime.now(UTC)
    headers = signed_headers(SECRET, "msg_job_x", '{"a":1}', now)
    other = "whsec_" + base64.b64encode(b"o" * 32).decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify('{"a":1}', headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify('{"a":2}', headers)


@pytest.mark.parametrize("status", [301, 302, 400, 410, 500, 503])
def test_anything_but_2xx_is_a_failed_attempt_and_redirects_are_not_followed(status: int) -> None:
    calls: list[str] = []

    def receive(request: httpx.Request) -> httpx.Response:
        calls.append(str(request.url))
        return httpx.Response(status, headers={"location": "http://127.0.0.1/inside"})

    outcome = attempt(
        "https://hooks.example.com/h",
        b"{}",
        {},
        allow_private=False,
        timeout_s=1,
        resolve=_answers("93.184.215.14"),
        transport=httpx.MockTransport(receive),
    )
    assert not outcome.delivered and not outcome.final and outcome.status_code == status
    assert len(calls) == 1


def test_a_connection_error_is_a_failed_attempt_to_retry() -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    outcome = attempt(
        "https://hooks.example.com/h",
        b"{}",
        {},
        allow_private=False,
        timeout_s=1,
        resolve=_answers("93.184.215.14"),
        transport=httpx.MockTransport(fail),
    )
    assert outcome.status_code is None and not outcome.final
    assert outcome.error is not None and "ConnectError" in outcome.error


# -- secrets, backoff, settings, the ledger's resource ------------------------------------------


def test_signing_secrets_are_per_tenant_and_checked() -> None:
    other = "whsec_" + base64.b64encode(b"o" * 25).decode().rstrip("=")  # unpadded is allowed
    secrets = SigningSecrets.from_sources(f"a:{SECRET}", [f"b:{other}", "# comment", ""])
    assert secrets.for_tenant("a") == SECRET and secrets.for_tenant("b") == other
    assert "c" not in secrets and secrets.for_tenant("c") is None
    for bad in (
        "a:nope",
        f"a{SECRET}",
        "a:whsec_!!!",
        "a:whsec_" + base64.b64encode(b"s").decode(),
    ):
        with pytest.raises(ValueError, match="WEBHOOK_SECRETS entry 1"):
            SigningSecrets.from_sources(bad)


def test_backoff_schedule() -> None:
    assert parse_backoff(None) == DEFAULT_BACKOFF_S
    assert parse_backoff("0.5, 2,10") == (0.5, 2.0, 10.0)
    assert parse_backoff("") == ()
    with pytest.raises(ValueError):
        parse_backoff("1,-2")


def test_sender_settings_never_show_secrets() -> None:
    settings = SenderSettings.from_env({"WEBHOOK_SECRETS": f"a:{SECRET}", "WEBHOOK_POLL_S": "0.2"})
    assert settings.poll_s == 0.2 and SECRET not in repr(settings)
    with pytest.raises(ConfigError):
        SenderSettings.from_env({"WEBHOOK_CONCURRENCY": "0"})


def test_the_ledger_resource() -> None:
    now = datetime.now(UTC)
    waiting = WebhookDeliveries.from_document("job", "j1", "https://h.example/x", None)
    assert waiting.state is DeliveryState.WAITING and waiting.attempts == []
    assert waiting.webhook_id == "msg_job_j1"
    doc = {
        "url": "https://h.example/x",
        "event": "job.failed",
        "state": "pending",
        "next_at": now + timedelta(seconds=5),
        "attempts": [{"attempt": 1, "at": now, "status_code": 500, "latency_ms": 3.5}],
    }
    ledger = WebhookDeliveries.from_document("job", "j1", "https://h.example/x", doc).to_json_dict()
    assert ledger["state"] == "pending" and ledger["event"] == "job.failed"
    assert ledger["next_attempt_at"] and ledger["attempts"][0]["status_code"] == 500
    assert "error" not in ledger["attempts"][0]


def test_attempt_outcomes_are_labelled_for_metrics() -> None:
    assert outcome_label(204, None, False) == "delivered"
    assert outcome_label(500, None, False) == "rejected"
    assert outcome_label(None, "ConnectTimeout", False) == "error"
    assert outcome_label(None, "refused: 10.0.0.1 is not a public address", True) == "refused"
    assert outcome_label(None, "the job no longer exists", True) == "unsendable"


# -- fairness across tenants: round-robin, the per-tenant cap, the tenants asked one by one ------


def _due(key: str, tenant: str | None, second: int) -> Due:
    return Due(key, tenant, datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=second))


def test_round_robin_takes_one_per_tenant_per_round_oldest_tenant_first() -> None:
    found = [_due(f"slow-{i}", "slow", i) for i in range(100)]
    found += [_due("b-0", "b", 150), _due("b-1", "b", 151), _due("none-0", None, 120)]

    order = round_robin(found, {}, cap=2)

    assert [d.key for d in order] == ["slow-0", "none-0", "b-0", "slow-1", "b-1"]


def test_round_robin_counts_what_each_tenant_has_in_flight() -> None:
    found = [_due(f"slow-{i}", "slow", i) for i in range(10)] + [_due("b-0", "b", 50)]

    assert [d.key for d in round_robin(found, {"slow": 2}, cap=2)] == ["b-0"]
    assert [d.key for d in round_robin(found, {"slow": 1, "b": 2}, cap=2)] == ["slow-0"]
    # A key found twice (the head and a tenant's own query) is a candidate once.
    again = [*found, _due("b-0", "b", 50)]
    assert [d.key for d in round_robin(again, {"slow": 2}, cap=3)] == ["slow-0", "b-0"]


def test_ledgers_without_a_tenant_are_one_group_of_their_own() -> None:
    found = [_due(f"old-{i}", None, i) for i in range(5)] + [_due("a-0", "a", 9)]

    assert [d.key for d in round_robin(found, {None: 1}, cap=2)] == ["old-0", "a-0"]


def test_the_rotation_asks_a_bounded_number_of_tenants_and_goes_round() -> None:
    rotation = TenantRotation(["e", "d", "c", "b", "a"], per_look=2)

    assert rotation.take(skip=()) == ["a", "b"]
    assert rotation.take(skip={"d"}) == ["c", "e"]  # a skipped tenant costs nothing
    assert rotation.take(skip=()) == ["a", "b"]
    assert rotation.take(skip={"a", "b", "c", "d", "e"}) == []
    assert TenantRotation([], per_look=4).take(skip=()) == []


class _Outbox:
    """The sender's view of Firestore, in memory: ``due`` answers the oldest due attempts
    (every tenant's) and ``due_of`` one tenant's, as the real queries do."""

    def __init__(self, found: list[Due]):
        self.due_now = {d.key: d for d in found}
        self.asked: list[str] = []

    def discover(self, now: datetime) -> int:
        return 0

    def due(self, now: datetime, limit: int) -> list[Due]:
        return sorted(self.due_now.values(), key=lambda d: (d.next_at, d.key))[:limit]

    def due_of(self, tenant: str, now: datetime, limit: int) -> list[Due]:
        self.asked.append(tenant)
        return [d for d in self.due(now, len(self.due_now)) if d.tenant == tenant][:limit]

    def claim(self, key: str, now: datetime) -> Claimed | None:
        due = self.due_now.pop(key, None)
        if due is None:
            return None
        doc = {"kind": "job", "resource_id": key, "event": "job.succeeded", "tenant": due.tenant}
        return Claimed(key, {**doc, "url": "https://h.example/x"}, "token")

    def record(self, claimed: Claimed, outcome: Outcome, now: datetime) -> str:
        return "failed"

    def payload(self, claimed: Claimed, now: datetime) -> dict[str, Any]:
        return {"type": "job.succeeded", "data": {"id": claimed.key}}


def test_a_slow_tenants_backlog_leaves_room_for_another_tenant() -> None:
    """The slow tenant's 100 due attempts come first by time, more than the head holds: the
    other tenant's, found by asking for it, is started in the same look, and the slow tenant
    never has more than its cap in flight."""
    backlog = [_due(f"slow-{i:03}", "slow", i) for i in range(100)]
    outbox = _Outbox([*backlog, _due("other-0", "other", 200)])
    release = threading.Event()
    started: list[str] = []

    def send(url: str, body: bytes, headers: dict[str, str], **_: Any) -> Outcome:
        started.append(headers["webhook-id"])
        release.wait(10)
        return Outcome(error="no answer within 1 s")

    settings = SenderSettings(concurrency=4, tenant_in_flight=2)
    signing = SigningSecrets({"slow": SECRET, "other": SECRET})
    sender = Sender(outbox, signing, settings, send=send)  # type: ignore[arg-type]
    try:
        sender.look()
        sender.look()  # nothing more for the slow tenant while two of its attempts are out

        assert set(outbox.asked) == {"other"}  # the head was all the slow tenant's
        assert sorted(started) == ["msg_job_other-0", "msg_job_slow-000", "msg_job_slow-001"]
    finally:
        release.set()
        assert sender.wait_idle(10)
    sender.look()  # its slots free again, the slow tenant goes on with its next two
    assert sender.wait_idle(10)
    assert started[3:] in (
        ["msg_job_slow-002", "msg_job_slow-003"],
        ["msg_job_slow-003", "msg_job_slow-002"],
    )


def test_the_tenant_cap_is_read_once_and_leaves_room_for_others() -> None:
    assert SenderSettings.from_env({}).tenant_in_flight == 2
    settings = SenderSettings.from_env(
        {"WEBHOOK_CONCURRENCY": "8", "WEBHOOK_TENANT_IN_FLIGHT": "3"}
    )
    assert settings.tenant_in_flight == 3
    for bad in ("0", "8", "9"):
        with pytest.raises(ConfigError, match="WEBHOOK_TENANT_IN_FLIGHT"):
            SenderSettings.from_env({"WEBHOOK_CONCURRENCY": "8", "WEBHOOK_TENANT_IN_FLIGHT": bad})
    assert SigningSecrets({"b": SECRET, "a": SECRET}).tenants() == ("a", "b")


def test_a_tenants_due_query_has_its_composite_index() -> None:
    # webhooks/outbox.py due_of: tenant == T and next_at <= now, by next_at.
    indexes = json.loads(
        (Path(__file__).resolve().parents[2] / "firestore.indexes.json").read_text()
    )["indexes"]
    fields = [
        (index["collectionGroup"], [(f["fieldPath"], f["order"]) for f in index["fields"]])
        for index in indexes
    ]
    assert ("webhook_deliveries", [("tenant", "ASCENDING"), ("next_at", "ASCENDING")]) in fields
