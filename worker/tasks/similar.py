"""``similar`` on MiniLM (shared with ``embed``) and a FAISS inner-product index per job.

Vectors are unit length, so inner product is cosine similarity. The queries of every job in a
batch are encoded together with their documents in one engine call (``worker.engines.sentence``:
length-bucketed passes of 32 texts on the CPU, 256 on CUDA); each job's documents get their own
exact index (``IndexFlatIP``): documents are per job, at most 1,000, and exact search over them
takes microseconds.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from schemas.tasks.similar import SimilarInput
from worker.attempts import StopToken
from worker.tasks.embed import EmbedAdapter


class SimilarAdapter:
    name = "similar"

    def __init__(self, device: str = "auto", threads: int = 0):
        self._encoder = EmbedAdapter(device, threads)
        self._faiss: Any = None
        self.device = "unloaded"

    def load(self) -> None:
        import faiss

        self._encoder.load()
        self._faiss = faiss
        self.device = self._encoder.device

    @property
    def forward_passes(self) -> int:
        return self._encoder.forward_passes

    def run(self, inputs: list[BaseModel], stop: StopToken) -> list[dict[str, Any]]:
        items = [item for item in inputs if isinstance(item, SimilarInput)]
        assert len(items) == len(inputs)
        texts = [item.query for item in items]
        for item in items:
            texts.extend(item.documents)
        vectors = self._encoder.encode(texts, stop)
        queries, start = vectors[: len(items)], len(items)
        results = []
        for item, query in zip(items, queries, strict=True):
            documents = vectors[start : start + len(item.documents)]
            start += len(item.documents)
            index = self._faiss.IndexFlatIP(documents.shape[1])
            index.add(documents)
            top_k = min(item.top_k, len(item.documents))
            scores, positions = index.search(query.reshape(1, -1), top_k)
            results.append(
                {
                    "matches": [
                        {"index": int(i), "score": float(score), "text": item.documents[int(i)]}
                        for score, i in zip(scores[0], positions[0], strict=True)
                    ]
                }
            )
        return results
