"""worker/engines: length-bucketed batches back in input order, the bounded prepare-ahead
pipeline, device/dtype/batch choice, the safe point between forward passes, and (slow) the
real MiniLM: the engine's vectors equal ``SentenceTransformer.encode``'s."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from typing import Any

import numpy as np
import pytest

from worker.attempts import StopToken
from worker.engines.feed import pick_device, pick_dtype, plan_batches, prefetch
from worker.engines.sentence import CPU_BATCH, CUDA_BATCH, SentenceEngine, batch_size_for
from worker.errors import Stopped
from worker.tasks.embed import EmbedAdapter

TIMEOUT_S = 10


# -- plan_batches: sorted by length, every position once -----------------------------------------
def test_batches_hold_every_position_once_longest_first() -> None:
    lengths = [3, 50, 0, 7, 50, 12, 1, 9, 30, 2]

    batches = plan_batches(lengths, 4)

    assert [len(batch) for batch in batches] == [4, 4, 2]
    flat = [position for batch in batches for position in batch]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[p] for p in flat] == sorted(lengths, reverse=True)
    assert flat[:2] == [1, 4]  # equal lengths keep their input order


def test_rows_written_at_their_positions_come_back_in_input_order() -> None:
    texts = [f"{'w ' * n}#{i}" for i, n in enumerate([5, 1, 40, 40, 0, 17, 3, 60, 2, 8, 9])]
    rows: list[str | None] = [None] * len(texts)

    for batch in plan_batches([len(t) for t in texts], 3):
        for position, text in zip(batch, [texts[i] for i in batch], strict=True):
            rows[position] = text

    assert rows == texts


@pytest.mark.parametrize(("count", "size"), [(0, 4), (1, 4), (4, 4), (5, 4), (7, 1)])
def test_batches_are_at_most_the_batch_size(count: int, size: int) -> None:
    batches = plan_batches(list(range(count)), size)

    assert all(1 <= len(batch) <= size for batch in batches)
    assert sum(len(batch) for batch in batches) == count


def test_a_batch_size_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        plan_batches([1, 2], 0)


# -- prefetch: in order, bounded, cancellable ----------------------------------------------------
def test_prefetch_keeps_order_and_prepares_at_most_depth_ahead() -> None:
    lock = threading.Lock()  # guards started
    started: list[int] = []
    taken = 0
    ahead: list[int] = []

    def prepare(item: int) -> int:
        with lock:
            started.append(item)
        time.sleep(0.005 * (item % 3))  # finish out of order on the pool
        return item * 10

    with ThreadPoolExecutor(2) as pool:
        results = []
        for value in prefetch(range(8), prepare, pool, depth=2):
            taken += 1
            with lock:
                ahead.append(len(started) - taken)
            results.append(value)

    assert results == [i * 10 for i in range(8)]
    assert max(ahead) <= 2


def test_prefetch_without_a_pool_prepares_on_the_callers_thread() -> None:
    threads: list[str] = []

    def prepare(item: int) -> int:
        threads.append(threading.current_thread().name)
        return item

    assert list(prefetch([1, 2, 3], prepare, None)) == [1, 2, 3]
    assert set(threads) == {threading.current_thread().name}


def test_closing_prefetch_early_cancels_what_has_not_started() -> None:
    gate = threading.Event()
    prepared: list[int] = []

    def prepare(item: int) -> int:
        gate.wait(TIMEOUT_S)
        prepared.append(item)
        return item

    with ThreadPoolExecutor(1) as pool:
        iterator = prefetch(range(10), prepare, pool, depth=2)
        with closing(iterator):
            gate.set()
            assert next(iterator) == 0
        pool.shutdown(wait=True)

    # What had started when the iterator closed finished; nothing after it ever started.
    assert prepared == list(range(len(prepared))) and len(prepared) <= 3


def test_prefetch_raises_a_prepare_failure_for_its_item() -> None:
    def prepare(item: int) -> int:
        if item == 1:
            raise RuntimeError("bad item")
        return item

    with ThreadPoolExecutor(2) as pool:
        iterator = prefetch(range(3), prepare, pool)
        assert next(iterator) == 0
        with pytest.raises(RuntimeError, match="bad item"):
            next(iterator)


# -- device, dtype and batch size -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("requested", "cuda", "device"),
    [("auto", True, "cuda"), ("auto", False, "cpu"), ("cpu", True, "cpu"), ("cuda", True, "cuda")],
)
def test_device_follows_worker_device_and_the_gpu(requested: str, cuda: bool, device: str) -> None:
    assert pick_device(requested, cuda) == device


def test_cuda_without_a_gpu_is_a_configuration_error() -> None:
    with pytest.raises(RuntimeError, match="WORKER_DEVICE=cuda"):
        pick_device("cuda", False)


@pytest.mark.parametrize(
    ("device", "dtype", "batch"),
    [("cuda", "float16", CUDA_BATCH), ("cuda:1", "float16", CUDA_BATCH), ("cpu", "float32", 32)],
)
def test_fp16_and_a_larger_batch_on_a_gpu_only(device: str, dtype: str, batch: int) -> None:
    assert pick_dtype(device) == dtype
    assert batch_size_for(device) == batch
    assert CUDA_BATCH > CPU_BATCH


# -- the engine over a model that shows what it was given --------------------------------------
class LengthModel:
    """A stand-in SentenceTransformer on the CPU: a text's row is its length and its batch's
    padded width, unit-normalized by the engine; ``widths`` records each batch's padding."""

    def __init__(self) -> None:
        self.widths: list[int] = []
        self.halved = False

    def get_embedding_dimension(self) -> int:
        return 3

    def half(self) -> None:
        self.halved = True

    def eval(self) -> None:
        pass

    def preprocess(self, texts: list[str]) -> dict[str, Any]:
        import torch

        lengths = torch.tensor([len(t) for t in texts], dtype=torch.float32)
        return {"lengths": lengths, "modality": "text"}

    def __call__(self, features: dict[str, Any]) -> dict[str, Any]:
        import torch

        lengths = features["lengths"]
        width = float(lengths.max())
        self.widths.append(int(width))
        ones = torch.ones_like(lengths)
        return {"sentence_embedding": torch.stack([lengths + 1, ones * width, ones], dim=1)}


