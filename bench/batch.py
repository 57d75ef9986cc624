"""Batches in chunks: acceptance time, Firestore documents and writes per item, a million items
in parts and the ingress's memory meanwhile, and embed items finished against the model, in one run.

1. The baseline: the worker's embed adapter called in this process at the worker's batch size.
2. A stack with no worker (``workers=0``: nothing runs what it accepts; the Pub/Sub emulator still
   stores every message on the provisioned subscriptions):
   - a million items through parts: ``POST /v1/batches?task=embed&open=1``, parts of
     ``--part-items`` (within the request limit) to ``POST /v1/batches/ID/items``, then
     ``POST /v1/batches/ID/close``; the ingress's peak RSS meanwhile (``VmHWM`` of its gunicorn
     worker processes, which start fresh with the stack);
   - acceptance: ``POST /v1/batches`` of N NDJSON lines until the 202; the documents it created
     (the batch's chunks, the batch, its counter shards) per item.
3. A stack with one embed worker: N items from the POST until the batch is ``succeeded``
   (``GET /v1/batches/ID`` twice a second), and the worker's rate from its chunks' own times
   (first claim to last commit).

Document writes are counted in every Python process of both stacks (``bench/writecount``: each
``commit``/``batch_write`` request's writes, by collection), so "writes per item" is every write
the pipeline made, the reconciler's included, over the acceptance or the whole run.

    .venv/bin/python -m bench.batch [--accept 100000] [--million 1000000] [--part-items 100000]
                                    [--finish 10000] (--finish 10000,100000: the 100,000 takes
                                    minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

from bench.common import (
    KEYS,
    ROOT,
    chunk_drain,
    device_summary,
    load_adapter,
    print_table,
    quiet_model_logs,
    raw_items_per_s,
    save,
    sentence,
    stack,
)
from worker.settings import BATCHING

NDJSON = "application/x-ndjson"
WRITECOUNT = ROOT / "bench" / "writecount"
GOALS = {"accept_s": 3.0, "docs_per_item": 0.01, "writes_per_item": 0.05, "rss_mib": 256}


def ndjson(start: int, items: int) -> bytes:
    return b"".join(
        b'{"texts": ["%s"]}\n' % sentence(i).encode() for i in range(start, start + items)
    )


def headers(tenant: str, **extra: str) -> dict[str, str]:
    return {"X-API-Key": KEYS[tenant], "Content-Type": NDJSON, **extra}


# -- what the stack wrote ----------------------------------------------------------------------
def role(pid: int) -> str:
    """What a process of the stack is, from its command line."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return "(ended)"
    if any("gunicorn" in arg for arg in argv):
        return "ingress"
    if "-m" in argv[:-1]:
        return argv[argv.index("-m") + 1]
    return Path(argv[0]).name


def writes(folder: Path) -> Counter[str]:
    """Every process's document writes so far (``bench/writecount``), keyed ``ROLE COLLECTION``
    (``worker batches/chunks``); ``ROLE (commits)`` counts commit requests."""
    time.sleep(1.2)  # each process writes its counts twice a second
    total: Counter[str] = Counter()
    for path in folder.glob("*.json"):
        try:
            counts = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being replaced right now: the next read has it
        who = role(int(path.stem))
        total.update({f"{who} {collection}": n for collection, n in counts.items()})
    return total


def written(delta: Counter[str]) -> int:
    """Document writes (not commit requests) in a ``writes`` delta."""
    return sum(n for key, n in delta.items() if not key.endswith("(commits)"))


def documents_of(batch_id: str) -> dict[str, int]:
    """The documents a batch has: its chunks, itself, its counter shards."""
    from google.cloud import firestore

    from schemas.batches import COUNTERS
    from schemas.chunks import CHUNKS

    batch = firestore.Client().collection("batches").document(batch_id)
    chunks = int(batch.collection(CHUNKS).count().get()[0][0].value)
    shards = int(batch.collection(COUNTERS).count().get()[0][0].value)
    return {"chunks": chunks, "batch": 1, "counters": shards, "all": chunks + 1 + shards}


