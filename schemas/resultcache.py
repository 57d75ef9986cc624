"""The result cache: a tenant's identical input to a deterministic task, on the same model
version, is answered from an earlier result instead of a model call (docs/scheduling.md).

One entry per (tenant, task, canonical stored input), in ``CACHE_COLLECTION``, its document id a
SHA-256 of the three (``cache_key``): the tenant is in the key, so one tenant's submission can
never find, or time, another's entry. An entry holds the stored result and the *identity* of the
model that produced it (``served_identity``); a lookup is a hit only when that identity is the one
that would serve the request now (``wanted_identity``):

- ``embed``, ``similar``, ``entities``: the model baked into the worker image (``TaskSpec.model``);
  an image with another model has another identity, so its results are never mixed with these.
- ``predict`` with a ``version``: ``<model>@<version>`` (the version is part of the input too).
- ``predict`` without one: ``<model>@<latest>``, where *latest* is the highest version the
  workers have reported for that model in ``MODEL_VERSIONS_COLLECTION`` (they write it with each
  ``predict`` result, from their own listing of ``MODEL_REPOSITORY``): the version an unversioned
  job would be served now. A new version, once a worker has listed it, changes the identity, and
  the old entry is a miss (then overwritten by the new version's result).
- ``forecast``: never cached (Prophet samples its uncertainty interval).

The worker writes the entry in the same commit as the job's ``succeeded`` state, under the key the
ingress computed at submit (the job document's ``cache_key``), so the worker never hashes inputs.
Entries carry ``expire_at`` (``RESULT_TTL`` after they were written, Firestore's TTL policy), and
a lookup also refuses an expired entry the TTL sweep has not yet deleted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from schemas.tasks import get_task

CACHE_COLLECTION = "result_cache"
"""Where entries live (document id: ``cache_key``)."""
MODEL_VERSIONS_COLLECTION = "model_versions"
"""``predict``'s served versions as the workers last listed them: ``{name: {"latest": int}}``."""
PER_VERSION = "@version"
"""``TaskSpec.model`` of a task whose identity is the model version a request names
(``predict``)."""
_KEY_VERSION = 1
"""Part of every key: bumping it retires every entry (a change of the stored result's form)."""


def cacheable(task: str) -> bool:
    """Whether ``task`` is deterministic enough to answer from the cache."""
    return get_task(task).model is not None


def cache_key(tenant: str, task: str, stored_input: Mapping[str, Any]) -> str:
    """The entry's document id. ``stored_input`` is the validated input in its stored form
    (defaults filled in), serialised canonically: keys sorted, no whitespace."""
    canonical = json.dumps(
        [_KEY_VERSION, tenant, task, stored_input],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def versions_document(stored_input: Mapping[str, Any], task: str) -> str | None:
    """The ``MODEL_VERSIONS_COLLECTION`` document a lookup must read to know its identity: an
    unversioned ``predict``'s model name; None when the request alone says it."""
    if get_task(task).model == PER_VERSION and stored_input.get("version") is None:
        return str(stored_input["model"])
    return None


def wanted_identity(
    task: str, stored_input: Mapping[str, Any], versions: Mapping[str, Any] | None = None
) -> str | None:
    """The identity of the model that would serve this input now; None when unknown (no worker
    has reported an unversioned ``predict``'s model yet: then nothing is a hit)."""
    model = get_task(task).model
    if model != PER_VERSION:
        return model
    version = stored_input.get("version")
    if version is None:
        version = (versions or {}).get("latest")
    return None if version is None else f"{stored_input['model']}@{version}"


def served_identity(task: str, stored_result: Mapping[str, Any]) -> str | None:
    """The identity of the model that produced ``stored_result``."""
    model = get_task(task).model
    if model != PER_VERSION:
        return model
    return f"{stored_result['model']}@{stored_result['version']}"


def entry_document(
    *,
    tenant: str,
    task: str,
    identity: str,
    result: Mapping[str, Any],
    now: datetime,
    result_ttl_s: float,
) -> dict[str, Any]:
    """What the worker writes at ``cache_key`` with a succeeded job."""
    return {
        "tenant": tenant,
        "task": task,
        "model": identity,
        "result": dict(result),
        "written_at": now,
        "expire_at": now + timedelta(seconds=result_ttl_s),
    }


def hit(entry: Mapping[str, Any] | None, tenant: str, identity: str | None, now: datetime) -> bool:
    """Whether ``entry`` answers a request of ``tenant`` served by ``identity`` at ``now``. The
    tenant is checked again although it is in the key: a hash collision must not cross tenants."""
    return (
        entry is not None
        and identity is not None
        and entry.get("tenant") == tenant
        and entry.get("model") == identity
        and entry.get("result") is not None
        and (expire_at := entry.get("expire_at")) is not None
        and expire_at > now
    )
