"""reconciler/settings.py (how a chunk the reconciler ends moves its items' letters and counts:
``schemas.chunks.end_unfinished``, in test_chunks.py)."""

from __future__ import annotations

from reconciler.settings import ReconcilerSettings


def test_the_batches_collection_is_configurable() -> None:
    assert ReconcilerSettings.from_env({}).batches_collection == "batches"
    settings = ReconcilerSettings.from_env({"BATCHES_COLLECTION": "b2"})
    assert settings.batches_collection == "b2"
