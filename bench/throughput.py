"""Each model's raw in-process throughput next to the same work through the whole pipeline.

For every task: the worker's own adapter called in this process at several batch sizes (the
ceiling), then the same inputs through ingress → Pub/Sub → worker → Firestore, on a local stack
whose one worker serves that task alone (``WORKER_TASKS``: a task pool, as deployed). For
``embed``: raw batches of 1, 8 and 32; the pipeline with 1, 4 and 16 closed-loop clients and a
burst of 5,000 jobs queued while the worker is paused, then drained. Other tasks: raw at 1 and
their batch size, and a drained burst. The ratio is the pipeline's jobs/s over the raw jobs/s at
the worker's batch size, measured in the same run. Closed-loop latency is submit → the job's
document shows it finished (a Firestore listener); burst latency is created_at → finished_at.

Runs unchanged on a CUDA machine (torch and TensorFlow take the GPU; the device is printed).

    .venv/bin/python -m bench.throughput [--tasks embed,entities] [--burst 5000] [--seconds 20]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from bench.common import (
    build_predict_model,
    burst,
    clear_tenant,
    closed_loop,
    device_summary,
    load_adapter,
    print_table,
    quiet_model_logs,
    raw_items_per_s,
    save,
    stack,
    temp_repository,
    worker_state,
)
from worker.settings import BATCHING

ALL_TASKS = ("embed", "similar", "entities", "predict", "forecast")
RAW_ITEMS = {"embed": 512, "similar": 256, "entities": 512, "predict": 2048, "forecast": 12}
BURSTS = {"similar": 1000, "entities": 2000, "predict": 2000, "forecast": 60}


def raw_table(task: str, repository: str) -> dict[int, float]:
    adapter = load_adapter(task, repository)
    largest = BATCHING[task][0]
    sizes = (1, 8, 32) if task == "embed" else tuple(sorted({1, largest}))
    return {size: raw_items_per_s(adapter, task, size, RAW_ITEMS[task]) for size in sizes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(ALL_TASKS))
    parser.add_argument("--burst", type=int, default=5000, help="embed burst size")
    parser.add_argument("--seconds", type=float, default=20.0, help="per closed-loop run")
    parser.add_argument("--clients", default="1,4,16")
    args = parser.parse_args()
    tasks = [t for t in args.tasks.split(",") if t]
    clients = [int(c) for c in args.clients.split(",")]
    quiet_model_logs()
    device = device_summary()
    print(f"device: {device}")

    results: dict[str, Any] = {"device": device, "tasks": {}}
    rows = []
    with temp_repository() as repository:
        build_predict_model(Path(repository))
        for task in tasks:
            raw = raw_table(task, repository)
            largest = BATCHING[task][0]
            baseline = raw[max(s for s in raw if s <= max(largest, 1))]
            entry: dict[str, Any] = {"raw_jobs_per_s": raw, "pipeline": {}}
            for size, rate in raw.items():
                rows.append([task, f"raw, batch {size}", rate, "", "", ""])
            started = time.perf_counter()
            with stack(task, f"throughput-{task}", MODEL_REPOSITORY=repository) as config:
                entry["worker_ready_s"] = round(time.perf_counter() - started, 1)
                if task == "embed":
                    for n in clients:
                        run = closed_loop(config, task, n, args.seconds)
                        entry["pipeline"][f"{n} clients"] = run
                        rows.append(
                            [
                                task,
                                f"pipeline, {n} client(s)",
                                run["jobs_per_s"],
                                run["p50_ms"],
                                run["p99_ms"],
                                f"{run['jobs_per_s'] / baseline:.2f}",
                            ]
                        )
                    clear_tenant("bench")
                jobs = args.burst if task == "embed" else BURSTS[task]
                run = burst(config, task, jobs)
                entry["pipeline"][f"burst {jobs}"] = run
                rows.append(
                    [
                        task,
                        f"pipeline, burst {jobs} (drain)",
                        run["drain_per_s"],
                        run["p50_ms"],
                        run["p99_ms"],
                        f"{run['drain_per_s'] / baseline:.2f}",
                    ]
                )
                rows.append(
                    [
                        task,
                        f"  (mean batch {run['mean_batch']:.1f}; ingress took the burst at)",
                        run["submit_per_s"],
                        "",
                        "",
                        "",
                    ]
                )
                state = worker_state(config)
                entry["worker"] = {
                    "rss_mb": state.get("rss_mb"),
                    "load_s": state["tasks"][task]["load_s"],
                    "device": state["tasks"][task]["device"],
                }
            entry["baseline_jobs_per_s"] = baseline
            results["tasks"][task] = entry
    print_table(
        f"Throughput, jobs/s (one input per job), device {device['torch_device']}, "
        f"{device['cpus']} CPUs; ratio = pipeline / raw at the worker's batch size",
        ["task", "how", "jobs/s", "p50 ms", "p99 ms", "ratio"],
        rows,
    )
    save("throughput", results)


if __name__ == "__main__":
    main()
