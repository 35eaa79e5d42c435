"""Which knowledge index this process uses, from settings, behind one retriever for the graph.

| settings                                  | vector index         | retriever (RETRIEVAL_MODE=hybrid)     |
|-------------------------------------------|----------------------|---------------------------------------|
| neither key                               | none                 | postgres-fts                          |
| OPENAI_API_KEY                            | pgvector (our PG)    | hybrid(pgvector+postgres-fts), RRF    |
| PINECONE_API_KEY (+ OPENAI_API_KEY)       | pinecone             | hybrid(pinecone+postgres-fts), RRF    |

The full-text index is always there (the chunks live in PostgreSQL whatever the vector backend), so
hybrid costs one more indexed query. RETRIEVAL_MODE=vector or fulltext uses one side only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever
from langchain_core.vectorstores import VectorStore

from graph.retrieval import HybridRetriever, VectorRetriever
from persistence.db import Pool, async_connection
from persistence.knowledge import FullTextRetriever, KnowledgeIndexer, KnowledgeRepository
from persistence.vectorstore import PgVectorStore
from server.settings import Settings


class KnowledgeConfigError(RuntimeError):
    """The settings ask for an index this process cannot use (said at start-up, not per turn)."""


@dataclass
class KnowledgeStack:
    indexer: KnowledgeIndexer
    retriever: BaseRetriever
    backend: str  # what /health and the bench print: postgres-fts, pgvector, pinecone, hybrid(...)
    vectorstore: VectorStore | None = None

    async def aclose(self) -> None:
        close = getattr(self.vectorstore, "aclose", None)
        if close is not None:
            await close()


def vector_backend(settings: Settings) -> str:
    if settings.vector_store != "auto":
        return settings.vector_store
    if settings.pinecone_api_key is not None:
        return "pinecone"
    if settings.openai_api_key is not None:
        return "pgvector"
    return "none"


def make_embeddings(settings: Settings) -> Embeddings:
    from langchain_openai import OpenAIEmbeddings

    if settings.openai_api_key is None:
        raise KnowledgeConfigError("a vector index needs an embedding model: set OPENAI_API_KEY")
    extra: dict[str, Any] = {}
    if settings.openai_embedding_model.startswith("text-embedding-3"):
        extra["dimensions"] = settings.embedding_dimensions  # older models have one fixed size
    return OpenAIEmbeddings(
        model=settings.openai_embedding_model,
        api_key=settings.openai_api_key,
        base_url=settings.openai_base_url,
        # send text, not tiktoken ids: chunks are far below the context limit and the tokenizer
        # files would have to be downloaded
        check_embedding_ctx_length=False,
        max_retries=settings.openai_max_retries,
        timeout=settings.openai_timeout_seconds,
        **extra,
    )


def collection_name(settings: Settings) -> str:
    return f"{settings.openai_embedding_model}:{settings.embedding_dimensions}"


def make_pinecone_store(settings: Settings, embeddings: Embeddings) -> VectorStore:
    from langchain_pinecone import PineconeVectorStore

    assert settings.pinecone_api_key is not None
    return PineconeVectorStore(
        embedding=embeddings,
        pinecone_api_key=settings.pinecone_api_key.get_secret_value(),
        index_name=settings.pinecone_index_name,
        host=settings.pinecone_host,
        namespace=settings.pinecone_namespace or None,
        text_key="text",
    )


async def pgvector_available(pool: Pool | None, conninfo: str | None = None) -> bool:
    async with async_connection(pool, conninfo, "pgvector_available") as conn:
        cur = await conn.execute("select to_regclass('kb_vectors') is not null as ok")
        row = await cur.fetchone()
    return bool(row and row["ok"])


async def build_knowledge(settings: Settings, pool: Pool | None, *,
                          retrieval_conninfo: str | None = None) -> KnowledgeStack:
    """The indexer on `pool`, and the retriever on `pool` too, or, given `retrieval_conninfo`, on short
    connections of its own (a retriever that outlives the pool and works from any event loop: Studio)."""
    repo = KnowledgeRepository(pool, settings.korean_analyzer)  # type: ignore[arg-type]  # None: retrieval only
    search_pool = None if retrieval_conninfo else pool
    fulltext = FullTextRetriever(pool=search_pool, conninfo=retrieval_conninfo, k=settings.retrieval_k,
                                 analyzer=settings.korean_analyzer)
    backend = vector_backend(settings)
    if backend == "none":
        if settings.retrieval_mode == "vector":
            raise KnowledgeConfigError("RETRIEVAL_MODE=vector needs a vector index (OPENAI_API_KEY or Pinecone)")
        return KnowledgeStack(KnowledgeIndexer(repo), fulltext, fulltext.name or "postgres-fts")

    embeddings = make_embeddings(settings)
    store: VectorStore
    if backend == "pgvector":
        if not await pgvector_available(pool, retrieval_conninfo):
            raise KnowledgeConfigError(
                "VECTOR_STORE=pgvector but this PostgreSQL has no `vector` extension "
                "(install pgvector, or set VECTOR_STORE=none)"
            )
        store = PgVectorStore(embeddings, collection=collection_name(settings),
                              dimensions=settings.embedding_dimensions, pool=search_pool,
                              conninfo=retrieval_conninfo)
        label = f"pgvector:{collection_name(settings)}"
    else:
        store = make_pinecone_store(settings, embeddings)
        label = f"pinecone:{settings.pinecone_index_name}/{settings.pinecone_namespace}"
    vector = VectorRetriever(vectorstore=store, backend=backend, name=backend, k=settings.retrieval_k)
    indexer = KnowledgeIndexer(repo, store, index_label=label)
    if settings.retrieval_mode == "fulltext":
        return KnowledgeStack(indexer, fulltext, fulltext.name or "postgres-fts", store)
    if settings.retrieval_mode == "vector":
        return KnowledgeStack(indexer, vector, backend, store)
    name = f"hybrid({backend}+postgres-fts)"
    hybrid = HybridRetriever(retrievers=[vector, fulltext], k=settings.retrieval_k,
                             candidates=settings.retrieval_candidates, name=name)
    return KnowledgeStack(indexer, hybrid, name, store)
