"""worker/tasks/predict.py without TensorFlow: which versions stay loaded (the LRU), when the
repository is listed (the miss cache) and which locks a listing holds.

The repository is a real folder in TensorFlow Serving's layout; only loading a version is replaced
(a model whose prediction is its own version number), so no test here imports TensorFlow. The same
adapter on real Keras models, in a real worker: tests/integration/test_predict_cache.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

from schemas.tasks.predict import PredictInput
from worker.attempts import StopToken
from worker.errors import PermanentError
from worker.tasks import predict
from worker.tasks.predict import PredictAdapter

WAIT_S = 10


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingAdapter(PredictAdapter):
    """The real adapter; loading a version gives a model that predicts its version number, and
    listings can be held open by the test (``hold``)."""

    def __init__(self, repository: Path, **kwargs: Any) -> None:
        super().__init__(str(repository), **kwargs)
        self.loads: list[tuple[str, int]] = []
        self.misses_listing: list[str] = []  # each miss that went on to (maybe) list, by thread

    def _start_tensorflow(self) -> None:
        self.device = "cpu"

    def _load_version(self, folder: Path) -> predict._Loaded:
        version = int(folder.name)
        self.loads.append((folder.parent.name, version))

        def call(batch: Any) -> Any:
            return np.full((len(batch), 1), version, dtype=np.float32)

        return predict._Loaded(call, keep=None)

    def _relist(self, seen: predict.Listing, missed_at: float) -> predict.Listing:
        self.misses_listing.append(threading.current_thread().name)
        return super()._relist(seen, missed_at)


def wait_until(condition: Callable[[], bool]) -> bool:
    done = threading.Event()
    for _ in range(WAIT_S * 100):
        if condition():
            return True
        done.wait(0.01)
    return False


def publish(repository: Path, name: str, version: int) -> None:
    folder = repository / name / str(version)
    folder.mkdir(parents=True)
    (folder / "model.keras").write_bytes(b"")


def ask(adapter: PredictAdapter, model: str, version: int | None = None) -> dict[str, Any]:
    item = PredictInput(model=model, version=version, instances=[[1.0]])
    (result,) = adapter.run([item], StopToken(60))
    return result


def gauge() -> float:
    value = REGISTRY.get_sample_value("omni_worker_predict_loaded_versions")
    assert value is not None
    return value


def listings_metric() -> float:
    value = REGISTRY.get_sample_value("omni_worker_predict_repository_listings_total")
    return value or 0.0


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    path = tmp_path / "models"
    path.mkdir()
    return path


def test_twenty_versions_in_turn_keep_at_most_max_loaded(repository: Path) -> None:
    for version in range(1, 21):
        publish(repository, "many", version)
    adapter = CountingAdapter(repository, max_loaded=3)
    adapter.load()
    assert adapter.loaded_versions() == [("many", 20)]  # the highest, at start

    for version in range(1, 21):
        result = ask(adapter, "many", version)
        assert (result["version"], result["predictions"]) == (version, [[float(version)]])
        assert len(adapter.loaded_versions()) <= 3
        assert gauge() == len(adapter.loaded_versions())

    assert adapter.loaded_versions() == [("many", 18), ("many", 19), ("many", 20)]
    # 20 at start, dropped for 3, loaded again in its turn; every other version once.
    assert adapter.loads == [("many", 20)] + [("many", v) for v in range(1, 21)]
    assert adapter.listings == 1  # every version was in the listing made at start


def test_the_least_recently_used_version_is_the_one_dropped(repository: Path) -> None:
    for version in (1, 2, 3):
        publish(repository, "m", version)
    adapter = CountingAdapter(repository, max_loaded=2)
    adapter.load()  # version 3
    ask(adapter, "m", 1)
    ask(adapter, "m", 3)  # used again: 1 is now the oldest use
    ask(adapter, "m", 2)
    assert adapter.loaded_versions() == [("m", 3), ("m", 2)]
    ask(adapter, "m", 3)
    assert adapter.loads == [("m", 3), ("m", 1), ("m", 2)]  # 3 never dropped, never reloaded


def test_only_max_loaded_models_load_at_start(repository: Path) -> None:
    for name in ("a", "b", "c", "d"):
        publish(repository, name, 1)
    adapter = CountingAdapter(repository, max_loaded=2)
    adapter.load()
    assert adapter.loads == [("a", 1), ("b", 1)]
    assert ask(adapter, "d")["version"] == 1  # the others load on first use
    assert len(adapter.loaded_versions()) == 2


def test_unknown_models_within_the_window_do_not_list_again(repository: Path) -> None:
    publish(repository, "known", 1)
    clock = Clock()
    adapter = CountingAdapter(repository, miss_cache_s=5, clock=clock)
    adapter.load()
    before = listings_metric()

    with pytest.raises(PermanentError) as first:
        ask(adapter, "nobody")  # the start's listing is young: it answers
    assert first.value.code == "unknown_model"
    for i in range(49):
        clock.now += 0.1
        with pytest.raises(PermanentError):
            ask(adapter, f"nobody-{i}")  # other names too: the listing answers for every name
        with pytest.raises(PermanentError):
            ask(adapter, "known", 7)  # and for versions
    assert adapter.listings == 1
    assert listings_metric() == before

    clock.now += 0.1  # the window has passed: the next miss lists again
    with pytest.raises(PermanentError):
        ask(adapter, "nobody")
    assert adapter.listings == 2
    assert listings_metric() == before + 1


def test_a_model_published_later_is_found_after_the_window(repository: Path) -> None:
    # The version folder exists before the miss, its model arrives after: no folder's
    # modification time shows it, so only the window's end makes it visible.
    (repository / "late" / "1").mkdir(parents=True)
    clock = Clock()
    adapter = CountingAdapter(repository, miss_cache_s=5, clock=clock)
    adapter.load()
    clock.now += 1
    with pytest.raises(PermanentError):
        ask(adapter, "late")
    (repository / "late" / "1" / "model.keras").write_bytes(b"")
    clock.now += 3.9
    with pytest.raises(PermanentError):
        ask(adapter, "late")  # 4.9 s after the listing: still unknown
    clock.now += 0.1
    assert ask(adapter, "late")["version"] == 1


def test_a_new_model_folder_is_found_at_once(repository: Path) -> None:
    """Publishing by creating (or renaming into place) a model or version folder changes its
    parent's modification time: the next job lists again, however young the listing."""
    publish(repository, "m", 1)
    clock = Clock()
    adapter = CountingAdapter(repository, miss_cache_s=60, clock=clock)
    adapter.load()
    clock.now += 1
    with pytest.raises(PermanentError):
        ask(adapter, "fresh")
    with pytest.raises(PermanentError):
        ask(adapter, "m", 2)
    listed = adapter.listings
    publish(repository, "fresh", 1)
    assert ask(adapter, "fresh")["version"] == 1
    publish(repository, "m", 2)
    assert ask(adapter, "m", 2)["version"] == 2
    assert adapter.listings == listed + 2


