"""End-to-end latency of one ``embed`` job against the model call alone, measured in one run.

Starts the whole local stack (emulators, one worker, gunicorn) on free ports, runs warm-up jobs,
then N sequential jobs, each timed from the client's POST to the moment its GET first shows the job
finished. Then loads the same model in this process and times the same input N times. Prints a
table; writes bench/results/e2e_latency.json.

    .venv/bin/python -m bench.e2e_latency [--jobs 20] [--poll-ms 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import datetime
from typing import Any

import requests

from bench.common import KEYS, RESULTS, stack

TEXTS = ["a cat", "a kitten", "the stock market"]
KEY = KEYS["bench"]
WARMUP_JOBS = 3


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def one_job(url: str, poll_s: float) -> dict[str, float]:
    headers = {"X-API-Key": KEY}
    started = time.perf_counter()
    response = requests.post(
        f"{url}/v1/jobs",
        headers=headers,
        timeout=30,
        json={"task": "embed", "input": {"texts": TEXTS}},
    )
    response.raise_for_status()
    accepted = time.perf_counter()
    location = url + response.headers["Location"]
    while True:
        job: dict[str, Any] = requests.get(location, headers=headers, timeout=30).json()
        if job["status"] in ("succeeded", "failed"):
            break
        time.sleep(poll_s)
    finished = time.perf_counter()
    if job["status"] != "succeeded":
        raise RuntimeError(f"job failed: {job.get('error')}")
    return {
        "e2e_ms": (finished - started) * 1000,
        "post_ms": (accepted - started) * 1000,
        "queued_ms": (_ts(job["started_at"]) - _ts(job["created_at"])).total_seconds() * 1000,
        "running_ms": (_ts(job["finished_at"]) - _ts(job["started_at"])).total_seconds() * 1000,
    }


def model_alone(n: int) -> list[float]:
    from schemas.tasks.embed import EmbedInput
    from worker.attempts import StopToken
    from worker.settings import WorkerSettings
    from worker.tasks.embed import EmbedAdapter

    settings = WorkerSettings.from_env({})
    adapter = EmbedAdapter(device="cpu", threads=settings.torch_threads)
    adapter.load()
    item = EmbedInput(texts=TEXTS)
    never = StopToken(timeout_s=3600)
    for _ in range(WARMUP_JOBS):
        adapter.run([item], never)
    times = []
    for _ in range(n):
        started = time.perf_counter()
        adapter.run([item], never)
        times.append((time.perf_counter() - started) * 1000)
    return times


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median": statistics.median(ordered),
        "p90": ordered[max(0, int(len(ordered) * 0.9) - 1)],
        "min": ordered[0],
        "max": ordered[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--poll-ms", type=float, default=5.0)
    args = parser.parse_args()

    results_dir = RESULTS
    with stack("embed", "e2e_latency") as config:
        for _ in range(WARMUP_JOBS):
            one_job(config.url, args.poll_ms / 1000)
        runs = [one_job(config.url, args.poll_ms / 1000) for _ in range(args.jobs)]
    model_ms = model_alone(args.jobs)

    table = {key: summary([run[key] for run in runs]) for key in runs[0]}
    table["model_call_ms"] = summary(model_ms)
    e2e, model = table["e2e_ms"]["median"], table["model_call_ms"]["median"]
    print(
        f"\nembed, {len(TEXTS)} short texts, {args.jobs} sequential jobs, poll every "
        f"{args.poll_ms:g} ms (ms)"
    )
    print(f"{'measure':<16}{'median':>10}{'p90':>10}{'min':>10}{'max':>10}")
    for name, row in table.items():
        print(f"{name:<16}" + "".join(f"{row[k]:>10.1f}" for k in ("median", "p90", "min", "max")))
    print(
        f"\npipeline overhead (median e2e - median model): {e2e - model:.1f} ms; "
        f"e2e / model = {e2e / model:.1f}x"
    )
    (results_dir / "e2e_latency.json").write_text(
        json.dumps(
            {
                "jobs": args.jobs,
                "poll_ms": args.poll_ms,
                "texts": TEXTS,
                "table": table,
                "overhead_ms": e2e - model,
                "ratio": e2e / model,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
