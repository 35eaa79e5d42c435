"""Retrieval as the graph sees it: LangChain retrievers returning passages, scoped to one store.

Every retriever here and in persistence/ is a `BaseRetriever` taking invoke-time arguments `k`, `store_id`
(the turn's store: it sees shared passages and its own, never another store's) and `audience` (the session's:
`shopper` or `seller` sees the pages written for it and those for `all`; None, every page),
and returning Documents whose metadata holds `title`, `url`, `score` (and `doc_id`). The graph
turns them into `Passage`s, which is what the prompt, the `sources` event and the stored message use.

- `VectorRetriever`: any LangChain VectorStore (PgVectorStore, PineconeVectorStore).
- `HybridRetriever`: several retrievers fused by their scores (each leg's weight; `score_fusion`), or by
  reciprocal rank (RRF) when no weights are given.
The full-text retriever lives with its SQL in persistence/knowledge.py.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableConfig
from langchain_core.vectorstores import VectorStore
from pydantic import Field


@dataclass(frozen=True)
class Passage:
    id: str
    title: str
    url: str | None
    score: float
    content: str
    # the passage's embedding similarity to what was searched (the cosine) where a dense leg measured it
    similarity: float | None = None

    def as_source(self, snippet_chars: int = 240) -> dict[str, Any]:
        """The API's Source shape: {id, title, url, score, snippet}."""
        text = " ".join(self.content.split())
        snippet = text if len(text) <= snippet_chars else text[: snippet_chars - 1].rstrip() + "…"
        return {"id": self.id, "title": self.title, "url": self.url, "score": round(self.score, 6),
                "snippet": snippet}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_document(cls, doc: Document) -> Passage:
        meta = doc.metadata
        similarity = meta.get("similarity")
        return cls(id=str(doc.id or meta.get("chunk_id") or ""), title=str(meta.get("title") or ""),
                   url=meta.get("url") or None, score=float(meta.get("score") or 0.0), content=doc.page_content,
                   similarity=None if similarity is None else round(float(similarity), 4))


def sources_event(sources: list[dict[str, Any]]) -> dict[str, Any]:
    """The custom stream event the graph writes once retrieval is done (LangGraph's stream writer; clients that
    stream mode `custom`, generative UI among them, get it): {"type": "sources", "sources": [Source]}."""
    return {"type": "sources", "sources": sources}


def passage_metadata(**fields: Any) -> dict[str, Any]:
    """Metadata without None values: vector stores such as Pinecone reject nulls, and a shared
    passage is one with no `store_id` key at all."""
    return {key: value for key, value in fields.items() if value is not None}


def with_score(doc: Document, score: float, **extra: Any) -> Document:
    return Document(id=doc.id, page_content=doc.page_content, metadata={**doc.metadata, **extra, "score": score})


