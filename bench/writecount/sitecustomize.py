"""Counts the Firestore document writes of every Python process of a bench's stack.

``bench/batch.py`` puts this folder on ``PYTHONPATH`` with ``OMNI_BENCH_WRITES_DIR`` set, so each
process it starts (ingress, worker, reconciler, ...) imports this at start-up and counts every
document write it commits (``commit`` and ``batch_write`` requests: a write is one document,
transforms such as ``Increment`` included, as Firestore bills them), by collection path
(``batches/chunks``, ``batches/counters``, ``jobs``, ...). The counts go to
``$OMNI_BENCH_WRITES_DIR/PID.json`` twice a second. The emulator keeps no such count, and the
clients send every write it receives, so this is the emulator's count too. Nothing happens
without the variable, or where the Firestore client is not installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections import Counter
from typing import Any

FOLDER = os.environ.get("OMNI_BENCH_WRITES_DIR")
_counts: Counter[str] = Counter()
_lock = threading.Lock()


def _collections(name: str) -> str:
    """``projects/P/databases/D/documents/batches/B/chunks/C`` → ``batches/chunks``."""
    path = name.partition("/documents/")[2].split("/")
    return "/".join(path[0::2])


def _count(request: Any) -> None:
    writes = request.get("writes") if isinstance(request, dict) else getattr(request, "writes", ())
    seen: Counter[str] = Counter()
    for write in writes or ():
        pb = getattr(write, "_pb", write)
        operation = pb.WhichOneof("operation")
        if operation == "update":
            seen[_collections(pb.update.name)] += 1
        elif operation == "delete":
            seen[_collections(pb.delete) + " (delete)"] += 1
        elif operation == "transform":
            seen[_collections(pb.transform.document)] += 1
    with _lock:
        _counts.update(seen)
        _counts["(commits)"] += 1


def _wrap(cls: Any, method: str) -> None:
    original = getattr(cls, method)

    def counted(self: Any, request: Any = None, *args: Any, **kwargs: Any) -> Any:
        with contextlib.suppress(Exception):  # counting must never break a write
            _count(request)
        return original(self, request, *args, **kwargs)

    setattr(cls, method, counted)


def _flush() -> None:
    with _lock:
        text = json.dumps(dict(_counts))
    path = os.path.join(str(FOLDER), f"{os.getpid()}.json")
    with open(path + ".tmp", "w") as handle:
        handle.write(text)
    os.replace(path + ".tmp", path)


def _flusher() -> None:
    stop = threading.Event()
    while not stop.wait(0.5):
        try:
            _flush()
        except OSError:
            return


def _start() -> None:
    threading.Thread(target=_flusher, name="bench-writecount", daemon=True).start()


def _after_fork() -> None:
    # A forked child (gunicorn's workers) counts its own writes, in its own file.
    global _lock
    _lock = threading.Lock()
    _counts.clear()
    _start()


if FOLDER:
    try:
        from google.cloud.firestore_v1.services.firestore.client import FirestoreClient

        _wrap(FirestoreClient, "commit")
        _wrap(FirestoreClient, "batch_write")
    except Exception:  # noqa: BLE001, S110 - not a process that writes to Firestore
        pass
    else:
        _start()
        os.register_at_fork(after_in_child=_after_fork)
