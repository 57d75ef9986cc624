"""The peer: the same ``embed`` work as a Celery task, Redis as broker and result backend.

Used by ``bench/peer_celery.py`` only. The task loads the same MiniLM through the worker's own
adapter (same package, same device, same torch threads) once per Celery worker process, so the
comparison is the pipeline around the model, not the model.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery
from celery.signals import worker_process_init

BROKER = os.environ.get("OMNI_BENCH_REDIS", "redis://127.0.0.1:6379/0")
app = Celery("omni_peer", broker=BROKER, backend=BROKER)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_acks_late=True,  # as Omni: acknowledged after the work, so a crash does not lose it
    worker_prefetch_multiplier=4,
    broker_connection_retry_on_startup=True,
)
_adapter: Any = None


@worker_process_init.connect
def _load(**_: Any) -> None:
    global _adapter
    from worker.tasks.embed import EmbedAdapter

    threads = int(os.environ.get("TORCH_THREADS") or 0)
    _adapter = EmbedAdapter(device=os.environ.get("WORKER_DEVICE", "auto"), threads=threads)
    _adapter.load()


@app.task(name="embed")
def embed(texts: list[str]) -> dict[str, Any]:
    started_at = time.time()
    if _adapter is None:  # the solo pool runs no process-init signal
        _load()
    vectors = _adapter.encode(texts)
    return {"embeddings": vectors.tolist(), "started_at": started_at, "finished_at": time.time()}
