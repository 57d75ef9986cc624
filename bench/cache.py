"""The result cache: how long a hit takes against the model's path for the same input, measured
in one run on the whole local stack (emulators, one embed worker, gunicorn).

For each of N distinct inputs: the first submission runs the model (timed from the POST until a
GET shows it finished, polling every few ms), the second is answered from the cache (timed: the
POST's round trip, which carries the finished job). Then the same input's model call alone, in this
process. Prints a table; writes bench/results/cache.json.

    .venv/bin/python -m bench.cache [--jobs 30] [--texts 8]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import requests

from bench.common import KEYS, pcts, print_table, save, sentence, stack

KEY = {"X-API-Key": KEYS["bench"]}
WARMUP = 3


def texts(i: int, count: int) -> list[str]:
    return [sentence(i * count + k) for k in range(count)]


def run_and_wait(url: str, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    answer = requests.post(f"{url}/v1/jobs", json=body, headers=KEY, timeout=30)
    if answer.status_code != 202:
        raise RuntimeError(f"expected a queued job, got {answer.status_code}: {answer.text}")
    location = url + answer.headers["Location"]
    while True:
        job: dict[str, Any] = requests.get(location, headers=KEY, timeout=30).json()
        if job["status"] in ("succeeded", "failed"):
            break
        time.sleep(0.005)
    if job["status"] != "succeeded":
        raise RuntimeError(f"job failed: {job.get('error')}")
    return (time.perf_counter() - started) * 1000, job


def hit(url: str, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    answer = requests.post(f"{url}/v1/jobs", json=body, headers=KEY, timeout=30)
    elapsed = (time.perf_counter() - started) * 1000
    if answer.status_code != 200 or not answer.json()["timings"].get("cache_hit"):
        raise RuntimeError(f"expected a cache hit, got {answer.status_code}: {answer.text}")
    job: dict[str, Any] = answer.json()
    return elapsed, job


def model_alone(inputs: list[list[str]]) -> list[float]:
    from schemas.tasks.embed import EmbedInput
    from worker.attempts import StopToken
    from worker.settings import WorkerSettings
    from worker.tasks.embed import EmbedAdapter

    adapter = EmbedAdapter(device="cpu", threads=WorkerSettings.from_env({}).torch_threads)
    adapter.load()
    never = StopToken(timeout_s=3600)
    for item in inputs[:WARMUP]:
        adapter.run([EmbedInput(texts=item)], never)
    times = []
    for item in inputs:
        started = time.perf_counter()
        adapter.run([EmbedInput(texts=item)], never)
        times.append((time.perf_counter() - started) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=30)
    parser.add_argument("--texts", type=int, default=8, help="texts per embed job")
    args = parser.parse_args()
    inputs = [texts(i, args.texts) for i in range(WARMUP + args.jobs)]
    misses, hits = [], []
    with stack("embed", "cache", RESULT_CACHE="on") as config:
        for i, item in enumerate(inputs):
            body = {"task": "embed", "input": {"texts": item}}
            miss_ms, ran = run_and_wait(config.url, body)
            hit_ms, cached = hit(config.url, body)
            if cached["result"] != ran["result"]:
                raise RuntimeError("a hit answered other vectors than the run")
            if i >= WARMUP:
                misses.append(miss_ms)
                hits.append(hit_ms)
    model = model_alone(inputs)[WARMUP:]
    table = {"model call alone": pcts(model), "miss (POST to finished)": pcts(misses)}
    table["hit (POST answered)"] = pcts(hits)
    print_table(
        f"embed, {args.texts} texts a job, {args.jobs} distinct inputs, each sent twice (ms)",
        ["measure", "p50", "p99"],
        [[name, row["p50_ms"], row["p99_ms"]] for name, row in table.items()],
    )
    ratio = table["model call alone"]["p50_ms"] / table["hit (POST answered)"]["p50_ms"]
    print(f"\nmedian hit is {ratio:.1f}x faster than the model call alone")
    save("cache", {"jobs": args.jobs, "texts": args.texts, "table": table, "ratio": ratio})


if __name__ == "__main__":
    main()
