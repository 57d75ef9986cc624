"""ingress/auth.py: key parsing, digests, constant-time lookup; no key in any error."""

from __future__ import annotations

import hashlib

import pytest

from common.settings import ConfigError
from ingress.auth import KeyRing, presented_key


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def test_api_keys_pairs_map_keys_to_tenants() -> None:
    ring = KeyRing.from_sources("acme:k-1, globex:k-2:with-colon")
    assert ring.tenant_for("k-1") == "acme"
    assert ring.tenant_for("k-2:with-colon") == "globex"
    assert ring.tenant_for("k-3") is None
    assert ring.tenant_for("") is None and ring.tenant_for(None) is None


def test_only_digests_are_kept() -> None:
    ring = KeyRing.from_sources("acme:plain-secret")
    assert b"plain-secret" not in repr(ring).encode()
    assert ring.entries[0][1] == hashlib.sha256(b"plain-secret").digest()


def test_keys_file_holds_sha256_lines_with_comments() -> None:
    lines = ["# production keys", "", f"acme:{sha('prod-key')}", f"globex:{sha('other').upper()}"]
    ring = KeyRing.from_sources("", lines)
    assert ring.tenant_for("prod-key") == "acme"
    assert ring.tenant_for("other") == "globex"
    assert ring.tenant_for(sha("prod-key")) is None  # the digest itself is not a key


def test_keys_from_both_sources_combine(tmp_path: pytest.TempPathFactory) -> None:
    path = tmp_path / "keys"  # type: ignore[operator]
    path.write_text(f"acme:{sha('file-key')}\n")
    ring = KeyRing.from_files("dev:dev-key", str(path))
    assert ring.tenant_for("file-key") == "acme" and ring.tenant_for("dev-key") == "dev"


@pytest.mark.parametrize("api_keys", ["no-colon-secret", "acme:", ":secret-only", "bad tenant:x"])
def test_malformed_pairs_are_refused_without_echoing_the_key(api_keys: str) -> None:
    with pytest.raises(ConfigError) as info:
        KeyRing.from_sources(api_keys)
    assert "secret" not in str(info.value)


@pytest.mark.parametrize("line", ["acme:not-hex", "acme:" + "a" * 63, "acme" + "a" * 64])
def test_malformed_file_lines_are_refused_by_number(line: str) -> None:
    with pytest.raises(ConfigError, match="line 1"):
        KeyRing.from_sources("", [line])


def test_no_keys_at_all_is_a_config_error(tmp_path: pytest.TempPathFactory) -> None:
    with pytest.raises(ConfigError):
        KeyRing.from_sources("", ["# nothing"])
    with pytest.raises(ConfigError, match="cannot read"):
        KeyRing.from_files("", "/nonexistent/keys")


def test_a_key_shared_by_two_entries_belongs_to_the_first() -> None:
    assert KeyRing.from_sources("first:same,second:same").tenant_for("same") == "first"


@pytest.mark.parametrize(
    ("headers", "key"),
    [
        ({"X-API-Key": "k"}, "k"),
        ({"Authorization": "Bearer k"}, "k"),
        ({"Authorization": "bearer  k "}, "k"),
        ({"Authorization": "Basic k"}, None),
        ({"Authorization": "Bearer "}, None),
        ({}, None),
        ({"X-API-Key": "a", "Authorization": "Bearer b"}, "a"),
    ],
)
def test_presented_key_reads_either_header(headers: dict[str, str], key: str | None) -> None:
    assert presented_key(headers) == key
