"""``predict`` on TensorFlow/Keras, from ``MODEL_REPOSITORY`` in TensorFlow Serving's layout.

    MODEL_REPOSITORY/<name>/<version>/model.keras        (Keras 3 native format), or
    MODEL_REPOSITORY/<name>/<version>/saved_model.pb     (a SavedModel, e.g. Keras model.export())

Every model's highest version is loaded at start (``/readyz`` waits for them); an older version a
job asks for, or a model published after start, is found on first use (the repository is listed
again) and kept. Without a version, a job gets the highest version known when it runs. The served
version is reported with each result. An unknown model or version fails the job with code
``unknown_model``.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from schemas.tasks.predict import PredictInput
from worker.attempts import StopToken
from worker.errors import PermanentError

logger = logging.getLogger(__name__)


def versions(repository: Path) -> dict[str, dict[int, Path]]:
    """``{name: {version: folder}}`` of every servable model version in the repository."""
    catalogue: dict[str, dict[int, Path]] = {}
    if not repository.is_dir():
        return catalogue
    for model_dir in sorted(p for p in repository.iterdir() if p.is_dir()):
        found = {
            int(v.name): v
            for v in model_dir.iterdir()
            if v.is_dir()
            and v.name.isdigit()
            and ((v / "model.keras").is_file() or (v / "saved_model.pb").is_file())
        }
        if found:
            catalogue[model_dir.name] = found
    return catalogue


class PredictAdapter:
    name = "predict"

    def __init__(self, repository: str | None, threads: int = 0, device: str = "auto"):
        self._repository = Path(repository) if repository else None
        self._threads = threads
        self._requested_device = device
        self.device = "unloaded"
        self.forward_passes = 0
        self._catalogue: dict[str, dict[int, Path]] = {}
        self._loaded: dict[tuple[str, int], Any] = {}
        self._lock = threading.Lock()
        self._restored: list[Any] = []
        self._tf: Any = None

    def load(self) -> None:
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
        if self._repository is not None:
            if str(self._repository).startswith("gs:"):
                raise RuntimeError("gs:// model repositories are not supported yet; mount a folder")
            self._catalogue = versions(self._repository)
        for name, found in self._catalogue.items():
            self._model(name, max(found))

    def _place(self, tf: Any) -> str:
        """``WORKER_DEVICE`` for TensorFlow: ``cpu`` hides the GPUs, ``cuda`` insists on one."""
        gpus = tf.config.list_physical_devices("GPU")
        if self._requested_device == "cpu" and gpus:
            tf.config.set_visible_devices([], "GPU")
            return "cpu"
        if self._requested_device == "cuda" and not gpus:
            raise RuntimeError("WORKER_DEVICE=cuda but TensorFlow sees no GPU")
        return "cuda" if gpus else "cpu"

    def _model(self, name: str, version: int) -> Any:
        with self._lock:
            if (name, version) in self._loaded:
                return self._loaded[(name, version)]
            folder = self._catalogue[name][version]
            if (folder / "model.keras").is_file():
                import keras

                model = keras.saving.load_model(folder / "model.keras")
                call = model.predict_on_batch
            else:
                restored = self._tf.saved_model.load(str(folder))
                # Keep the restored object alive: its variables die with it.
                self._restored.append(restored)
                call = restored.serve
            self._loaded[(name, version)] = call
            return call

    def _resolve(self, item: PredictInput) -> tuple[str, int]:
        found = self._catalogue.get(item.model)
        if self._repository is not None and (
            not found or (item.version is not None and item.version not in found)
        ):
            # A model or version published since start: look again (a directory listing).
            with self._lock:
                self._catalogue = versions(self._repository)
            found = self._catalogue.get(item.model)
        if not found:
            raise PermanentError("unknown_model", f"no model {item.model!r} in the repository")
        version = item.version or max(found)
        if version not in found:
            known = ", ".join(str(v) for v in sorted(found))
            raise PermanentError(
                "unknown_model", f"model {item.model!r} has no version {version} (has {known})"
            )
        return item.model, version

    def run(self, inputs: list[BaseModel], stop: StopToken) -> list[dict[str, Any]]:
        """Jobs for the same model version whose instances stack (same numeric shape) share one
        call; the rest run one call each."""
        import numpy as np

        groups: dict[tuple[str, int, tuple[int, ...]], list[int]] = {}
        arrays: list[Any] = []
        results: list[dict[str, Any] | None] = [None] * len(inputs)
        for i, item in enumerate(inputs):
            assert isinstance(item, PredictInput)
            name, version = self._resolve(item)
            try:
                batch = np.asarray(item.instances, dtype=np.float32)
            except (ValueError, TypeError):
                batch = self._tf.constant(item.instances)  # strings, for text models
                results[i] = self._predict(name, version, batch, stop)
                arrays.append(None)
                continue
            arrays.append(batch)
            groups.setdefault((name, version, batch.shape[1:]), []).append(i)
        for (name, version, _shape), members in groups.items():
            stacked = np.concatenate([arrays[i] for i in members])
            output = self._predict(name, version, stacked, stop)["predictions"]
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

    def _predict(self, name: str, version: int, batch: Any, stop: StopToken) -> dict[str, Any]:
        import numpy as np

        stop.check()
        call = self._model(name, version)
        try:
            output = call(batch)
        except (ValueError, TypeError, self._tf.errors.InvalidArgumentError) as exc:
            text = f"the model refused the instances: {exc}"
            raise PermanentError("invalid_input", text) from None
        self.forward_passes += 1
        predictions = np.asarray(output).tolist()
        return {"model": name, "version": version, "predictions": predictions}
