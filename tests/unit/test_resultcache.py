"""schemas/resultcache.py: keys per tenant and canonical input, identities per model version,
what counts as a hit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from schemas import resultcache

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def test_a_key_is_per_tenant_task_and_input_whatever_the_key_order() -> None:
    key = resultcache.cache_key("a", "similar", {"query": "q", "documents": ["d"], "top_k": 3})
    same = resultcache.cache_key("a", "similar", {"top_k": 3, "documents": ["d"], "query": "q"})
    assert key == same and len(key) == 64
    assert (
        resultcache.cache_key("b", "similar", {"query": "q", "documents": ["d"], "top_k": 3}) != key
    )
    assert (
        resultcache.cache_key("a", "similar", {"query": "q", "documents": ["d"], "top_k": 4}) != key
    )
    assert resultcache.cache_key("a", "embed", {"texts": ["q"]}) != resultcache.cache_key(
        "a", "entities", {"texts": ["q"]}
    )


def test_only_deterministic_tasks_are_cached() -> None:
    assert {
        t
        for t in ("embed", "similar", "entities", "predict", "forecast")
        if resultcache.cacheable(t)
    } == {
        "embed",
        "similar",
        "entities",
        "predict",
    }


def test_predict_is_keyed_on_the_version_that_would_serve_it() -> None:
    pinned = {"model": "m", "version": 3, "instances_json": "[[1]]"}
    latest = {"model": "m", "instances_json": "[[1]]"}
    assert resultcache.versions_document(pinned, "predict") is None
    assert resultcache.versions_document(latest, "predict") == "m"
    assert resultcache.wanted_identity("predict", pinned) == "m@3"
    assert resultcache.wanted_identity("predict", latest, {"latest": 5}) == "m@5"
    assert resultcache.wanted_identity("predict", latest, None) is None  # no worker said yet
    result = {"model": "m", "version": 5, "predictions_json": "[[2]]"}
    assert resultcache.served_identity("predict", result) == "m@5"
    assert resultcache.wanted_identity("embed", {"texts": ["x"]}) == resultcache.served_identity(
        "embed", {}
    )


def test_a_hit_needs_the_tenant_the_identity_and_an_unexpired_entry() -> None:
    entry = resultcache.entry_document(
        tenant="a", task="predict", identity="m@1", result={"r": 1}, now=NOW, result_ttl_s=60
    )
    assert resultcache.hit(entry, "a", "m@1", NOW)
    assert not resultcache.hit(entry, "b", "m@1", NOW)
    assert not resultcache.hit(entry, "a", "m@2", NOW)
    assert not resultcache.hit(entry, "a", None, NOW)
    assert not resultcache.hit(entry, "a", "m@1", NOW + timedelta(seconds=61))
    assert not resultcache.hit(None, "a", "m@1", NOW)
