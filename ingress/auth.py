"""API keys: who is calling, as a tenant name.

Keys come from ``API_KEYS`` (``tenant:key`` pairs, development) and ``API_KEYS_FILE`` (lines of
``tenant:sha256hex``, production, mounted from Secret Manager). Only SHA-256 digests are kept in
memory; a presented key is hashed and compared with *every* entry in constant time, so neither the
key nor which entry matched leaks through timing. Keys are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from werkzeug.datastructures import Headers

from common.settings import ConfigError

_TENANT = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


@dataclass(frozen=True)
class KeyRing:
    """Tenants and the SHA-256 digests of their keys."""

    entries: tuple[tuple[str, bytes], ...]

    @classmethod
    def from_sources(cls, api_keys: str, file_lines: Iterable[str] = ()) -> KeyRing:
        entries: list[tuple[str, bytes]] = []
        for position, pair in enumerate(p.strip() for p in api_keys.split(",")):
            if not pair:
                continue
            tenant, sep, key = pair.partition(":")
            if not sep or not key or not _TENANT.match(tenant):
                # Name the position, never the text: it holds a key.
                raise ConfigError(f"API_KEYS entry {position + 1} is not tenant:key")
            entries.append((tenant, _digest(key)))
        for number, raw in enumerate(file_lines, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            tenant, sep, hexdigest = line.partition(":")
            if not sep or not _TENANT.match(tenant) or not _SHA256_HEX.match(hexdigest):
                raise ConfigError(f"API_KEYS_FILE line {number} is not tenant:sha256hex")
            entries.append((tenant, bytes.fromhex(hexdigest)))
        if not entries:
            raise ConfigError("no API keys configured")
        return cls(tuple(entries))

    @classmethod
    def from_files(cls, api_keys: str, api_keys_file: str | None) -> KeyRing:
        lines: list[str] = []
        if api_keys_file:
            try:
                with open(api_keys_file, encoding="utf-8") as handle:
                    lines = handle.readlines()
            except OSError as exc:
                raise ConfigError(f"cannot read API_KEYS_FILE: {exc.strerror}") from exc
        return cls.from_sources(api_keys, lines)

    def tenant_for(self, key: str | None) -> str | None:
        """The tenant whose key this is, or None. Takes the same time whichever entry matches."""
        if not key:
            return None
        presented = _digest(key)
        found: str | None = None
        for tenant, digest in self.entries:
            if hmac.compare_digest(presented, digest) and found is None:
                found = tenant
        return found


def presented_key(headers: Mapping[str, str] | Headers) -> str | None:
    """The key a request carries: ``X-API-Key``, else ``Authorization: Bearer``."""
    key = headers.get("X-API-Key")
    if key:
        return key.strip()
    scheme, _, token = (headers.get("Authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None
