"""Fairness: how long a small tenant's batch and single jobs wait behind a large batch of another
tenant, with the batch window (``BATCH_WINDOW_CHUNKS``, docs/scheduling.md) and without it (a
window larger than any batch: every chunk published at once, as before windows), measured in one
run on the whole local stack (emulators, one embed worker, gunicorn).

Tenant ``bench`` submits a large batch; right after, tenant ``burst`` submits a small batch and a
few single jobs. Times are from the small tenant's submission; "large done" is how much of the large
batch had finished when the small batch ended; each batch's ETA is its ``progress.eta_s`` read right
after its submission (schemas/eta.py), to set against the time it took. Prints a table; writes
bench/results/fairness.json.

    .venv/bin/python -m bench.fairness [--large-chunks 48] [--chunk 64] [--small-chunks 2]
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from bench.common import KEYS, print_table, save, sentence, stack
from ingress.estimates import CACHE_S
from worker.rates import REPORT_S

BIG, SMALL = {"X-API-Key": KEYS["bench"]}, {"X-API-Key": KEYS["burst"]}
JOBS = 5
NO_WINDOW = 1_000_000


def batch(url: str, headers: dict[str, str], items: int, tag: str) -> str:
    body = {"task": "embed", "items": [{"texts": [f"{tag} {sentence(n)}"]} for n in range(items)]}
    answer = requests.post(f"{url}/v1/batches", json=body, headers=headers, timeout=60)
    answer.raise_for_status()
    return str(answer.json()["id"])


def job(url: str, n: int, tag: str) -> str:
    body = {"task": "embed", "input": {"texts": [f"{tag} job {n}"]}, "cache": False}
    answer = requests.post(f"{url}/v1/jobs", json=body, headers=SMALL, timeout=30)
    answer.raise_for_status()
    return str(answer.json()["id"])


def get(url: str, path: str, headers: dict[str, str]) -> dict[str, Any]:
    body: dict[str, Any] = requests.get(f"{url}{path}", headers=headers, timeout=30).json()
    return body


def one_run(window: int, large_chunks: int, chunk: int, small_chunks: int) -> dict[str, Any]:
    env = {"BATCH_WINDOW_CHUNKS": str(window), "CHUNK_ITEMS_EMBED": str(chunk)}
    tag = f"w{window}"
    with stack("embed", f"fairness-{window}", **env) as config:
        url = config.url
        for n in range(3):  # warm the model and the path
            job(url, n, f"warm {tag}")
        warm = batch(url, BIG, chunk, f"warm {tag}")
        while get(url, f"/v1/batches/{warm}", BIG)["status"] == "running":
            time.sleep(0.1)
        time.sleep(
            REPORT_S + CACHE_S + 1
        )  # the worker has reported its rates, the ingress read them
        large = batch(url, BIG, large_chunks * chunk, f"large {tag}")
        large_eta = (get(url, f"/v1/batches/{large}", BIG).get("progress") or {}).get("eta_s")
        started = time.monotonic()
        small = batch(url, SMALL, small_chunks * chunk, f"small {tag}")
        small_eta = (get(url, f"/v1/batches/{small}", SMALL).get("progress") or {}).get("eta_s")
        with ThreadPoolExecutor(JOBS) as pool:
            jobs = list(pool.map(lambda n: job(url, n, tag), range(JOBS)))
        job_done: dict[str, float] = {}
        small_done = large_at_small = large_done = None
        while large_done is None or small_done is None:
            now = time.monotonic() - started
            large_counts = get(url, f"/v1/batches/{large}", BIG)
            for job_id in jobs:
                finished = job_id in job_done
                if not finished and get(url, f"/v1/jobs/{job_id}", SMALL)["status"] == "succeeded":
                    job_done[job_id] = now
            if (
                small_done is None
                and get(url, f"/v1/batches/{small}", SMALL)["status"] != "running"
            ):
                small_done = now
                large_at_small = large_counts["counts"]["succeeded"] / (large_chunks * chunk)
            if large_done is None and large_counts["status"] != "running":
                large_done = now
            time.sleep(0.05)
    waits = sorted(job_done.values())
    return {
        "window": window,
        "small_batch_s": small_done,
        "small_jobs_p50_s": waits[len(waits) // 2],
        "small_jobs_max_s": waits[-1],
        "large_done_at_small_end": large_at_small,
        "large_batch_s": large_done,
        "small_eta_s": small_eta,
        "large_eta_s": large_eta,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large-chunks", type=int, default=48)
    parser.add_argument("--chunk", type=int, default=64, help="items per chunk (CHUNK_ITEMS_EMBED)")
    parser.add_argument("--small-chunks", type=int, default=2)
    parser.add_argument("--window", type=int, default=8, help="BATCH_WINDOW_CHUNKS with windows")
    args = parser.parse_args()
    runs = [
        one_run(window, args.large_chunks, args.chunk, args.small_chunks)
        for window in (args.window, NO_WINDOW)
    ]
    print_table(
        f"large batch {args.large_chunks * args.chunk} items, then a small one of "
        f"{args.small_chunks * args.chunk} items and {JOBS} single jobs of another tenant "
        f"(chunks of {args.chunk}; seconds from the small tenant's submission)",
        [
            "window",
            "small batch s",
            "(its ETA)",
            "jobs p50 s",
            "jobs max s",
            "large done then",
            "large s",
            "(its ETA)",
        ],
        [
            [
                "none" if r["window"] == NO_WINDOW else f"{r['window']} chunks",
                r["small_batch_s"],
                r["small_eta_s"] or "-",
                r["small_jobs_p50_s"],
                r["small_jobs_max_s"],
                f"{r['large_done_at_small_end']:.0%}",
                r["large_batch_s"],
                r["large_eta_s"] or "-",
            ]
            for r in runs
        ],
    )
    save("fairness", {"args": vars(args), "runs": runs})


if __name__ == "__main__":
    main()
