"""What the benchmarks share: inputs per task, the raw in-process model, a local stack per task
pool, closed-loop clients, bursts, and printing tables. Every bench measures its baseline in the
same run as the thing it compares."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

from emulators.localrun import ROOT, StackConfig, local_stack
from emulators.process import free_port

RESULTS = ROOT / "bench" / "results"
TERMINAL = ("succeeded", "failed", "cancelled")
KEYS = {"bench": "bench-key-0123", "burst": "burst-key-0123"}
ROUNDS = 3


def wait_until(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(0.2)


# -- inputs --------------------------------------------------------------------------------------
def sentence(i: int) -> str:
    subjects = ("The harbour", "A quiet train", "Her old laptop", "The city council", "This recipe")
    verbs = ("surprised", "delayed", "outlived", "approved", "changed")
    objects = ("everyone in town", "the morning commuters", "three new phones", "the budget")
    return f"{subjects[i % 5]} {verbs[(i // 5) % 5]} {objects[(i // 25) % 4]} on day {i}."


def task_input(task: str, i: int) -> dict[str, Any]:
    """The i-th job input of a task, small and realistic."""
    if task == "embed":
        return {"texts": [sentence(i)]}
    if task == "similar":
        return {"query": sentence(i), "documents": [sentence(i + k) for k in range(1, 9)]}
    if task == "entities":
        return {"text": f"Angela Merkel met Emmanuel Macron in Paris on day {i} of the summit."}
    if task == "forecast":
        days = [f"2026-{1 + d // 28:02d}-{1 + d % 28:02d}" for d in range(56)]
        return {
            "series": [{"ds": day, "y": 10 + (d % 7) + (i % 3)} for d, day in enumerate(days)],
            "horizon": 7,
            "frequency": "D",
        }
    if task == "predict":
        return {"model": "bench-mlp", "instances": [[((i + k) % 17) / 17 for k in range(32)]]}
    raise ValueError(task)


def build_predict_model(repository: Path) -> None:
    """A small Keras MLP saved as version 1 of ``bench-mlp`` (in a child: keeps TF out of here
    until the raw measurement loads it through the worker's own adapter)."""
    code = f"""
import os
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras
model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(256, activation="relu"),
                          keras.layers.Dense(256, activation="relu"), keras.layers.Dense(10)])
folder = {str(repository)!r} + "/bench-mlp/1"
os.makedirs(folder, exist_ok=True)
model.save(folder + "/model.keras")
"""
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


# -- the model alone -----------------------------------------------------------------------------
def quiet_model_logs() -> None:
    """The bench prints tables; the model libraries' own chatter goes nowhere."""
    import logging

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for name in ("cmdstanpy", "prophet", "sentence_transformers", "tensorflow", "absl"):
        logging.getLogger(name).setLevel(logging.WARNING)


def load_adapter(task: str, model_repository: str | None) -> Any:
    from worker.settings import WorkerSettings
    from worker.tasks import ADAPTERS

    env = dict(os.environ)
    if model_repository:
        env["MODEL_REPOSITORY"] = model_repository
    adapter = ADAPTERS[task](WorkerSettings.from_env(env))
    adapter.load()
    quiet_model_logs()  # again: some libraries set their loggers up on load
    return adapter


def raw_items_per_s(adapter: Any, task: str, batch: int, items: int) -> float:
    """The adapter's own throughput, in jobs per second, called with ``batch`` jobs at a time."""
    from schemas.tasks import get_task
    from worker.attempts import StopToken

    spec = get_task(task)
    inputs = [spec.input_model.model_validate(task_input(task, i)) for i in range(items)]
    never = StopToken(3600)
    adapter.run(inputs[:batch], never)  # warm-up
    best = 0.0
    for _ in range(ROUNDS):  # the best round: the model's ceiling on a machine shared with others
        started = time.perf_counter()
        for start in range(0, items, batch):
            adapter.run(inputs[start : start + batch], never)
        best = max(best, items / (time.perf_counter() - started))
    return best


# -- the pipeline --------------------------------------------------------------------------------
@contextlib.contextmanager
def stack(tasks: str, log_name: str, workers: int = 1, **env: str) -> Iterator[StackConfig]:
    """The whole local pipeline with one worker pool serving ``tasks`` (``WORKER_TASKS``);
    ``workers=0`` starts none (nothing runs what the ingress accepts)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    config = StackConfig(
        project="omni-bench",
        workers=workers,
        port=free_port(),
        pubsub_port=free_port(),
        firestore_port=free_port(),
        worker_http_port=free_port(),
        deadletter_port=free_port(),
        api_keys=",".join(f"{tenant}:{key}" for tenant, key in KEYS.items()),
    )
    saved = dict(os.environ)
    # The result cache off unless a bench asks for it (bench/cache.py): the others time the
    # model's path, and several send the same input again and again.
    os.environ.update({"WORKER_TASKS": tasks, "LOG_LEVEL": "WARNING", "RESULT_CACHE": "off", **env})
    try:
        with (RESULTS / f"{log_name}.stack.log").open("w") as log, local_stack(config, log):
            os.environ["FIRESTORE_EMULATOR_HOST"] = f"{config.host}:{config.firestore_port}"
            os.environ["GOOGLE_CLOUD_PROJECT"] = config.project
            yield config
    finally:
        os.environ.clear()
        os.environ.update(saved)


def worker_state(config: StackConfig) -> dict[str, Any]:
    url = f"http://{config.host}:{config.worker_http_port}/readyz"
    body: dict[str, Any] = requests.get(url, timeout=10).json()
    return body


def run_clients(clients: int, seconds: float, one_job: Any) -> dict[str, Any]:
    """``clients`` threads, each calling ``one_job(i)`` (submit a job, wait for its result) in a
    loop for ``seconds``: jobs/s and the latency percentiles of the calls."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds
    counter = itertools.count()

    def client() -> None:
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            one_job(next(counter))
            with lock:
                latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result()
    elapsed = time.perf_counter() - started
    return {"jobs": len(latencies), "jobs_per_s": len(latencies) / elapsed, **pcts(latencies)}


def closed_loop(config: StackConfig, task: str, clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` clients, each submitting a job and waiting for it (a Firestore listener on
    the job's document tells it the moment it ends, as the event stream will), for ``seconds``."""
    from google.cloud import firestore

    db = firestore.Client()
    local = threading.local()
    headers = {"X-API-Key": KEYS["bench"]}

    def one_job(i: int) -> None:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        response = local.session.post(
            f"{config.url}/v1/jobs",
            json={"task": task, "input": task_input(task, i)},
            headers=headers,
            timeout=30,
        )
        response.raise_for_status()
        done = threading.Event()

        def seen(snapshots: list[Any], _changes: Any, _read_time: Any) -> None:
            if any(s.exists and s.get("status") in TERMINAL for s in snapshots):
                done.set()

        watch = db.collection("jobs").document(response.json()["id"]).on_snapshot(seen)
        finished = done.wait(120)
        watch.unsubscribe()
        if not finished:
            raise RuntimeError("a job did not finish within 120 s")

    return run_clients(clients, seconds, one_job)


def burst(
    config: StackConfig, task: str, jobs: int, submitters: int = 16, backlog: bool = True
) -> dict[str, Any]:
    """Submit ``jobs`` jobs as fast as ``submitters`` clients can, then wait for all of them.

    With ``backlog``, the worker is paused (SIGSTOP) while the jobs are submitted and resumed
    once all are queued, so it drains a real backlog instead of keeping pace with the submitters
    (the ingress on this machine accepts fewer jobs a second than the worker can finish).
    ``drain_per_s`` is the worker's rate: jobs over (last finished - first started), from the
    jobs' own timestamps; ``e2e_per_s`` counts from the first POST to the last result."""
    import signal

    from google.cloud import firestore
    from google.cloud.firestore_v1.base_query import FieldFilter

    db = firestore.Client()
    headers = {"X-API-Key": KEYS["burst"]}
    state = worker_state(config)
    worker_pid = int(state["worker"].rsplit("-", 1)[1])
    ran_before = state["tasks"][task]["jobs"]
    if backlog:
        os.kill(worker_pid, signal.SIGSTOP)
    first_post = time.time()

    def submit(indices: range) -> None:
        session = requests.Session()
        for i in indices:
            body = {"task": task, "input": task_input(task, i)}
            response = session.post(f"{config.url}/v1/jobs", json=body, headers=headers, timeout=30)
            response.raise_for_status()

    per = -(-jobs // submitters)
    with ThreadPoolExecutor(submitters) as pool:
        chunks = [range(s, min(s + per, jobs)) for s in range(0, jobs, per)]
        try:
            for future in [pool.submit(submit, chunk) for chunk in chunks]:
                future.result()
        finally:
            if backlog:
                os.kill(worker_pid, signal.SIGCONT)
    submitted_s = time.time() - first_post
    query = db.collection("jobs").where(filter=FieldFilter("tenant", "==", "burst"))
    deadline = time.monotonic() + 60 + jobs / 5
    # Follow the worker's own count first: a query over thousands of documents every few
    # hundred ms would cost the Firestore emulator the CPU the worker needs.
    while worker_state(config)["tasks"][task]["jobs"] - ran_before < jobs:
        if time.monotonic() > deadline:
            break
        time.sleep(0.25)
    while True:
        done = query.where(filter=FieldFilter("status", "in", list(TERMINAL))).count().get()
        if int(done[0][0].value) >= jobs:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"burst: only {int(done[0][0].value)} of {jobs} finished")
        time.sleep(1.0)
    docs = [d.to_dict() or {} for d in query.stream()]
    statuses = {doc["status"] for doc in docs}
    started = min(_ts(d["started_at"]) for d in docs)
    finished = max(_ts(d["finished_at"]) for d in docs)
    sizes = [d.get("batch_size", 1) for d in docs]
    latencies = [(_ts(d["finished_at"]) - _ts(d["created_at"])) * 1000 for d in docs]
    return {
        "jobs": len(docs),
        "backlog": backlog,
        "statuses": sorted(statuses),
        "submit_s": submitted_s,
        "submit_per_s": len(docs) / submitted_s,
        "drain_per_s": len(docs) / (finished - started),
        "e2e_per_s": len(docs) / (finished - first_post),
        "mean_batch": statistics.mean(sizes),
        **pcts(latencies),
    }


def clear_tenant(tenant: str) -> None:
    """Delete a tenant's job documents (between bursts on one stack)."""
    from google.cloud import firestore
    from google.cloud.firestore_v1.base_query import FieldFilter

    db = firestore.Client()
    refs = [
        d.reference
        for d in db.collection("jobs").where(filter=FieldFilter("tenant", "==", tenant)).stream()
    ]
    for start in range(0, len(refs), 500):
        batch = db.batch()
        for ref in refs[start : start + 500]:
            batch.delete(ref)
        batch.commit()


def _ts(value: Any) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def pcts(values_ms: list[float]) -> dict[str, float]:
    if not values_ms:
        return {"p50_ms": float("nan"), "p99_ms": float("nan")}
    ordered = sorted(values_ms)
    return {
        "p50_ms": statistics.median(ordered),
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
    }


def device_summary() -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "torch_device": "cuda" if cuda else "cpu",
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "cpus": len(os.sched_getaffinity(0)),
        "torch": torch.__version__,
    }


def print_table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    def cell(value: Any) -> str:
        return f"{value:,.1f}" if isinstance(value, float) else str(value)

    text = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in text)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for row in text:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))


def save(name: str, payload: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str))


def temp_repository() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="omni-bench-models-")


# -- one process's CPU, per thread ------------------------------------------------------------
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_cpu_s(stat: str) -> tuple[str, float]:
    """``(comm, utime + stime in seconds)`` from a ``/proc/…/stat`` line (comm may hold spaces
    and parentheses: it runs from the first ``(`` to the last ``)``)."""
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()
    return name, (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def process_cpu_s(pid: int) -> float:
    """The process's CPU seconds, its ended threads included."""
    return _stat_cpu_s(Path(f"/proc/{pid}/stat").read_text())[1]


def threads_cpu_s(pid: int) -> dict[int, tuple[str, float]]:
    """Each live thread of ``pid``: TID → (OS thread name, CPU seconds)."""
    out: dict[int, tuple[str, float]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            out[int(tid)] = _stat_cpu_s(Path(f"/proc/{pid}/task/{tid}/stat").read_text())
        except (FileNotFoundError, ProcessLookupError):
            continue  # ended between the listing and the read
    return out


def py_spy() -> str | None:
    """py-spy, from the virtual environment or the PATH (``pip install py-spy``)."""
    import shutil

    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def parse_py_spy_dump(text: str) -> dict[int, str]:
    """TID → Python thread name from ``py-spy dump`` output (``Thread 123 (idle): "name"``)."""
    names: dict[int, str] = {}
    for line in text.splitlines():
        if not line.startswith("Thread "):
            continue
        tid = line.split()[1]
        try:
            number = int(tid, 16) if tid.startswith("0x") else int(tid)
        except ValueError:
            continue
        if '"' in line:
            names[number] = line[line.index('"') + 1 : line.rindex('"')]
    return names


def python_thread_names(pid: int) -> dict[int, str]:
    """TID → Python thread name (Python threads are all ``python`` to the OS); empty without
    py-spy or without the right to trace ``pid``."""
    binary = py_spy()
    if binary is None:
        return {}
    dump = subprocess.run(
        [binary, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=60
    )
    return parse_py_spy_dump(dump.stdout)


def thread_group(name: str) -> str:
    """A pool's threads under one name: ``omni-settle_3`` → ``omni-settle``."""
    return name.rstrip("0123456789").rstrip("_-") or name


def split_cpu(
    before: dict[int, tuple[str, float]],
    after: dict[int, tuple[str, float]],
    names: dict[int, str],
    total_s: float,
) -> list[tuple[str, float, int]]:
    """CPU seconds between two ``threads_cpu_s`` snapshots, per thread group (Python names where
    known, else the OS's), largest first, as ``(group, seconds, threads)``; threads that ended
    in between (and the 10 ms ticks' rounding) show as ``(ended threads, rounding)``: the rest
    of ``total_s`` the process spent."""
    groups: dict[str, list[float]] = {}
    for tid, (os_name, cpu) in after.items():
        spent = cpu - before.get(tid, (os_name, 0.0))[1]
        groups.setdefault(thread_group(names.get(tid, os_name)), []).append(spent)
    rows = [(group, sum(spent), len(spent)) for group, spent in groups.items()]
    rest = total_s - sum(row[1] for row in rows)
    if rest > 0.005:
        rows.append(("(ended threads, rounding)", rest, 0))
    return sorted(rows, key=lambda row: -row[1])


# -- chunks ------------------------------------------------------------------------------------
def chunk_drain(batch_id: str) -> dict[str, Any]:
    """A chunked batch's run from its chunks' own times: the first claim (``started_at``) to the
    last commit (``done_at``, else ``finished_at``), items, chunks and attempts. Reads only those
    fields, not the inputs and results."""
    from google.cloud import firestore

    from schemas.chunks import CHUNKS

    db = firestore.Client()
    fields = ["started_at", "finished_at", "done_at", "n", "attempts", "status"]
    chunks = db.collection("batches").document(batch_id).collection(CHUNKS)
    docs = [d.to_dict() or {} for d in chunks.select(fields).stream()]
    started = [_ts(d["started_at"]) for d in docs if d.get("started_at")]
    ended = [_ts(d.get("done_at") or d["finished_at"]) for d in docs if d.get("finished_at")]
    items = sum(int(d.get("n") or 0) for d in docs)
    seconds = max(ended) - min(started) if started and ended else float("nan")
    return {
        "chunks": len(docs),
        "items": items,
        "attempts": sum(int(d.get("attempts") or 0) for d in docs),
        "statuses": sorted({str(d.get("status")) for d in docs}),
        "seconds": seconds,
        "items_per_s": items / seconds if seconds and seconds > 0 else float("nan"),
        "first_started": min(started) if started else None,
    }
