"""The worker's own cost per item, with the worker pinned alone to one core (issue 17's method).

On 2 cores the Firestore emulator's JVM takes half a core or more while a worker drains, so a
whole-machine ratio mixes the worker's cost with the emulator's. Here:

1. this process, and so every part of the local stack it starts (emulators, ingress, reconciler,
   one worker serving only ``embed``), runs on the stack's CPU (``--stack-cpu``, default 1), with
   ``TORCH_THREADS=1``;
2. every thread of the worker moves to its own CPU (``--worker-cpu``, default 0):
   ``taskset -a -p -c 0 PID``;
3. per mode, on a stack of its own, with the worker stopped (SIGSTOP): N items are queued —
   single jobs (``POST /v1/jobs``, one text each) or batch items (one NDJSON batch, one text a
   line) — and, meanwhile, the worker's own adapter is measured in a child pinned to the
   worker's CPU with one torch thread at the worker's batch size (the raw rate, and the model's
   CPU ms per item);
4. the worker resumes (SIGCONT) and drains the backlog. The drain is read from the documents' own
   times (jobs: first ``started_at`` to last ``finished_at``; a batch: its chunks' first claim to
   their last commit), not from a poller; the worker's CPU per thread from
   ``/proc/PID/task/*/stat`` (utime + stime) before and after, named with ``py-spy dump`` when
   py-spy is installed (``.venv/bin/pip install py-spy``; Python threads are all ``python`` to the
   OS), else by the OS's thread names.

    .venv/bin/python -m bench.worker_cpu [--jobs 2000] [--items 20000] [--modes jobs,batch]
        [--worker-tasks embed|all]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from bench.common import (
    CLOCK_TICKS,
    KEYS,
    TERMINAL,
    _ts,
    chunk_drain,
    print_table,
    process_cpu_s,
    py_spy,
    python_thread_names,
    quiet_model_logs,
    save,
    sentence,
    split_cpu,
    stack,
    task_input,
    threads_cpu_s,
    worker_state,
)
from emulators.localrun import StackConfig

GOALS = {"jobs": (0.7, 2.0), "batch": (0.9, 0.2)}
"""Per mode: (drain ÷ raw at least, worker CPU beyond the model per item at most, ms)."""
RAW_ITEMS = 1024
RAW_ROUNDS = 3
SUBMITTERS = 16


# -- the raw adapter, in a pinned child --------------------------------------------------------
def raw_child(batch: int, packed: bool) -> None:
    """Run in the child: the worker's embed adapter on this CPU, one torch thread; prints JSON."""
    from bench.common import load_adapter
    from schemas.tasks import get_task
    from worker.attempts import StopToken

    adapter = load_adapter("embed", None)
    spec = get_task("embed")
    inputs = [spec.input_model.model_validate(task_input("embed", i)) for i in range(RAW_ITEMS)]
    # The chunk path calls run_packed (vectors straight to float32 bytes) where the adapter has
    # it; single jobs call run.
    run = adapter.run_packed if packed and hasattr(adapter, "run_packed") else adapter.run
    never = StopToken(3600)
    run(inputs[:batch], never)  # warm-up
    best = (0.0, 0.0)
    for _ in range(RAW_ROUNDS):  # the best round: the ceiling
        wall, cpu = time.perf_counter(), time.process_time()
        for start in range(0, RAW_ITEMS, batch):
            run(inputs[start : start + batch], never)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if RAW_ITEMS / wall > best[0]:
            best = (RAW_ITEMS / wall, cpu * 1000 / RAW_ITEMS)
    print(json.dumps({"items_per_s": best[0], "cpu_ms_per_item": best[1], "packed": packed}))


def raw_on(cpu: int, batch: int, packed: bool) -> dict[str, Any]:
    argv = ["taskset", "-c", str(cpu), sys.executable, "-m", "bench.worker_cpu"]
    argv += ["--raw-child", str(batch)] + (["--packed"] if packed else [])
    env = {**os.environ, "TORCH_THREADS": "1"}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# -- queueing ----------------------------------------------------------------------------------
