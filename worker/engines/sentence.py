"""The engine of sentence-transformers models: ``encode`` without its serial feeding.

It drives the model's own modules (``model.preprocess``: its tokenizer, with the model's
``max_seq_length`` truncation; ``model(features)``: transformer, pooling and normalize) and adds
what ``SentenceTransformer.encode`` lacks (``worker.engines.feed``):

- the window (every text of one call: a micro-batch's jobs, a chunk's sub-batch) sorted by
  length and cut into batches, rows written back at their input positions;
- the next batches tokenized on a small thread pool while the current one runs (depth
  ``PIPELINE_DEPTH``); a call with one batch tokenizes inline (no hand-off for a lone job);
- on CUDA: fp16 weights, the tokenized batch in pinned host memory, host-to-device copies
  ``non_blocking``, every row gathered on the device and copied back once per call;
  ``CUDA_BATCH`` texts per forward pass;
- on the CPU the same path in fp32, ``CPU_BATCH`` texts per pass.

Rows are unit-length float32 whatever the weights' dtype (normalized again in fp32 after an
fp16 pass). A caller's ``between`` runs before each forward pass: its safe point.

Thread safety: the fast tokenizer's first call sets its truncation and padding (a write to the
Rust tokenizer); every later call with the same settings only reads them, so the engine makes
that first call itself, in ``__init__``, before its pool exists. Concurrent ``encode`` calls are
safe (the worker's model lock makes them rare); they share the tokenizer pool.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from worker.engines.feed import pick_dtype, plan_batches, prefetch

CPU_BATCH = 32
"""Texts per forward pass on the CPU (texts): ~400 texts/s at 32 on 2 cores, and larger
batches gain nothing there (bench/engine.py) while they space the safe points further apart."""
CUDA_BATCH = 256
"""Texts per forward pass on a GPU (texts): fp16 MiniLM on an H100 runs a forward pass of 512
at ~200k texts/s and of 32 at a fraction of that; 256 keeps a pass to a few milliseconds."""
TOKENIZE_THREADS = 2
"""Threads that tokenize ahead of the device (threads): the fast tokenizer releases the GIL
while it encodes, so two keep up with a GPU that one (~27k texts/s) would hold back."""


def batch_size_for(device: str) -> int:
    """Texts per forward pass on ``device`` by default."""
    return CUDA_BATCH if device.startswith("cuda") else CPU_BATCH


class SentenceEngine:
    """``encode(texts)``: unit-length float32 rows in input order, as
    ``SentenceTransformer.encode(texts, normalize_embeddings=True)`` gives them."""

    def __init__(
        self,
        model: Any,
        device: str,
        *,
        batch_size: int = 0,
        tokenize_threads: int = TOKENIZE_THREADS,
        dtype: str = "",
    ):
        """``model`` is a loaded ``SentenceTransformer`` on ``device``; on CUDA it is turned to
        fp16 here, in place (whoever shares it gets the fp16 model). ``batch_size`` 0 and
        ``dtype`` "": the device's defaults (``dtype`` ``float32`` keeps a GPU model in fp32)."""
        self.model = model
        self.device = device
        self.dtype = dtype or pick_dtype(device)
        self.batch_size = batch_size or batch_size_for(device)
        self.dimensions: int = model.get_embedding_dimension()
        self._cuda = device.startswith("cuda")
        if self.dtype == "float16":
            model.half()
        model.eval()
        self._prepare(["warm-up"], [0])  # the tokenizer's one write, before any thread shares it
        self._pool = (
            ThreadPoolExecutor(tokenize_threads, thread_name_prefix="tokenize")
            if tokenize_threads > 0
            else None
        )

    def encode(self, texts: Sequence[str], between: Callable[[], None] | None = None) -> Any:
        """One row per text (a float32 numpy array, ``(len(texts), dimensions)``), one forward
        pass per batch, ``between()`` before each (it may raise to stop the call)."""
        import numpy as np
        import torch

        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        batches = plan_batches([len(text) for text in texts], self.batch_size)
        pool = self._pool if len(batches) > 1 else None
        prepared = prefetch(batches, functools.partial(self._prepare, texts), pool)
        with contextlib.closing(prepared), torch.inference_mode():
            rows = torch.empty(
                (len(texts), self.dimensions), dtype=torch.float32, device=self.device
            )
            for features, positions in prepared:
                if between is not None:
                    between()
                self._forward(features, positions, rows)
            return self._to_host(rows)

    def close(self) -> None:
        """Stop the tokenizer threads (idempotent); ``encode`` then tokenizes inline."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def _prepare(self, texts: Sequence[str], batch: list[int]) -> tuple[dict[str, Any], Any]:
        """A batch's features, as the model's own ``preprocess`` builds them (truncated at its
        ``max_seq_length``, padded to the batch's longest), and its input positions; pinned on
        CUDA so the copies to the device can be asynchronous. Runs on the tokenizer pool."""
        import torch

        features = self.model.preprocess([texts[i] for i in batch])
        positions = torch.tensor(batch, dtype=torch.long)
        if self._cuda:
            features = {
                key: value.pin_memory() if isinstance(value, torch.Tensor) else value
                for key, value in features.items()
            }
            positions = positions.pin_memory()
        return features, positions

    def _forward(self, features: dict[str, Any], positions: Any, rows: Any) -> None:
        """One forward pass; its unit rows land in ``rows`` at the batch's input positions.
        On CUDA nothing here waits for the GPU: the copies and kernels queue on its stream."""
        import torch

        on_device = {
            key: value.to(self.device, non_blocking=True)
            if isinstance(value, torch.Tensor)
            else value
            for key, value in features.items()
        }
        embeddings = self.model(on_device)["sentence_embedding"]
        unit = torch.nn.functional.normalize(embeddings.float(), p=2, dim=1)
        rows.index_copy_(0, positions.to(self.device, non_blocking=True), unit)

    def _to_host(self, rows: Any) -> Any:
        """``rows`` as a numpy array; from a GPU through pinned memory, in one copy per call
        (the only point where the CPU waits for the GPU)."""
        import torch

        if not self._cuda:
            return rows.numpy()
        host = torch.empty(rows.shape, dtype=rows.dtype, pin_memory=True)
        host.copy_(rows, non_blocking=True)
        torch.cuda.current_stream(rows.device).synchronize()
        return host.numpy()