def test_a_miss_cache_of_zero_lists_on_every_miss(repository: Path) -> None:
    adapter = CountingAdapter(repository, miss_cache_s=0)
    adapter.load()
    for _ in range(3):
        with pytest.raises(PermanentError):
            ask(adapter, "nobody")
    assert adapter.listings == 4


class HeldListing(CountingAdapter):
    """Listings after start wait for the test's word (a slow mounted bucket)."""

    def __init__(self, repository: Path, **kwargs: Any) -> None:
        super().__init__(repository, **kwargs)
        self.listing_started = threading.Event()
        self.release = threading.Event()


@pytest.fixture
def held(repository: Path, monkeypatch: pytest.MonkeyPatch) -> HeldListing:
    publish(repository, "loaded", 1)
    adapter = HeldListing(repository, miss_cache_s=0)
    adapter.load()
    adapter.misses_listing.clear()
    real_list = predict._list

    def slow_list(path: Path, started_at: float = float("-inf")) -> predict.Listing:
        listing = real_list(path, started_at)
        adapter.listing_started.set()
        assert adapter.release.wait(WAIT_S)
        return listing

    monkeypatch.setattr(predict, "_list", slow_list)
    return adapter


def test_a_listing_does_not_hold_up_jobs_on_loaded_models(held: HeldListing) -> None:
    missed: list[BaseException] = []

    def miss() -> None:
        try:
            ask(held, "nobody")
        except PermanentError as exc:
            missed.append(exc)

    lister = threading.Thread(target=miss, name="test-miss")
    lister.start()
    try:
        assert held.listing_started.wait(WAIT_S)
        # The listing is in progress: a job on a loaded model is answered meanwhile.
        answered: list[dict[str, Any]] = []
        job = threading.Thread(target=lambda: answered.append(ask(held, "loaded")), name="test-job")
        job.start()
        job.join(WAIT_S)
        assert answered and answered[0]["predictions"] == [[1.0]]
        assert lister.is_alive()
    finally:
        held.release.set()
        lister.join(WAIT_S)
    assert len(missed) == 1 and held.listings == 2


def test_concurrent_misses_share_a_listing(held: HeldListing) -> None:
    missed: list[BaseException] = []

    def miss() -> None:
        try:
            ask(held, "nobody")
        except PermanentError as exc:
            missed.append(exc)

    first = threading.Thread(target=miss, name="test-first-miss")
    first.start()
    assert held.listing_started.wait(WAIT_S)
    # Ten more misses while the first one lists: they wait for one listing that starts after
    # them (the first one's may predate a publication they should see), and share it.
    others = [threading.Thread(target=miss, name=f"test-miss-{i}") for i in range(10)]
    for thread in others:
        thread.start()
    waited = wait_until(lambda: len(held.misses_listing) == 11)
    held.release.set()
    assert waited
    for thread in [first, *others]:
        thread.join(WAIT_S)
        assert not thread.is_alive()
    assert len(missed) == 11
    assert held.listings == 1 + 2  # the start's, the first miss's, one for the ten others