class ScopedRetriever(BaseRetriever):
    """Shared handling of the `k` and `store_id` arguments (constructor defaults, invoke overrides), and of a
    search begun ahead (`SearchAhead`, given as `ahead=`): the run is traced as any other, its result is that
    search's. Subclasses search in `_asearch`."""

    k: int = 4
    store_id: str | None = None
    audience: str | None = None

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        ahead = kwargs.pop("ahead", None)
        if ahead is not None:
            return await self._from_ahead(ahead, query, run_manager=run_manager, **kwargs)
        return await self._asearch(query, run_manager=run_manager, **kwargs)

    async def _asearch(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        raise NotImplementedError

    def begin_search(self, query: str, **kwargs: Any) -> Any:
        """This search, started now and untraced; given back as `ahead=` with the same query and arguments, the
        traced run's result is its result. Anything with a `cancel()`."""
        task = asyncio.ensure_future(
            self._asearch(query, run_manager=AsyncCallbackManagerForRetrieverRun.get_noop_manager(), **kwargs))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # a failure is the run's to see
        return task

    async def _from_ahead(self, ahead: Any, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun,
                          **kwargs: Any) -> list[Document]:
        return list(await ahead)

    def _args(self, kwargs: dict[str, Any]) -> tuple[int, str | None]:
        k = int(kwargs.get("k", self.k))
        store_id = kwargs["store_id"] if "store_id" in kwargs else self.store_id
        return k, store_id

    def _audience(self, kwargs: dict[str, Any]) -> str | None:
        return kwargs["audience"] if "audience" in kwargs else self.audience


def store_scope(vectorstore: VectorStore, store_id: str | None, audience: str | None = None) -> dict[str, Any]:
    """Search arguments limiting a vector store to shared passages plus `store_id`'s own, written for `audience`
    or for all."""
    if getattr(vectorstore, "supports_visible_to", False):
        return {"visible_to": store_id, "audience": audience}
    # Pinecone-style metadata filter: shared passages carry no store_id key
    shared: dict[str, Any] = {"store_id": {"$exists": False}}
    scope = shared if store_id is None else {"$or": [shared, {"store_id": {"$eq": store_id}}]}
    if audience is None:
        return {"filter": scope}
    return {"filter": {"$and": [scope, {"audience": {"$in": ["all", audience]}}]}}


class VectorRetriever(ScopedRetriever):
    """Similarity search on a LangChain VectorStore, scoped to the turn's store."""

    vectorstore: VectorStore
    backend: str = "vector"

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        k, store_id = self._args(kwargs)
        scope = store_scope(self.vectorstore, store_id, self._audience(kwargs))
        found = self.vectorstore.similarity_search_with_score(query, k, **scope)
        return [with_score(doc, score, similarity=score) for doc, score in found]

    async def _asearch(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        k, store_id = self._args(kwargs)
        found = await self.vectorstore.asimilarity_search_with_score(
            query, k, **store_scope(self.vectorstore, store_id, self._audience(kwargs))
        )
        # `similarity` survives fusion (the score does not): how close the question came to anything
        return [with_score(doc, score, similarity=score) for doc, score in found]


def reciprocal_rank_fusion(rankings: list[list[Document]], *, k: int, rrf_k: int = 60) -> list[Document]:
    """Fuse ranked lists by sum of 1/(rrf_k + rank); ties broken by first appearance."""
    fused: dict[str, float] = {}
    first: dict[str, Document] = {}
    for ranking in rankings:
        for rank, doc in enumerate(ranking, start=1):
            key = str(doc.id)
            fused[key] = fused.get(key, 0.0) + 1.0 / (rrf_k + rank)
            first.setdefault(key, doc)
    order = sorted(fused, key=lambda key: -fused[key])  # stable: earlier lists win ties
    return [with_score(first[key], fused[key]) for key in order[:k]]


def _leg_scores(ranking: list[Document]) -> dict[str, float]:
    """A leg's scores scaled to 0–1 within its own list (min–max): the best passage it found 1, its last 0."""
    raw = {str(doc.id): float(doc.metadata.get("score") or 0.0) for doc in ranking}
    if not raw:
        return {}
    low, high = min(raw.values()), max(raw.values())
    return {key: (value - low) / (high - low) if high > low else 1.0 for key, value in raw.items()}


def score_fusion(rankings: list[list[Document]], weights: list[float], *, k: int) -> list[Document]:
    """Fuse ranked lists by their scores, not only their order: each leg's scores scaled to 0–1 within its list
    (_leg_scores), summed with the leg's weight (a passage a leg did not find has 0 there). Unlike rank fusion, a
    passage one leg finds far ahead of the rest keeps that lead. Ties go to the earlier leg's order. The fused
    score is kept as `fused`; `score` stays what the first leg that found the passage said (a dense leg's cosine)."""
    fused: dict[str, float] = {}
    first: dict[str, Document] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        for key, value in _leg_scores(ranking).items():
            fused[key] = fused.get(key, 0.0) + weight * value
        for doc in ranking:
            first.setdefault(str(doc.id), doc)
    order = sorted(fused, key=lambda key: -fused[key])
    return [Document(id=first[key].id, page_content=first[key].page_content,
                     metadata={**first[key].metadata, "fused": round(fused[key], 6)}) for key in order[:k]]


def with_relevance(fused: list[Document], rankings: list[list[Document]]) -> list[Document]:
    """Each fused passage's `score` as a relevance in 0–1 that reads the same for every passage: its embedding
    similarity (the cosine) where a dense leg found it; where only another leg did, the lowest similarity the dense
    legs returned (the passage was not among their closest, so it is at most that), marked `similarity_bound`.
    Without a dense leg the scores stay the full-text leg's (0–1 too)."""
    floor = [float(d.metadata["similarity"]) for r in rankings for d in r if d.metadata.get("similarity") is not None]
    if not floor:
        return fused
    lowest = min(floor)
    out = []
    for doc in fused:
        similarity = doc.metadata.get("similarity")
        extra = {"score": float(similarity)} if similarity is not None else {"score": lowest, "similarity_bound": True}
        out.append(Document(id=doc.id, page_content=doc.page_content, metadata={**doc.metadata, **extra}))
    return out


class HybridRetriever(ScopedRetriever):
    """Runs every retriever (e.g. vector and full-text) and fuses their rankings: by score with `weights` (one per
    retriever), else by RRF."""

    retrievers: list[BaseRetriever] = Field(min_length=1)
    candidates: int = 10
    rrf_k: int = 60
    weights: list[float] | None = None

    def _fuse(self, rankings: list[list[Document]], k: int) -> list[Document]:
        if self.weights is None:
            return reciprocal_rank_fusion(rankings, k=k, rrf_k=self.rrf_k)
        return with_relevance(score_fusion(rankings, self.weights, k=k), rankings)

    def _depth(self, k: int) -> int:
        return max(k, self.candidates)

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        k, store_id = self._args(kwargs)
        config = RunnableConfig(callbacks=run_manager.get_child())
        audience = self._audience(kwargs)
        rankings = [r.invoke(query, config, k=self._depth(k), store_id=store_id, audience=audience)
                    for r in self.retrievers]
        return self._fuse(rankings, k)

    async def _asearch(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        return await self._from_ahead(_Begun([None] * len(self.retrievers)), query, run_manager=run_manager,
                                      **kwargs)

    def begin_search(self, query: str, **kwargs: Any) -> Any:
        """Each retriever's search begun (so that each still has its own run in the trace when taken)."""
        k, store_id = self._args(kwargs)
        scope = {"k": self._depth(k), "store_id": store_id, "audience": self._audience(kwargs)}
        return _Begun([r.begin_search(query, **scope) if isinstance(r, ScopedRetriever) else None
                       for r in self.retrievers])

    async def _from_ahead(self, ahead: Any, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun,
                          **kwargs: Any) -> list[Document]:
        """Every retriever's ranking, each from its search begun ahead where there is one, fused."""
        k, store_id = self._args(kwargs)
        config = RunnableConfig(callbacks=run_manager.get_child())
        scope = {"k": self._depth(k), "store_id": store_id, "audience": self._audience(kwargs)}
        rankings = await asyncio.gather(
            *(r.ainvoke(query, config, **scope, **({"ahead": begun} if begun is not None else {}))
              for r, begun in zip(self.retrievers, ahead.parts, strict=True))
        )
        return self._fuse(list(rankings), k)


@dataclass
class _Begun:
    """A fused search begun ahead: its retrievers' searches (None: one that cannot begin ahead)."""

    parts: list[Any]

    def cancel(self) -> None:
        for part in self.parts:
            if part is not None:
                part.cancel()


class SearchAhead:
    """A turn's search begun before its graph runs, beside the run's start, when the question is searched as it
    is (graph.graph.searched_as_asked). The retrieve node takes it for the very same search (retriever, query and
    arguments) and passes it to the retriever as `ahead`: the run is traced as ever, with the begun search's
    result. One not taken is cancelled at the end of the run (`discard`)."""

    def __init__(self, retriever: ScopedRetriever, query: str, **kwargs: Any) -> None:
        from langsmith import tracing_context

        self.retriever, self.query, self.kwargs = retriever, query, kwargs
        self.taken = False
        with tracing_context(enabled=False):  # nor traced by LANGSMITH_TRACING from the environment
            self.begun = retriever.begin_search(query, **kwargs)

    def take(self, retriever: BaseRetriever, query: str, **kwargs: Any) -> Any:
        if self.taken or retriever is not self.retriever or query != self.query or kwargs != self.kwargs:
            return None
        self.taken = True
        return self.begun

    def discard(self) -> None:
        if not self.taken:
            self.begun.cancel()