def expected_lengths(rows: Any) -> list[int]:
    """The text length each unit row encodes (row = (length + 1, width, 1), normalized)."""
    return [round(row[0] / row[2]) - 1 for row in rows]


@pytest.mark.parametrize("threads", [0, 2])
def test_engine_rows_come_back_in_input_order_from_length_sorted_batches(threads: int) -> None:
    model = LengthModel()
    engine = SentenceEngine(model, "cpu", batch_size=4, tokenize_threads=threads)
    texts = ["x" * n for n in [5, 60, 1, 33, 0, 12, 60, 7, 2, 45, 19]]

    rows = engine.encode(texts)
    engine.close()

    assert rows.dtype == np.float32 and rows.shape == (len(texts), 3)
    assert expected_lengths(rows) == [len(t) for t in texts]
    assert np.allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-6)
    assert model.widths == [60, 19, 2]  # sorted by length: each batch pads little
    assert not model.halved


def test_an_empty_window_gives_no_rows() -> None:
    rows = SentenceEngine(LengthModel(), "cpu", tokenize_threads=0).encode([])

    assert rows.shape == (0, 3) and rows.dtype == np.float32


def test_between_runs_before_every_forward_pass_and_can_stop_the_call() -> None:
    model = LengthModel()
    engine = SentenceEngine(model, "cpu", batch_size=2, tokenize_threads=2)
    calls: list[int] = []

    def between() -> None:
        calls.append(len(model.widths))
        if len(calls) == 2:
            raise Stopped("cancelled")

    with pytest.raises(Stopped):
        engine.encode(["a", "bb", "ccc", "dddd", "eeeee", "f"], between)
    engine.close()

    assert calls == [0, 1]  # before the first pass, and before the second, which never ran
    assert len(model.widths) == 1


