"""Feeding a model on a device: the parts every engine shares, pure and torch-free.

One call of an engine goes::

    inputs ─▶ plan_batches: sorted by length within the call's window, cut into batches
           ─▶ prefetch: batch n+1 (and n+2) prepared on a small pool while batch n runs
           ─▶ the device: one forward pass per batch, a safe point before each
           ─▶ each row written back at its input's position (input order restored)

Sorting within the window puts texts of similar length together, so a batch pads to a length
close to its own texts' instead of the window's longest; preparing ahead keeps the device busy
while the CPU tokenizes, pads and copies (serially, a GPU idles between batches for most of a
``SentenceTransformer.encode`` call; on two CPU cores the tokenizer's threads run beside torch's).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Generator, Iterable, Sequence
from concurrent.futures import Executor, Future
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

PIPELINE_DEPTH = 2
"""Batches prepared ahead of the one on the device (batches): two keep the device fed across a
slow tokenization while bounding what waits in (pinned) host memory to two batches."""


def pick_device(requested: str, cuda_available: bool) -> str:
    """``auto`` takes CUDA when there is a GPU; ``cuda`` without one is a configuration error."""
    if requested == "cpu":
        return "cpu"
    if cuda_available:
        return "cuda"
    if requested == "cuda":
        raise RuntimeError("WORKER_DEVICE=cuda but torch sees no GPU")
    return "cpu"


def pick_dtype(device: str) -> str:
    """The weights' dtype on ``device``: fp16 on a GPU (tensor cores, half the memory traffic),
    fp32 on the CPU (where fp16 matmuls are slower, not faster)."""
    return "float16" if device.startswith("cuda") else "float32"


def plan_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Input positions sorted longest first (ties keep input order), cut into batches of at most
    ``batch_size``. Every position appears exactly once; the caller writes each batch's rows back
    at these positions, which restores input order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def prefetch(
    items: Iterable[T],
    prepare: Callable[[T], R],
    pool: Executor | None,
    depth: int = PIPELINE_DEPTH,
) -> Generator[R, None, None]:
    """``prepare(item)`` for each item, in order. With a ``pool``, up to ``depth`` items are
    prepared on it ahead of the one the caller holds; without one (or ``depth`` 0), each is
    prepared when asked for, on the caller's thread.

    Close the iterator (``contextlib.closing``) when leaving early: closing cancels what has not
    started (what has started finishes on the pool and is dropped). An exception raised by
    ``prepare`` comes out of ``next()`` for its item."""
    if pool is None or depth < 1:
        for item in items:
            yield prepare(item)
        return
    source = iter(items)
    pending: deque[Future[R]] = deque(
        pool.submit(prepare, i) for i in itertools.islice(source, depth)
    )
    try:
        while pending:
            ready = pending.popleft().result()
            # Refill before handing the item over: the next one prepares while the caller runs.
            pending.extend(pool.submit(prepare, i) for i in itertools.islice(source, 1))
            yield ready
    finally:
        for future in pending:
            future.cancel()
