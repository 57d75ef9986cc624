"""The embed engine against ``SentenceTransformer.encode``, and the worker's chunk runner over it.

Every measure embeds the same texts (``--texts`` sentences of 5 to 60 words, seeded), after a
warm-up, best of ``--rounds`` rounds with the contenders alternating within each round (this
machine is shared: the best round is the closest to each one's ceiling). texts/s.

Default mode, at batch 32, 128 and 512 (``--batches``):

- ``encode``: ``SentenceTransformer.encode(texts, batch_size=b, normalize_embeddings=True)``,
  one call over every text (it sorts the whole list by length itself: its best use);
- ``engine``: ``worker.engines.sentence.SentenceEngine`` at batch b, texts tokenized ahead on
  its pool; ``engine inline``: the same with no pool (what the overlap adds);
- once, ``adapter before``: ``encode`` per 32-text slice, as ``EmbedAdapter.encode`` called it
  before the engine (each slice sorted alone, so a window of mixed lengths pads to each
  slice's longest).

``--device cuda --fp16``: the same on a GPU, fp16 weights (``encode`` runs the same fp16 model).

``--chunks``: the worker's chunk runner (``worker.chunkrun.ChunkRunner.run``: each stored line
validated, ``EmbedAdapter.run_packed`` per sub-batch under the model lock, results packed) over
in-process chunks of ``--chunk-items`` one-text items, **no Pub/Sub and no Firestore**, against
the engine alone over the same texts in the same windows (one per sub-batch) and in one window
per chunk. ``--sub-batch`` is the runner's sub-batch (the worker's ``WORKER_MAX_BATCH_EMBED``;
default: the engine's batch on the device).

torch threads: ``--threads`` (default: every CPU this process may use, 2 here); the tokenizer's
pool adds ``TOKENIZE_THREADS`` threads beside them.

    .venv/bin/python -m bench.engine [--texts 1024] [--batches 32,128,512] [--rounds 2]
    .venv/bin/python -m bench.engine --chunks [--chunk-items 1000] [--sub-batch 32]
    python -m bench.engine --device cuda --fp16 [--chunks]      # on a GPU machine
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import time
from collections.abc import Callable
from typing import Any

from bench.common import device_summary, print_table, quiet_model_logs, save

VOCABULARY = (
    "the a harbour quiet train her old laptop city council recipe surprised delayed outlived "
    "approved changed everyone in town morning commuters three new phones budget on day after "
    "long winter rain market opened early because of strong demand for fresh bread and coffee"
)


def sentences(count: int, seed: int = 7) -> list[str]:
    """``count`` sentences of 5 to 60 words, the same for a given seed."""
    rng, words = random.Random(seed), VOCABULARY.split()
    return [
        " ".join(rng.choice(words) for _ in range(rng.randint(5, 60))).capitalize() + "."
        for _ in range(count)
    ]


def best_rates(
    contenders: dict[str, Callable[[], Any]], texts: int, rounds: int
) -> dict[str, float]:
    """texts/s of each contender, best of ``rounds``, the contenders alternating in a round."""
    for run in contenders.values():  # warm-up: first-call allocations, the tokenizer's caches
        run()
    best = dict.fromkeys(contenders, 0.0)
    for _ in range(rounds):
        for name, run in contenders.items():
            started = time.perf_counter()
            run()
            best[name] = max(best[name], texts / (time.perf_counter() - started))
    return best


def load(device: str, threads: int, fp16: bool) -> tuple[Any, Any, str]:
    """(model, engine factory, device): the worker's shared MiniLM; the engine in fp16 on CUDA
    with ``--fp16``, else fp32."""
    from worker.engines.sentence import SentenceEngine
    from worker.tasks.embed import shared_model

    model, resolved = shared_model(device, threads)
    quiet_model_logs()
    dtype = "float16" if fp16 else "float32"

    def engine(batch_size: int, tokenize_threads: int | None = None) -> SentenceEngine:
        if tokenize_threads is None:
            return SentenceEngine(model, resolved, batch_size=batch_size, dtype=dtype)
        return SentenceEngine(
            model, resolved, batch_size=batch_size, tokenize_threads=tokenize_threads, dtype=dtype
        )

    return model, engine, resolved


def encode_rates(args: argparse.Namespace) -> dict[str, Any]:
    model, engine, device = load(args.device, args.threads, args.fp16)
    texts = sentences(args.texts)

    def encode(batch: int, window: list[str]) -> Any:
        return model.encode(
            window, batch_size=batch, normalize_embeddings=True, show_progress_bar=False
        )

    def adapter_before() -> None:
        for start in range(0, len(texts), 32):
            encode(32, texts[start : start + 32])

    rows, results = [], {}
    for batch in args.batches:
        piped, inline = engine(batch), engine(batch, tokenize_threads=0)
        contenders: dict[str, Callable[[], Any]] = {
            "encode": functools.partial(encode, batch, texts),
            "engine": functools.partial(piped.encode, texts),
            "engine inline": functools.partial(inline.encode, texts),
        }
        if batch == args.batches[0]:
            contenders["adapter before"] = adapter_before
        rates = best_rates(contenders, len(texts), args.rounds)
        piped.close()
        results[batch] = rates
        rows.append(
            [
                batch,
                rates["encode"],
                rates["engine"],
                rates["engine inline"],
                round(rates["engine"] / rates["encode"], 2),
            ]
        )
    title = f"engine vs SentenceTransformer.encode, {len(texts)} texts, texts/s ({device})"
    print_table(title, ["batch", "encode", "engine", "engine inline", "engine ÷ encode"], rows)
    before = results[args.batches[0]]["adapter before"]
    print(f"adapter before (encode per 32-text slice): {before:,.1f} texts/s")
    best_encode = max(r["encode"] for r in results.values())
    best_engine = max(r["engine"] for r in results.values())
    print(f"engine at its best batch ÷ encode at its best: {best_engine / best_encode:.2f}")
    return {"rates": results, "best_ratio": best_engine / best_encode}


def _chunk_runner(adapter: Any, sub_batch: int) -> Any:
    """The worker's chunk runner with only what ``run`` uses: the adapter, the model lock, the
    sub-batch size and the time limit (no store, no watcher, no settle threads)."""
    from worker.chunkrun import ChunkRunner
    from worker.modellock import ModelLock

    unused: Any = None
    return ChunkRunner(
        unused,
        {"embed": adapter},
        model_lock=ModelLock(),
        watcher=unused,
        settle_pool=unused,
        hold=unused,
        retry_when_free=unused,
        timeout_for=lambda task: 3600.0,
        batch_size=lambda task: sub_batch,
        backoff_s=unused,
        draining=unused,
        max_attempts=1,
    )


def _claim(index: int, lines: list[bytes]) -> Any:
    from worker.chunkstore import ChunkClaim

    batch = "b" * 16
    return ChunkClaim(
        batch_id=batch,
        chunk_id=f"{index:010d}",
        path=f"batches/{batch}/chunks/{index:010d}",
        attempt=1,
        token="bench",  # noqa: S106 - an attempt token, not a secret
        task="embed",
        tenant="bench",
        inputs=lines,
        todo=tuple(range(len(lines))),
        items="r" * len(lines),
        batch_path=f"batches/{batch}",
    )


def chunk_rates(args: argparse.Namespace) -> dict[str, Any]:
    from worker.attempts import StopToken
    from worker.engines.sentence import batch_size_for
    from worker.tasks.embed import EmbedAdapter

    _, engine, device = load(args.device, args.threads, args.fp16)
    alone = engine(batch_size_for(device))
    # The worker's adapter over this engine (its load() would build the shared one, in the
    # device's default dtype: fp16 on CUDA whatever --fp16 says).
    adapter = EmbedAdapter(device=device, threads=args.threads)
    adapter._engine, adapter.device = alone, device
    sub_batch = args.sub_batch or batch_size_for(device)
    runner = _chunk_runner(adapter, sub_batch)
    texts = sentences(args.texts)
    size = args.chunk_items
    chunks = [texts[start : start + size] for start in range(0, len(texts), size)]
    lines = [[json.dumps({"texts": [t]}).encode() for t in chunk] for chunk in chunks]

    def run_chunks() -> None:
        for index, chunk_lines in enumerate(lines):
            ran = runner.run("embed", _claim(index, chunk_lines), StopToken(3600))
            assert ran.stopped is None and ran.error is None, ran

    def engine_windows() -> None:
        for chunk in chunks:
            for start in range(0, len(chunk), sub_batch):
                alone.encode(chunk[start : start + sub_batch])

    def engine_chunk() -> None:
        for chunk in chunks:
            alone.encode(chunk)

    rates = best_rates(
        {
            "chunk runner": run_chunks,
            "engine, sub-batch windows": engine_windows,
            "engine, one window per chunk": engine_chunk,
        },
        len(texts),
        args.rounds,
    )
    ratio = rates["chunk runner"] / rates["engine, sub-batch windows"]
    rows = [[name, rate] for name, rate in rates.items()]
    title = (
        f"chunk runner (in-process chunks: no Pub/Sub, no Firestore) vs the engine alone, "
        f"{len(texts)} one-text items in chunks of {size}, sub-batch {sub_batch}, texts/s "
        f"({device})"
    )
    print_table(title, ["path", "texts/s"], rows)
    print(f"chunk runner ÷ engine in the same windows: {ratio:.2f}")
    return {"rates": rates, "sub_batch": sub_batch, "ratio": ratio}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--fp16", action="store_true", help="fp16 weights (CUDA only)")
    parser.add_argument("--texts", type=int, default=1024)
    parser.add_argument("--batches", default="32,128,512")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--chunks", action="store_true", help="the chunk runner mode")
    parser.add_argument("--chunk-items", type=int, default=1000)
    parser.add_argument("--sub-batch", type=int, default=0)
    args = parser.parse_args()
    if args.fp16 and args.device != "cuda":
        parser.error("--fp16 needs --device cuda")
    args.batches = [int(b) for b in args.batches.split(",") if b]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    import torch

    torch.set_num_threads(args.threads)
    setup = {
        **device_summary(),
        "torch_threads": args.threads,
        "fp16": args.fp16,
        "texts": args.texts,
        "rounds": args.rounds,
    }
    print(json.dumps(setup))
    mode = "chunks" if args.chunks else "encode"
    measured = chunk_rates(args) if args.chunks else encode_rates(args)
    suffix = "-cuda" if args.device == "cuda" else ""
    save(f"engine-{mode}{suffix}", {"setup": setup, **measured})


if __name__ == "__main__":
    main()