class StopAfter(StopToken):
    """A stop token that lets ``passes`` safe points through, then stops (its time is up)."""

    def __init__(self, passes: int):
        super().__init__(3600)
        self.left = passes

    def check(self) -> None:
        super().check()
        self.left -= 1
        if self.left == 0:
            self.deadline = time.monotonic() - 1


def adapter_over(model: Any, batch_size: int) -> EmbedAdapter:
    adapter = EmbedAdapter(device="cpu")
    adapter._engine = SentenceEngine(model, "cpu", batch_size=batch_size)
    return adapter


def test_the_adapter_stops_at_the_safe_point_and_counts_forward_passes() -> None:
    adapter = adapter_over(LengthModel(), batch_size=2)
    texts = ["one", "two", "three", "four", "five"]

    assert expected_lengths(adapter.encode(texts)) == [3, 3, 5, 4, 4]
    assert adapter.forward_passes == 3

    with pytest.raises(Stopped) as stopped:
        adapter.encode(texts, StopAfter(1))
    assert stopped.value.reason == "timeout"
    assert adapter.forward_passes == 4


# -- the real MiniLM -----------------------------------------------------------------------------
WORDS = [
    "quiet",
    "harbour",
    "train",
    "council",
    "recipe",
    "budget",
    "morning",
    "phones",
    "winter",
    "market",
    "bread",
]


def mixed_texts() -> list[str]:
    """Very different lengths: empty-ish, a word, sentences, and past MiniLM's 256 tokens."""
    sentences = [
        " ".join(WORDS[(i + k) % len(WORDS)] for k in range(n))
        for i, n in enumerate([5, 60, 12, 33, 48, 7, 21, 59, 9, 40])
    ]
    longest = ("antidisestablishmentarianism " * 70)[:2048]  # the schema's longest text
    return ["", " ", "a", *sentences, longest, "Hello, world!", "x" * 2048, *sentences[:4]]


@pytest.fixture(scope="module")
def minilm() -> Any:
    from worker.tasks.embed import shared_model

    model, device = shared_model("cpu", 0)
    assert device == "cpu"
    return model


def encode_one(model: Any, text: str) -> Any:
    return model.encode([text], normalize_embeddings=True, show_progress_bar=False)[0]


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [4, 32])
def test_engine_equals_encode_per_text_on_minilm(minilm: Any, batch_size: int) -> None:
    texts = mixed_texts()
    engine = SentenceEngine(minilm, "cpu", batch_size=batch_size)

    rows = engine.encode(texts)
    engine.close()

    assert rows.dtype == np.float32 and rows.shape == (len(texts), 384)
    for text, row in zip(texts, rows, strict=True):
        assert float(row @ encode_one(minilm, text)) >= 0.9999, text[:40]
    assert np.allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_engine_truncates_at_max_seq_length_as_encode_does(minilm: Any) -> None:
    base = " ".join(WORDS * 40)  # far past 256 tokens
    engine = SentenceEngine(minilm, "cpu", tokenize_threads=0)

    first, longer = engine.encode([base, base + " and then some more words at the end"])

    assert minilm.max_seq_length == 256
    assert float(first @ longer) >= 0.99999  # the tail past 256 tokens is cut: same input


@pytest.mark.slow
def test_concurrent_calls_share_the_tokenizer_pool_safely(minilm: Any) -> None:
    engine = SentenceEngine(minilm, "cpu", batch_size=4, tokenize_threads=2)
    texts = mixed_texts()
    alone = engine.encode(texts)

    def run(_: int) -> Any:
        return engine.encode(texts)

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(run, range(3), timeout=120))
    engine.close()

    for rows in results:
        assert np.allclose(rows, alone, atol=1e-5)
