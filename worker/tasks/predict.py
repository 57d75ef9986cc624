"""``predict`` on TensorFlow/Keras, from ``MODEL_REPOSITORY`` in TensorFlow Serving's layout.

    MODEL_REPOSITORY/<name>/<version>/model.keras        (Keras 3 native format), or
    MODEL_REPOSITORY/<name>/<version>/saved_model.pb     (a SavedModel, e.g. Keras model.export())

At start the repository is listed and the highest version of the first ``PREDICT_MAX_LOADED``
models (by name) is loaded (``/readyz`` waits for them). Any other version is loaded on first use,
and at most ``max_loaded`` versions stay loaded: loading one more drops the least recently used,
so memory is bounded whatever the jobs ask for. Without a version, a job gets the highest version
known when it runs. The served version is reported with each result. An unknown model or version
fails the job with code ``unknown_model``.

A model or version not in the last listing makes the adapter list the repository again, unless
that listing is younger than ``miss_cache_s`` and neither the repository folder nor the model's
folder changed since (their modification times, two ``stat`` calls): a flood of jobs naming
unknown models costs no listing, and a model published later is found within ``miss_cache_s``
(at once when it was published by creating or renaming a folder, as TF Serving advises).

Locks (none is held while another is taken, except ``_loading`` then ``_lock``):
- ``_lock`` guards ``_loaded`` (the LRU) and is held only for dictionary operations, never for a
  listing or a load, so jobs on loaded models never wait for either.
- ``_listing``: one repository listing at a time; a miss that waited for another's listing uses
  it when it started after the miss was seen, instead of listing again.
- ``_loading``: one model load at a time (two jobs for the same new version load it once).
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from schemas.tasks.predict import PredictInput
from worker import metrics
from worker.attempts import StopToken
from worker.errors import PermanentError
from worker.settings import PREDICT_MAX_LOADED, PREDICT_MISS_CACHE_S

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Listing:
    """One listing of the repository: what was servable (``{name: {version: folder}}``), and
    the folders' modification times (nanoseconds) when it started, to tell whether anything was
    published since."""

    models: dict[str, dict[int, Path]] = field(default_factory=dict)
    started_at: float = float("-inf")  # the adapter's clock
    root_stamp: int | None = None
    stamps: dict[str, int | None] = field(default_factory=dict)  # every model folder's


def _stamp(path: Path) -> int | None:
    """``path``'s modification time in nanoseconds; None if it is not there."""
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def _list(repository: Path, started_at: float = float("-inf")) -> Listing:
    # Stamps are read before the folders: a change during the listing makes them stale, so the
    # next miss lists again rather than trusting a listing that may have missed it.
    root_stamp = _stamp(repository)
    if not repository.is_dir():
        return Listing(started_at=started_at, root_stamp=root_stamp)
    models: dict[str, dict[int, Path]] = {}
    stamps: dict[str, int | None] = {}
    for model_dir in sorted(p for p in repository.iterdir() if p.is_dir()):
        stamps[model_dir.name] = _stamp(model_dir)
        found = {
            int(v.name): v
            for v in model_dir.iterdir()
            if v.is_dir()
            and v.name.isdigit()
            and ((v / "model.keras").is_file() or (v / "saved_model.pb").is_file())
        }
        if found:
            models[model_dir.name] = found
    return Listing(models, started_at, root_stamp, stamps)


@dataclass(frozen=True)
class _Loaded:
    call: Callable[[Any], Any]
    keep: Any  # what must stay alive while ``call`` is used (a restored SavedModel's variables)