def queue_jobs(config: StackConfig, jobs: int) -> dict[str, Any]:
    headers = {"X-API-Key": KEYS["burst"]}

    def submit(indices: range) -> None:
        session = requests.Session()
        for i in indices:
            body = {"task": "embed", "input": task_input("embed", i)}
            response = session.post(f"{config.url}/v1/jobs", json=body, headers=headers, timeout=60)
            response.raise_for_status()

    started = time.perf_counter()
    per = -(-jobs // SUBMITTERS)
    with ThreadPoolExecutor(SUBMITTERS) as pool:
        for future in [
            pool.submit(submit, range(s, min(s + per, jobs))) for s in range(0, jobs, per)
        ]:
            future.result()
    return {"queue_s": time.perf_counter() - started}


def queue_batch(config: StackConfig, items: int) -> dict[str, Any]:
    body = b"".join(b'{"texts": ["%s"]}\n' % sentence(i).encode() for i in range(items))
    started = time.perf_counter()
    response = requests.post(
        f"{config.url}/v1/batches",
        params={"task": "embed"},
        data=body,
        headers={"X-API-Key": KEYS["bench"], "Content-Type": "application/x-ndjson"},
        timeout=600,
    )
    response.raise_for_status()
    return {"queue_s": time.perf_counter() - started, "batch_id": response.json()["id"]}


# -- waiting, from the stack's CPU -------------------------------------------------------------
def wait_jobs(jobs: int, timeout_s: float) -> None:
    """Until ``jobs`` of tenant ``burst`` have ended: a ``count()`` a second, on the emulator."""
    from google.cloud import firestore
    from google.cloud.firestore_v1.base_query import FieldFilter

    query = (
        firestore.Client()
        .collection("jobs")
        .where(filter=FieldFilter("tenant", "==", "burst"))
        .where(filter=FieldFilter("status", "in", list(TERMINAL)))
    )
    deadline = time.monotonic() + timeout_s
    while int(query.count().get()[0][0].value) < jobs:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{jobs} jobs not finished in {timeout_s:g}s")
        time.sleep(1.0)


def wait_batch(config: StackConfig, batch_id: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        batch: dict[str, Any] = requests.get(
            f"{config.url}/v1/batches/{batch_id}", headers={"X-API-Key": KEYS["bench"]}, timeout=30
        ).json()
        if batch["status"] not in ("running", "open"):
            return batch
        if time.monotonic() > deadline:
            raise TimeoutError(f"batch not finished in {timeout_s:g}s: {batch['counts']}")
        time.sleep(1.0)


def jobs_drain() -> dict[str, Any]:
    """Tenant ``burst``'s jobs: first ``started_at`` to last ``finished_at``, mean micro-batch."""
    from google.cloud import firestore
    from google.cloud.firestore_v1.base_query import FieldFilter

    query = (
        firestore.Client()
        .collection("jobs")
        .where(filter=FieldFilter("tenant", "==", "burst"))
        .select(["started_at", "finished_at", "status", "batch_size"])
    )
    docs = [d.to_dict() or {} for d in query.stream()]
    seconds = max(_ts(d["finished_at"]) for d in docs) - min(_ts(d["started_at"]) for d in docs)
    sizes = [int(d.get("batch_size") or 1) for d in docs]
    return {
        "items": len(docs),
        "seconds": seconds,
        "items_per_s": len(docs) / seconds,
        "statuses": sorted({str(d.get("status")) for d in docs}),
        "mean_batch": sum(sizes) / len(sizes),
    }


def cpu_busy_s(cpu: int) -> float:
    """Seconds CPU ``cpu`` has been busy (anyone's work), from ``/proc/stat``: with the worker's
    own CPU time, how much of its core other processes took (pinning keeps the stack off it,
    not the rest of the machine)."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, line.split()[1:9])
            return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS
    raise ValueError(f"no cpu{cpu} in /proc/stat")


# -- one mode ----------------------------------------------------------------------------------
def measure(
    config: StackConfig, pid: int, mode: str, n: int, worker_cpu: int, batch: int
) -> dict[str, Any]:
    names = python_thread_names(pid)
    os.kill(pid, signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(1) as pool:
            # The raw child has the worker's CPU to itself while the worker is stopped; the
            # items are queued on the stack's CPU meanwhile.
            raw_future: Future[dict[str, Any]] = pool.submit(
                raw_on, worker_cpu, batch, mode == "batch"
            )
            queued = queue_jobs(config, n) if mode == "jobs" else queue_batch(config, n)
            raw = raw_future.result()
        before, cpu_before = threads_cpu_s(pid), process_cpu_s(pid)
        busy_before, load_before = cpu_busy_s(worker_cpu), os.getloadavg()[0]
    finally:
        os.kill(pid, signal.SIGCONT)
    timeout_s = 120 + n / 5
    if mode == "jobs":
        wait_jobs(n, timeout_s)
    else:
        wait_batch(config, queued["batch_id"], timeout_s)
    after, cpu_after = threads_cpu_s(pid), process_cpu_s(pid)
    busy = cpu_busy_s(worker_cpu) - busy_before
    names.update(python_thread_names(pid))  # threads started during the drain
    drain = jobs_drain() if mode == "jobs" else chunk_drain(queued["batch_id"])
    worker_s = cpu_after - cpu_before
    return {
        "mode": mode,
        "n": n,
        "queued": queued,
        "raw": raw,
        "drain": drain,
        "worker_cpu_s": worker_s,
        "others_on_worker_cpu_s": max(0.0, busy - worker_s),
        "load_average": (load_before, os.getloadavg()[0]),
        "threads": split_cpu(before, after, names, worker_s),
        "thread_names": "py-spy" if names else "OS",
    }


def idle(pid: int, seconds: float) -> dict[str, Any]:
    """The worker's CPU with nothing to do (streams open, threads waiting), per second: what a
    drain pays for its duration rather than for its items."""
    time.sleep(2.0)  # the move to the worker's CPU settles
    names = python_thread_names(pid)
    before, cpu_before = threads_cpu_s(pid), process_cpu_s(pid)
    time.sleep(seconds)
    after, spent = threads_cpu_s(pid), process_cpu_s(pid) - cpu_before
    return {
        "seconds": seconds,
        "cpu_ms_per_s": spent * 1000 / seconds,
        "threads": split_cpu(before, after, names, spent),
    }


def rows_for(run: dict[str, Any]) -> list[Any]:
    n = run["drain"]["items"]
    worker_ms = run["worker_cpu_s"] * 1000 / n
    model_ms = run["raw"]["cpu_ms_per_item"]
    ratio = run["drain"]["items_per_s"] / run["raw"]["items_per_s"]
    least_ratio, most_ms = GOALS[run["mode"]]
    return [
        "single jobs" if run["mode"] == "jobs" else "batch items",
        f"{n:,}",
        run["drain"]["items_per_s"],
        run["raw"]["items_per_s"],
        f"{ratio:.2f} (≥ {least_ratio})",
        f"{worker_ms:.2f}",
        f"{model_ms:.2f}",
        f"{worker_ms - model_ms:.2f} (≤ {most_ms})",
    ]


def pinned_worker(config: Any, cpu: int) -> tuple[int, int]:
    """The stack's worker moved, every thread of it, to ``cpu``: its pid and batch size."""
    state = worker_state(config)
    pid = int(state["worker"].rsplit("-", 1)[1])
    batch = int(state["tasks"]["embed"]["batch"]["max_size"])
    subprocess.run(
        ["taskset", "-a", "-p", "-c", str(cpu), str(pid)], check=True, capture_output=True
    )
    return pid, batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000, help="single jobs to drain")
    parser.add_argument("--items", type=int, default=20000, help="batch items to drain")
    parser.add_argument("--modes", default="jobs,batch")
    parser.add_argument(
        "--worker-tasks",
        default="embed",
        help="what the worker serves (WORKER_TASKS); all: every task, as make run's worker",
    )
    parser.add_argument("--worker-cpu", type=int, default=0)
    parser.add_argument("--stack-cpu", type=int, default=1)
    parser.add_argument("--idle-s", type=float, default=10.0, help="idle worker sampled for")
    parser.add_argument("--top", type=int, default=8, help="thread groups shown per mode")
    parser.add_argument("--raw-child", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--packed", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw_child:
        quiet_model_logs()
        raw_child(args.raw_child, args.packed)
        return
    cpus = os.sched_getaffinity(0)
    if not {args.worker_cpu, args.stack_cpu} <= cpus or args.worker_cpu == args.stack_cpu:
        raise SystemExit(f"needs two distinct CPUs of {sorted(cpus)}: --worker-cpu, --stack-cpu")
    if py_spy() is None:
        print("py-spy not found (.venv/bin/pip install py-spy): threads get the OS's names")
    # Every child started from here on (the whole stack) inherits the stack's CPU.
    os.sched_setaffinity(0, {args.stack_cpu})
    modes = [m for m in args.modes.split(",") if m]
    results: dict[str, Any] = {"runs": []}
    # Each mode gets a stack of its own: the emulator trickles a mode's messages back for minutes
    # after its drain (redeliveries to the stream the SIGSTOP stalled), and the next mode's worker
    # would pay for claiming and skipping them (0.12 ms per batch item, seen in one shared stack).
    for i, mode in enumerate(modes):
        tasks = "" if args.worker_tasks == "all" else args.worker_tasks
        with stack(tasks, "worker-cpu", TORCH_THREADS="1") as config:
            pid, batch = pinned_worker(config, args.worker_cpu)
            results.update(
                batch_size=batch,
                worker_cpu=args.worker_cpu,
                stack_cpu=args.stack_cpu,
                worker_tasks=args.worker_tasks,
            )
            if i == 0:
                results["idle"] = idle(pid, args.idle_s)
            n = args.jobs if mode == "jobs" else args.items
            results["runs"].append(measure(config, pid, mode, n, args.worker_cpu, batch))
    save("worker_cpu", results)
    print_table(
        f"Worker pinned alone to CPU {args.worker_cpu} (the stack on CPU {args.stack_cpu}), "
        f"serving {args.worker_tasks}; embed, one text per item, TORCH_THREADS=1, "
        f"raw at batch {batch} on the same CPU",
        [
            "mode",
            "N",
            "drain items/s",
            "raw items/s",
            "drain ÷ raw (goal)",
            "worker CPU ms/item",
            "model ms/item",
            "beyond model ms/item (goal)",
        ],
        [rows_for(run) for run in results["runs"]],
    )
    rest = results["idle"]
    top = ", ".join(
        f"{group} {cpu * 1000 / rest['seconds']:.1f}" for group, cpu, _ in rest["threads"][:4]
    )
    print(
        f"\nIdle worker (nothing queued, {rest['seconds']:g} s): {rest['cpu_ms_per_s']:.1f} ms of "
        f"CPU per second ({top}); a drain of D seconds and N items pays about this × D / N per "
        "item whatever it does."
    )
    for run in results["runs"]:
        n = run["drain"]["items"]
        extra = (
            f"mean micro-batch {run['drain']['mean_batch']:.1f}"
            if run["mode"] == "jobs"
            else f"{run['drain']['chunks']} chunks, {run['drain']['attempts']} attempts"
        )
        print_table(
            f"{run['mode']}: worker CPU per thread ({run['thread_names']} names; "
            f"{run['worker_cpu_s']:.1f} s in all; {extra}; ended {run['drain']['statuses']}; "
            f"other processes took {run['others_on_worker_cpu_s']:.1f} s of CPU "
            f"{args.worker_cpu} meanwhile; load average {run['load_average'][0]:.1f} → "
            f"{run['load_average'][1]:.1f})",
            ["thread", "threads", "CPU s", "ms/item", "share"],
            [
                [
                    group,
                    count,
                    seconds,
                    f"{seconds * 1000 / n:.2f}",
                    f"{seconds / run['worker_cpu_s']:.0%}",
                ]
                for group, seconds, count in run["threads"][: args.top]
            ],
        )


if __name__ == "__main__":
    main()
