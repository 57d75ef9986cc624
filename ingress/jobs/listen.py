"""One Firestore Listen stream that carries many job documents: listeners multiplexed.

``DocumentReference.on_snapshot`` opens a gRPC stream and two threads per document. Measured with
1,000 open event streams on one gthread ingress (docs/streaming.md), that is ~3,000 threads and a
run queue in the hundreds: deliveries took seconds. Firestore's Listen RPC takes many targets on
one stream (its mobile and web SDKs multiplex every listener of a client this way), so here one
stream carries one document target per watched job, and one thread reads every change.

    add(job) ──ListenRequest(add_target)──▶ Listen stream ──document_change──▶ on_document(job, doc)
    remove(job) ──ListenRequest(remove_target)──▶

Each ``add_target`` answers with the document as it is, then every change; a document's changes
arrive in order. The stream is not resumed by token: when it ends it is opened again (after a
short pause) with every target added afresh, and the documents' current state comes back first,
so nothing is missed — readers dedupe by event id.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from google.api_core.bidi import BidiRpc
from google.cloud.firestore_v1 import _helpers
from google.cloud.firestore_v1.types import ListenRequest, TargetChange

logger = logging.getLogger(__name__)

# A stream ended by the server or the network is opened again after this pause (seconds).
REOPEN_PAUSE_S = 1.0
TARGET_ID_LIMIT = 2**31 - 1
"""Listen target ids are int32; ids are reused from 1 after this (never two live at once)."""


class MultiListen:
    """A Listen stream on ``client`` for the documents ``add``ed, calling ``on_document(doc_id,
    data)`` from its reader thread for each document state it receives."""

    def __init__(
        self,
        client: Any,
        collection: str,
        on_document: Callable[[str, dict[str, Any]], None],
    ):
        self._client = client
        self._on_document = on_document
        self._database = client._database_string
        self._prefix = f"{self._database}/documents/{collection}/"
        # Guards _targets, _ids, _next_id, _rpc and _closed. Held only for dict updates and
        # queueing a request (send() never blocks), never while a response is handled.
        self._lock = threading.Lock()
        self._targets: dict[int, str] = {}  # target id -> document id
        self._ids: dict[str, int] = {}  # document id -> target id
        self._next_id = 1
        self._rpc: Any = None
        self._closed = False
        self._reader: threading.Thread | None = None

    def __len__(self) -> int:
        with self._lock:
            return len(self._ids)

    @property
    def is_active(self) -> bool:
        """False when documents are watched but no reader thread is receiving them."""
        reader = self._reader
        return self._closed or not self._ids or (reader is not None and reader.is_alive())

    def add(self, doc_id: str) -> None:
        """Start receiving this document (its current state first)."""
        with self._lock:
            if self._closed or doc_id in self._ids:
                return
            target_id = self._new_id()
            self._targets[target_id] = doc_id
            self._ids[doc_id] = target_id
            if self._rpc is None:
                self._try_open()
            else:
                self._send(self._add_request(target_id, doc_id))

    def remove(self, doc_id: str) -> None:
        with self._lock:
            target_id = self._ids.pop(doc_id, None)
            if target_id is None:
                return
            del self._targets[target_id]
            if self._rpc is not None:
                self._send(self._listen_request(remove_target=target_id))

    def revive(self) -> bool:
        """Open the stream again if its reader died; whether it had to."""
        with self._lock:
            if self.is_active or not self._ids:
                return False
            logger.warning("job listen stream stopped; opening it again")
            self._try_open()
            return True

    def close(self) -> None:
        with self._lock:
            self._closed = True
            rpc, self._rpc = self._rpc, None
        if rpc is not None:
            rpc.close()

    # -- the stream (called with the lock held) -------------------------------------------------
    def _new_id(self) -> int:
        while self._next_id in self._targets:
            self._next_id = self._next_id % TARGET_ID_LIMIT + 1
        target_id = self._next_id
        self._next_id = self._next_id % TARGET_ID_LIMIT + 1
        return target_id

    def _listen_request(self, **fields: Any) -> Any:
        return ListenRequest(database=self._database, **fields)

    def _add_request(self, target_id: int, doc_id: str) -> Any:
        target = {"documents": {"documents": [self._prefix + doc_id]}, "target_id": target_id}
        return self._listen_request(add_target=target)

    def _send(self, request: Any) -> None:
        try:
            self._rpc.send(request)
        except Exception:  # noqa: BLE001 - the stream is ending; the reader reopens it with all
            logger.debug("listen request not sent; the stream will reopen", exc_info=True)

    def _try_open(self) -> None:
        old, self._rpc = self._rpc, None
        if old is not None:
            old.close()
        try:
            self._open()
        except Exception:  # noqa: BLE001 - revive() tries again on a reader's next ping
            logger.exception("could not open the job listen stream")

    def _open(self) -> None:
        requests = [self._add_request(t, d) for t, d in self._targets.items()]
        rpc: Any = BidiRpc(  # type: ignore[no-untyped-call]
            start_rpc=self._client._firestore_api._transport.listen,
            initial_request=requests[0] if requests else None,
            metadata=self._client._rpc_metadata,
        )
        rpc.open()
        try:
            for request in requests[1:]:
                rpc.send(request)
            self._rpc = rpc
            reader = threading.Thread(
                target=self._read, args=(rpc,), name="omni-listen", daemon=True
            )
            reader.start()
        except BaseException:
            self._rpc = None
            rpc.close()
            raise
        self._reader = reader

    # -- the reader thread -----------------------------------------------------------------------
    def _on_target_change(self, change: Any) -> None:
        """The server dropped targets (it says why in ``cause``): add each one still watched
        again, under a new id, so its readers are not left waiting on a target that is gone."""
        if change.target_change_type != TargetChange.TargetChangeType.REMOVE:
            return
        with self._lock:
            for target_id in change.target_ids:
                doc_id = self._targets.pop(target_id, None)
                if doc_id is None or self._rpc is None:
                    continue
                logger.warning(
                    "listen target removed by the server (%s); adding it again",
                    change.cause.message or "no cause given",
                    extra={"job_id": doc_id},
                )
                new_id = self._new_id()
                self._targets[new_id] = doc_id
                self._ids[doc_id] = new_id
                self._send(self._add_request(new_id, doc_id))

    def _read(self, rpc: Any) -> None:
        try:
            while True:
                self._handle(rpc.recv())
        except Exception as exc:  # noqa: BLE001 - any end of the stream: reopen unless closing
            with self._lock:
                if self._closed or self._rpc is not rpc:
                    return
                self._rpc = None
            logger.info("job listen stream ended (%s); reopening", type(exc).__name__)
            time.sleep(REOPEN_PAUSE_S)
            with self._lock:
                if not self._closed and self._rpc is None and self._ids:
                    self._try_open()

    def _handle(self, response: Any) -> None:
        if "target_change" in response:
            self._on_target_change(response.target_change)
            return
        if "document_change" not in response:
            return  # deletes (the TTL policy), filters: nothing to tell readers
        document = response.document_change.document
        if not document.name.startswith(self._prefix):
            return
        doc_id = document.name[len(self._prefix) :]
        with self._lock:
            watched = doc_id in self._ids
        if not watched:
            return
        try:
            data: dict[str, Any] = _helpers.decode_dict(document.fields, self._client)  # type: ignore[assignment]
        except Exception:  # noqa: BLE001 - one undecodable document must not end the stream
            logger.exception("could not decode a watched job", extra={"job_id": doc_id})
            return
        self._on_document(doc_id, data)