# -- the ingress's memory ----------------------------------------------------------------------
def ingress_workers(port: int) -> list[int]:
    """The gunicorn worker processes (not the master) of the ingress on ``port``."""
    mine: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if b"gunicorn" not in (entry / "cmdline").read_bytes():
                continue
            if f"PORT={port}".encode() not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        mine[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    return [pid for pid, parent in mine.items() if parent in mine]


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class RssSampler:
    """The largest resident set of some processes, sampled every 50 ms (beside VmHWM)."""

    def __init__(self, pids: list[int]):
        self.pids = pids
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(0.05):
            for pid in self.pids:
                try:
                    self.peak_kib = max(self.peak_kib, status_kib(pid, "VmRSS"))
                except (OSError, KeyError):
                    continue


# -- runs --------------------------------------------------------------------------------------
def accept(url: str, items: int, folder: Path) -> dict[str, Any]:
    body = ndjson(0, items)
    before = writes(folder)
    started = time.perf_counter()
    response = requests.post(
        f"{url}/v1/batches",
        params={"task": "embed"},
        data=body,
        headers=headers("bench"),
        timeout=600,
    )
    seconds = time.perf_counter() - started
    response.raise_for_status()
    batch = response.json()
    assert batch["counts"]["queued"] == items, batch
    delta = writes(folder) - before
    documents = documents_of(batch["id"])
    return {
        "items": items,
        "body_mib": len(body) / 2**20,
        "seconds": seconds,
        "documents": documents,
        "documents_per_item": documents["all"] / items,
        "writes": dict(delta),
        "writes_per_item": written(delta) / items,
    }


def parts(items: int, part_items: int) -> Iterator[tuple[int, bytes]]:
    for number, start in enumerate(range(0, items, part_items), start=1):
        yield number, ndjson(start, min(part_items, items - start))


def million(url: str, port: int, items: int, part_items: int, folder: Path) -> dict[str, Any]:
    """``items`` through an open batch in parts; the ingress workers' peak memory meanwhile."""
    pids = ingress_workers(port)
    idle_kib = max(status_kib(pid, "VmRSS") for pid in pids)
    before = writes(folder)
    session = requests.Session()
    started = time.perf_counter()
    part_s: list[float] = []
    with RssSampler(pids) as sampler:
        response = session.post(
            f"{url}/v1/batches",
            params={"task": "embed", "open": "1"},
            data=b"",
            headers=headers("burst"),
            timeout=60,
        )
        response.raise_for_status()
        batch_id = response.json()["id"]
        for number, body in parts(items, part_items):
            sent = time.perf_counter()
            response = session.post(
                f"{url}/v1/batches/{batch_id}/items",
                data=body,
                headers=headers("burst", **{"Idempotency-Key": f"bench-{batch_id}-{number}"}),
                timeout=600,
            )
            response.raise_for_status()
            part_s.append(time.perf_counter() - sent)
        response = session.post(
            f"{url}/v1/batches/{batch_id}/close", headers=headers("burst"), timeout=60
        )
        response.raise_for_status()
        seconds = time.perf_counter() - started
    batch = response.json()
    assert batch["counts"]["total"] == items, batch
    delta = writes(folder) - before
    documents = documents_of(batch_id)
    return {
        "items": items,
        "parts": len(part_s),
        "part_items": part_items,
        "seconds": seconds,
        "part_s": part_s,
        "ingress_processes": len(pids),
        "idle_rss_mib": idle_kib / 1024,
        "peak_rss_mib": max(status_kib(pid, "VmHWM") for pid in pids) / 1024,
        "sampled_peak_rss_mib": sampler.peak_kib / 1024,
        "documents": documents,
        "documents_per_item": documents["all"] / items,
        "writes": dict(delta),
        "writes_per_item": written(delta) / items,
    }


def finish(url: str, items: int, folder: Path) -> dict[str, Any]:
    before = writes(folder)
    started = time.perf_counter()
    response = requests.post(
        f"{url}/v1/batches",
        params={"task": "embed"},
        data=ndjson(0, items),
        headers=headers("bench"),
        timeout=600,
    )
    response.raise_for_status()
    accepted = time.perf_counter() - started
    batch_id = response.json()["id"]
    deadline = time.monotonic() + 120 + items / 5
    while True:
        batch = requests.get(f"{url}/v1/batches/{batch_id}", headers=headers("bench"), timeout=30)
        batch.raise_for_status()
        body = batch.json()
        if body["status"] not in ("running", "open"):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"batch not finished: {body['counts']}")
        time.sleep(0.5)
    seconds = time.perf_counter() - started
    delta = writes(folder) - before
    drain = chunk_drain(batch_id)
    created = datetime.fromisoformat(body["created_at"])
    finished_at = datetime.fromisoformat(body["finished_at"])
    return {
        "items": items,
        "status": body["status"],
        "counts": body["counts"],
        "accept_s": accepted,
        "seconds": seconds,
        "items_per_s": items / seconds,
        "batch_s": (finished_at - created).total_seconds(),
        "worker": drain,
        "documents": documents_of(batch_id),
        "writes": dict(delta),
        "writes_per_item": written(delta) / items,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accept", default="100000", help="single-request batch sizes to accept")
    parser.add_argument("--million", type=int, default=1_000_000, help="items in parts (0: none)")
    parser.add_argument("--part-items", type=int, default=100_000, help="items per part")
    parser.add_argument("--finish", default="10000", help="embed batch sizes to run to the end")
    args = parser.parse_args()
    sizes = [int(n) for n in args.accept.split(",") if n]
    finishes = [int(n) for n in args.finish.split(",") if n]
    quiet_model_logs()
    device = device_summary()
    print(f"device: {device}")

    batch_size = BATCHING["embed"][0]
    adapter = load_adapter("embed", None)
    raw = raw_items_per_s(adapter, "embed", batch_size, 512)
    del adapter
    results: dict[str, Any] = {
        "device": device,
        "raw_items_per_s": raw,
        "batch_size": batch_size,
        "load_average": [os.getloadavg()[0]],
    }
    with tempfile.TemporaryDirectory(prefix="omni-bench-writes-") as folder:
        count_env = {"PYTHONPATH": str(WRITECOUNT), "OMNI_BENCH_WRITES_DIR": folder}
        with stack("embed", "batch-accept", workers=0, **count_env) as config:
            if args.million:
                results["million"] = million(
                    config.url, config.port, args.million, args.part_items, Path(folder)
                )
            results["accept"] = [accept(config.url, n, Path(folder)) for n in sizes]
    with tempfile.TemporaryDirectory(prefix="omni-bench-writes-") as folder:
        count_env = {"PYTHONPATH": str(WRITECOUNT), "OMNI_BENCH_WRITES_DIR": folder}
        with stack("embed", "batch", **count_env) as config:
            results["finish"] = [finish(config.url, n, Path(folder)) for n in finishes]
    results["load_average"].append(os.getloadavg()[0])
    save("batch", results)
    print_tables(results, raw, batch_size, device)


def print_tables(results: dict[str, Any], raw: float, batch_size: int, device: Any) -> None:
    rows: list[list[Any]] = []
    for run in results["accept"]:
        rows.append(
            [
                f"accept {run['items']:,} (NDJSON, {run['body_mib']:.1f} MiB) → 202",
                run["seconds"],
                run["items"] / run["seconds"],
                "",
                f"< {GOALS['accept_s']:g} s",
            ]
        )
        rows.append(
            [
                f"  documents created per item ({run['documents']['chunks']} chunks + batch + "
                f"{run['documents']['counters']} shards)",
                "",
                "",
                f"{run['documents_per_item']:.4f}",
                f"≤ {GOALS['docs_per_item']}",
            ]
        )
        rows.append(["  document writes per item", "", "", f"{run['writes_per_item']:.4f}", ""])
    if "million" in results:
        run = results["million"]
        rows.append(
            [
                f"{run['items']:,} items in {run['parts']} parts of {run['part_items']:,} (open, "
                "parts, close)",
                run["seconds"],
                run["items"] / run["seconds"],
                "",
                "",
            ]
        )
        rows.append(
            [
                f"  ingress peak RSS, MiB (VmHWM; idle {run['idle_rss_mib']:.0f}, sampled "
                f"{run['sampled_peak_rss_mib']:.0f})",
                "",
                "",
                f"{run['peak_rss_mib']:.0f}",
                f"≤ {GOALS['rss_mib']}",
            ]
        )
        rows.append(
            [
                "  documents created / writes per item",
                "",
                "",
                f"{run['documents_per_item']:.4f} / {run['writes_per_item']:.4f}",
                "",
            ]
        )
    rows.append([f"model in-process, batch {batch_size} (baseline)", "", raw, "1.00", ""])
    for run in results["finish"]:
        rows.append(
            [
                f"finish {run['items']:,} embed: POST → {run['status']}",
                run["seconds"],
                run["items_per_s"],
                f"{run['items_per_s'] / raw:.2f}",
                "",
            ]
        )
        rows.append(
            ["  of which accepting them", run["accept_s"], run["items"] / run["accept_s"], "", ""]
        )
        worker = run["worker"]
        rows.append(
            [
                f"  worker: first claim → last commit ({worker['chunks']} chunks, "
                f"{worker['attempts']} attempts)",
                worker["seconds"],
                worker["items_per_s"],
                f"{worker['items_per_s'] / raw:.2f}",
                "",
            ]
        )
        rows.append(
            [
                "  document writes per item, whole run",
                "",
                "",
                f"{run['writes_per_item']:.4f}",
                f"≤ {GOALS['writes_per_item']}",
            ]
        )
    print_table(
        f"Batches, device {device['torch_device']}, {device['cpus']} CPUs (load average "
        f"{results['load_average'][0]:.1f} → {results['load_average'][1]:.1f}); "
        "ratio = items/s over the model's own batched items/s, same run",
        ["what", "seconds", "items/s", "ratio or value", "goal"],
        rows,
    )
    for run in results["finish"]:
        print_table(
            f"Document writes per item over the {run['items']:,}-item run, by process and "
            "collection ((commits): commit requests, each one or more writes)",
            ["process", "collection", "writes", "per item"],
            [
                [*key.split(" ", 1), count, f"{count / run['items']:.4f}"]
                for key, count in sorted(run["writes"].items(), key=lambda kv: -kv[1])
            ],
        )


if __name__ == "__main__":
    main()
