"""How should a batch count its items? A measurement for the batches issue, on the emulator.

    python -m bench.batch_counts [--items 10000,100000] [--shards 16] [--writers 8]

Two candidates for exact ``counts`` while many workers finish items at once:

- **aggregation**: no counter at all; ``count()`` over the batch's jobs, one query per status.
  Exact by construction (it reads the jobs), costs a query per status per read.
- **sharded counters**: each job transition also increments ``counts.<status>`` on one of S shard
  documents of its batch (``Increment``, in the same commit as the transition, so it is exactly
  once under the state machine's fencing). A read sums S small documents.

For each batch size it times: writing the jobs; reading the counts both ways; and the transition
throughput of W concurrent writers moving jobs queued → succeeded in commits of 32 (as the worker's
``end_many`` does), without and with the shard increments. One shared document incremented by every
transition is not a candidate: production Firestore sustains about one write a second on a
document (DESIGN-NOTES), whatever the emulator allows.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from bench.common import print_table, save
from emulators.process import running_emulators

PROJECT = "omni-bench-counts"
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
COMMIT = 32
WRITE_CHUNK = 500


def write_jobs(db: Any, batch_id: str, items: int) -> float:
    """``items`` queued jobs of one batch, in parallel commits of 500; seconds taken."""
    now = datetime.now(UTC)
    started = time.perf_counter()

    def chunk(start: int) -> None:
        writes = db.batch()
        for index in range(start, min(start + WRITE_CHUNK, items)):
            ref = db.collection("jobs").document(f"{batch_id}-{index:06d}")
            writes.set(ref, {"batch_id": batch_id, "index": index, "status": "queued", "at": now})
        writes.commit()

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(chunk, range(0, items, WRITE_CHUNK)))
    return time.perf_counter() - started


def count_by_aggregation(db: Any, batch_id: str) -> dict[str, int]:
    from google.cloud.firestore_v1.base_query import FieldFilter

    jobs = db.collection("jobs").where(filter=FieldFilter("batch_id", "==", batch_id))
    counts = {}
    for status in STATUSES:
        query = jobs.where(filter=FieldFilter("status", "==", status)).count()
        counts[status] = int(query.get()[0][0].value)
    return counts


def count_by_shards(db: Any, batch_id: str, shards: int) -> dict[str, int]:
    refs = [db.collection("batch-shards").document(f"{batch_id}-{s}") for s in range(shards)]
    counts = dict.fromkeys(STATUSES, 0)
    for snapshot in db.get_all(refs):
        for status, n in ((snapshot.to_dict() or {}).get("counts") or {}).items():
            counts[status] += int(n)
    return counts


def transitions(
    db: Any, batch_id: str, indices: list[int], writers: int, shards: int | None
) -> float:
    """Move the jobs queued → succeeded, ``writers`` threads, commits of 32; jobs a second."""
    from google.cloud.firestore import Increment

    chunks = [indices[i : i + COMMIT] for i in range(0, len(indices), COMMIT)]
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                if not chunks:
                    return
                chunk = chunks.pop()
            writes = db.batch()
            for index in chunk:
                ref = db.collection("jobs").document(f"{batch_id}-{index:06d}")
                writes.update(ref, {"status": "succeeded"})
            if shards:
                # One shard per commit, picked at random: the commit's transitions counted once.
                shard = db.collection("batch-shards").document(
                    f"{batch_id}-{random.randrange(shards)}"
                )
                writes.set(
                    shard,
                    {
                        "counts": {
                            "queued": Increment(-len(chunk)),
                            "succeeded": Increment(len(chunk)),
                        }
                    },
                    merge=True,
                )
            writes.commit()

    started = time.perf_counter()
    threads = [threading.Thread(target=work) for _ in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(indices) / (time.perf_counter() - started)


def seed_shards(db: Any, batch_id: str, shards: int, items: int) -> None:
    writes = db.batch()
    for s in range(shards):
        queued = items // shards + (1 if s < items % shards else 0)
        writes.set(
            db.collection("batch-shards").document(f"{batch_id}-{s}"),
            {"counts": {**dict.fromkeys(STATUSES, 0), "queued": queued}},
        )
    writes.commit()


def timed(fn: Any, rounds: int = 5) -> tuple[float, Any]:
    values, result = [], None
    for _ in range(rounds):
        started = time.perf_counter()
        result = fn()
        values.append((time.perf_counter() - started) * 1000)
    return statistics.median(values), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", default="10000,100000")
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--moved", type=int, default=4000, help="transitions timed per design")
    args = parser.parse_args()

    rows, results = [], []
    with running_emulators(PROJECT) as (_pubsub, firestore_emulator):
        os.environ["FIRESTORE_EMULATOR_HOST"] = firestore_emulator.address
        from google.cloud import firestore

        db = firestore.Client(project=PROJECT)
        for items in (int(n) for n in args.items.split(",")):
            batch_id = f"b{items}"
            write_s = write_jobs(db, batch_id, items)
            seed_shards(db, batch_id, args.shards, items)
            moved = min(args.moved, items // 2)
            plain = transitions(db, batch_id, list(range(moved)), args.writers, None)
            sharded = transitions(
                db, batch_id, list(range(moved, 2 * moved)), args.writers, args.shards
            )
            # Plain transitions moved jobs without counting them: the shards miss those.
            agg_ms, agg = timed(lambda b=batch_id: count_by_aggregation(db, b))
            shard_ms, shard = timed(lambda b=batch_id: count_by_shards(db, b, args.shards))
            exact = agg["succeeded"] == 2 * moved and shard["succeeded"] == moved
            result = {
                "items": items,
                "write_jobs_s": write_s,
                "jobs_per_s_written": items / write_s,
                "aggregation_read_ms": agg_ms,
                "shards_read_ms": shard_ms,
                "transitions_per_s_plain": plain,
                "transitions_per_s_sharded": sharded,
                "aggregation_counts": agg,
                "shard_counts": shard,
                "exact": exact,
            }
            results.append(result)
            rows.append(
                [
                    items,
                    f"{items / write_s:,.0f}",
                    agg_ms,
                    shard_ms,
                    plain,
                    sharded,
                    f"{sharded / plain:.2f}",
                    "yes" if exact else "NO",
                ]
            )
    print_table(
        f"Batch counts on the Firestore emulator ({args.shards} shards, {args.writers} writers, "
        f"commits of {COMMIT})",
        [
            "items",
            "jobs written/s",
            "count() ×5 ms",
            "shards read ms",
            "transitions/s plain",
            "transitions/s + shard",
            "ratio",
            "exact",
        ],
        rows,
    )
    save("batch_counts", {"shards": args.shards, "writers": args.writers, "results": results})


if __name__ == "__main__":
    main()