class PredictAdapter:
    name = "predict"

    def __init__(
        self,
        repository: str | None,
        threads: int = 0,
        device: str = "auto",
        *,
        max_loaded: int = PREDICT_MAX_LOADED,
        miss_cache_s: float = PREDICT_MISS_CACHE_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        if max_loaded < 1:
            raise ValueError("max_loaded must be at least 1")
        self._repository = Path(repository) if repository else None
        self._threads = threads
        self._requested_device = device
        self._max_loaded = max_loaded
        self._miss_cache_s = miss_cache_s
        self._clock = clock
        self.device = "unloaded"
        self.forward_passes = 0
        self.listings = 0  # repository listings so far (also omni_worker_predict_..._listings)
        # Replaced whole, never changed in place: a reader holds one consistent listing.
        self._catalogue = Listing()
        self._loaded: OrderedDict[tuple[str, int], _Loaded] = OrderedDict()  # oldest use first
        self._lock = threading.Lock()  # guards _loaded; held for dictionary operations only
        self._listing = threading.Lock()  # one listing at a time; guards self.listings
        self._loading = threading.Lock()  # one model load at a time
        self._tf: Any = None

    def loaded_versions(self) -> list[tuple[str, int]]:
        """The (name, version) pairs loaded now, least recently used first."""
        with self._lock:
            return list(self._loaded)

    def latest_version(self, name: str) -> int | None:
        """The model's highest version in the last listing: what an unversioned job gets now
        (the result cache keys unversioned requests on it, ``worker/resultcache.py``)."""
        versions = self._catalogue.models.get(name)
        return max(versions) if versions else None

    def load(self) -> None:
        self._start_tensorflow()
        if self._repository is not None:
            if str(self._repository).startswith("gs:"):
                raise RuntimeError("gs:// model repositories are not supported yet; mount a folder")
            self._relist(self._catalogue, self._clock())
        models = self._catalogue.models
        names = list(models)
        if len(names) > self._max_loaded:
            logger.info(
                "%d models in the repository, %d loaded at start; the rest load on first use",
                len(names),
                self._max_loaded,
            )
        for name in names[: self._max_loaded]:
            version = max(models[name])
            self._model(name, version, models[name][version])

    def _start_tensorflow(self) -> None:
        # TF's C++ logging writes plain lines to stderr; a worker's log is JSON lines only.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        # Set explicitly, oneDNN (on by default on x86) prints no notice at import.
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
        import tensorflow as tf

        if self._threads:
            # Must happen before TF's first op; leaves the rest of the pod to torch and callbacks.
            try:
                tf.config.threading.set_intra_op_parallelism_threads(self._threads)
                tf.config.threading.set_inter_op_parallelism_threads(1)
            except RuntimeError:
                logger.warning("TensorFlow was initialised before the worker set its threads")
        self._tf = tf
        self.device = self._place(tf)

    def _place(self, tf: Any) -> str:
        """``WORKER_DEVICE`` for TensorFlow: ``cpu`` hides the GPUs, ``cuda`` insists on one."""
        gpus = tf.config.list_physical_devices("GPU")
        if self._requested_device == "cpu" and gpus:
            tf.config.set_visible_devices([], "GPU")
            return "cpu"
        if self._requested_device == "cuda" and not gpus:
            raise RuntimeError("WORKER_DEVICE=cuda but TensorFlow sees no GPU")
        return "cuda" if gpus else "cpu"

    # -- the loaded versions (LRU) ---------------------------------------------------------------
    def _model(self, name: str, version: int, folder: Path) -> Callable[[Any], Any]:
        key = (name, version)
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key].call
        with self._loading:
            with self._lock:  # loaded by another thread while this one waited
                if key in self._loaded:
                    self._loaded.move_to_end(key)
                    return self._loaded[key].call
            loaded = self._load_version(folder)  # seconds, perhaps: outside _lock
            with self._lock:
                self._loaded[key] = loaded
                evicted = []
                while len(self._loaded) > self._max_loaded:
                    evicted.append(self._loaded.popitem(last=False)[0])
                count = len(self._loaded)
            metrics.predict_loaded(count, len(evicted))
            if evicted:
                logger.info(
                    "model %s version %d loaded; dropped %s (least recently used)",
                    name,
                    version,
                    ", ".join(f"{n} version {v}" for n, v in evicted),
                    extra={"model": name, "version": version, "loaded": count},
                )
                # A Keras model is full of reference cycles: collect now, so the dropped
                # version's memory is free before the next load rather than whenever gc runs.
                gc.collect()
            return loaded.call

    def _load_version(self, folder: Path) -> _Loaded:
        """Load the model in ``folder``: a ``model.keras``, or a SavedModel's ``serve``."""
        if (folder / "model.keras").is_file():
            import keras

            model = keras.saving.load_model(folder / "model.keras")
            return _Loaded(model.predict_on_batch, model)
        restored = self._tf.saved_model.load(str(folder))
        # Keep the restored object alive: its variables die with it.
        return _Loaded(restored.serve, restored)

    # -- finding a version (the negative cache) ----------------------------------------------------
    def _resolve(self, item: PredictInput) -> tuple[str, int, Path]:
        catalogue = self._catalogue
        found = catalogue.models.get(item.model)
        if self._repository is not None and (
            not found or (item.version is not None and item.version not in found)
        ):
            missed_at = self._clock()
            if not self._still_answers(catalogue, item.model, missed_at):
                catalogue = self._relist(catalogue, missed_at)
                found = catalogue.models.get(item.model)
        if not found:
            raise PermanentError("unknown_model", f"no model {item.model!r} in the repository")
        version = item.version or max(found)
        if version not in found:
            known = ", ".join(str(v) for v in sorted(found))
            raise PermanentError(
                "unknown_model", f"model {item.model!r} has no version {version} (has {known})"
            )
        return item.model, version, found[version]

    def _still_answers(self, catalogue: Listing, name: str, now: float) -> bool:
        """Whether ``catalogue``'s miss of ``name`` (or of one of its versions) stands: the
        listing is younger than ``miss_cache_s`` and no folder on the way changed since."""
        assert self._repository is not None
        if now - catalogue.started_at >= self._miss_cache_s:
            return False
        return _stamp(self._repository) == catalogue.root_stamp and _stamp(
            self._repository / name
        ) == catalogue.stamps.get(name)

    def _relist(self, seen: Listing, missed_at: float) -> Listing:
        """A listing that started after ``missed_at``: another thread's, if one ran while this
        one waited, else a new one. ``seen`` is the listing that missed."""
        assert self._repository is not None
        with self._listing:
            current = self._catalogue
            if current is not seen and current.started_at >= missed_at:
                return current
            started_at = self._clock()
            listing = _list(self._repository, started_at)  # outside _lock: jobs run meanwhile
            self.listings += 1
            self._catalogue = listing
        metrics.predict_listed()
        return listing

    def run(self, inputs: list[BaseModel], stop: StopToken) -> list[dict[str, Any]]:
        """Jobs for the same model version whose instances stack (same numeric shape) share one
        call; the rest run one call each."""
        import numpy as np

        groups: dict[tuple[str, int, tuple[int, ...]], list[int]] = {}
        folders: dict[tuple[str, int], Path] = {}
        arrays: list[Any] = []
        results: list[dict[str, Any] | None] = [None] * len(inputs)
        for i, item in enumerate(inputs):
            assert isinstance(item, PredictInput)
            name, version, folder = self._resolve(item)
            folders[(name, version)] = folder
            try:
                batch = np.asarray(item.instances, dtype=np.float32)
            except (ValueError, TypeError):
                batch = self._tf.constant(item.instances)  # strings, for text models
                results[i] = self._predict(name, version, folder, batch, stop)
                arrays.append(None)
                continue
            arrays.append(batch)
            groups.setdefault((name, version, batch.shape[1:]), []).append(i)
        for (name, version, _shape), members in groups.items():
            stacked = np.concatenate([arrays[i] for i in members])
            folder = folders[(name, version)]
            output = self._predict(name, version, folder, stacked, stop)["predictions"]
            start = 0
            for i in members:
                rows = len(arrays[i])
                results[i] = {
                    "model": name,
                    "version": version,
                    "predictions": output[start : start + rows],
                }
                start += rows
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    def _predict(
        self, name: str, version: int, folder: Path, batch: Any, stop: StopToken
    ) -> dict[str, Any]:
        import numpy as np

        stop.check()
        call = self._model(name, version, folder)
        try:
            output = call(batch)
        except (ValueError, TypeError, self._tf.errors.InvalidArgumentError) as exc:
            text = f"the model refused the instances: {exc}"
            raise PermanentError("invalid_input", text) from None
        self.forward_passes += 1
        predictions = np.asarray(output).tolist()
        return {"model": name, "version": version, "predictions": predictions}
