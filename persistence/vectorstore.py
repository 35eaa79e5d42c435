"""PgVectorStore: a LangChain VectorStore on our own PostgreSQL (the `vector` extension, HNSW index).

Why our own class rather than langchain-postgres: it runs on the service's one psycopg pool (no
second pool, no SQLAlchemy), keeps `store_id` in a column so a store's search is scoped in SQL
(shared passages plus its own), and gives every embedding model its own collection and index.

Async methods use the pool when one is given; sync methods (scripts, the standard tests) open a
short connection from `conninfo`. Scores are cosine similarity (1 = same direction).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Any, ClassVar

import psycopg
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore
from psycopg import sql
from psycopg.types.json import Jsonb

from persistence.db import Pool, async_connection, sync_connection

MAX_INDEXED_DIMENSIONS = 2000  # pgvector's HNSW limit for the `vector` type

# Two writers creating a collection's index at once: `create index if not exists` is not safe against a
# concurrent creation of the same name (unique violation in pg_class), so creators take this lock first
# (concurrent pages of one ingest run, or two processes).
_INDEX_LOCK = "select pg_advisory_xact_lock(hashtext(%s))"
_UPSERT = """
insert into kb_vectors (collection, id, store_id, content, metadata, embedding, audience)
values (%s, %s, %s, %s, %s, %s::vector, %s)
on conflict (collection, id) do update
   set store_id = excluded.store_id, content = excluded.content, metadata = excluded.metadata,
       embedding = excluded.embedding, audience = excluded.audience, updated_at = now()
"""
_DELETE = "delete from kb_vectors where collection = %s and id = any(%s)"
_GET = "select id, content, metadata from kb_vectors where collection = %s and id = any(%s)"
# search SQL is built per call: the dimension is part of the indexed expression


def vector_literal(values: Sequence[float]) -> str:
    return "[" + ",".join(repr(float(v)) for v in values) + "]"


class VectorDimensionError(ValueError):
    """The embedding model returned vectors of another size than the collection's."""


class PgVectorStore(VectorStore):
    """Documents with embeddings in `kb_vectors`, one collection per embedding model."""

    backend: ClassVar[str] = "pgvector"
    supports_visible_to: ClassVar[bool] = True  # see graph.retrieval.store_scope

    def __init__(
        self,
        embedding: Embeddings,
        *,
        collection: str,
        dimensions: int,
        pool: Pool | None = None,
        conninfo: str | None = None,
    ) -> None:
        if pool is None and conninfo is None:
            raise ValueError("PgVectorStore needs a pool, a conninfo, or both")
        if not 0 < dimensions <= MAX_INDEXED_DIMENSIONS:
            raise ValueError(f"dimensions must be 1..{MAX_INDEXED_DIMENSIONS} to be HNSW-indexed, got {dimensions}")
        self._embedding = embedding
        self.collection = collection
        self.dimensions = dimensions
        self.pool = pool
        self.conninfo = conninfo
        self._index_ready = False

    @property
    def embeddings(self) -> Embeddings:
        return self._embedding

    # -- connections ------------------------------------------------------------------------------

    def _sync_conn(self) -> AbstractContextManager[psycopg.Connection[dict[str, Any]]]:
        return sync_connection(self.conninfo, "PgVectorStore")

    def _async_conn(self) -> AbstractAsyncContextManager[psycopg.AsyncConnection[dict[str, Any]]]:
        return async_connection(self.pool, self.conninfo, "PgVectorStore")

    # -- SQL pieces ---------------------------------------------------------------------------------

    def index_name(self) -> str:
        return "kb_vectors_hnsw_" + hashlib.sha256(self.collection.encode()).hexdigest()[:16]

    def _index_sql(self) -> sql.Composed:
        return sql.SQL(
            "create index if not exists {name} on kb_vectors using hnsw "
            "((embedding::vector({dims})) vector_cosine_ops) where collection = {collection}"
        ).format(name=sql.Identifier(self.index_name()), dims=sql.Literal(self.dimensions),
                 collection=sql.Literal(self.collection))

    def _search_sql(self, scoped: bool, audience: bool = False) -> sql.Composed:
        # the ORDER BY expression must be the indexed one for the HNSW index to serve it
        dims = sql.Literal(self.dimensions)
        return sql.SQL(
            "select id, content, metadata, 1 - (embedding::vector({dims}) <=> %(q)s::vector({dims})) as score "
            "from kb_vectors where collection = %(c)s {scope} {audience} "
            "order by embedding::vector({dims}) <=> %(q)s::vector({dims}) limit %(k)s"
        ).format(dims=dims, scope=sql.SQL("and (store_id is null or store_id = %(s)s)" if scoped else ""),
                 audience=sql.SQL("and audience in ('all', %(a)s)" if audience else ""))

    def _rows(self, documents: Sequence[Document], ids: Sequence[str], vectors: Sequence[Sequence[float]]
              ) -> list[tuple[Any, ...]]:
        rows = []
        for doc, doc_id, vec in zip(documents, ids, vectors, strict=True):
            if len(vec) != self.dimensions:
                raise VectorDimensionError(
                    f"the embedding model returned {len(vec)} dimensions; collection {self.collection!r} "
                    f"holds {self.dimensions}"
                )
            store_id = doc.metadata.get("store_id")
            rows.append((self.collection, doc_id, store_id or None, doc.page_content, Jsonb(doc.metadata),
                         vector_literal(vec), doc.metadata.get("audience") or "all"))
        return rows

    @staticmethod
    def _ids_for(documents: Sequence[Document], ids: Sequence[str] | None) -> list[str]:
        if ids is not None:
            if len(ids) != len(documents):
                raise ValueError("ids and documents differ in length")
            return [str(i) for i in ids]
        return [d.id or str(uuid.uuid4()) for d in documents]

    @staticmethod
    def _scope(kwargs: dict[str, Any]) -> tuple[bool, str | None]:
        """`visible_to=<store>` limits a search to shared passages and that store's own (and `audience=<who>` to the
        pages written for them or for all)."""
        if "visible_to" in kwargs:
            return True, kwargs["visible_to"]
        return False, None

    @staticmethod
    def _document(row: dict[str, Any]) -> Document:
        return Document(id=row["id"], page_content=row["content"], metadata=dict(row["metadata"] or {}))

    # -- writes -----------------------------------------------------------------------------------

    def add_documents(self, documents: list[Document], **kwargs: Any) -> list[str]:
        ids = self._ids_for(documents, kwargs.get("ids"))
        if not documents:
            return ids
        rows = self._rows(documents, ids, self._embedding.embed_documents([d.page_content for d in documents]))
        with self._sync_conn() as conn:
            if not self._index_ready:
                with conn.transaction():
                    conn.execute(_INDEX_LOCK, (self.index_name(),))
                    conn.execute(self._index_sql())
                self._index_ready = True
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(_UPSERT, rows)
        return ids

    async def aadd_documents(self, documents: list[Document], **kwargs: Any) -> list[str]:
        ids = self._ids_for(documents, kwargs.get("ids"))
        if not documents:
            return ids
        vectors = await self._embedding.aembed_documents([d.page_content for d in documents])
        rows = self._rows(documents, ids, vectors)
        async with self._async_conn() as conn:
            if not self._index_ready:
                async with conn.transaction():
                    await conn.execute(_INDEX_LOCK, (self.index_name(),))
                    await conn.execute(self._index_sql())
                self._index_ready = True
            async with conn.transaction(), conn.cursor() as cur:
                await cur.executemany(_UPSERT, rows)
        return ids

    def add_texts(self, texts: Iterable[str], metadatas: list[dict[str, Any]] | None = None, *,
                  ids: list[str] | None = None, **kwargs: Any) -> list[str]:
        texts = list(texts)
        metas = metadatas or [{} for _ in texts]
        docs = [Document(page_content=t, metadata=m) for t, m in zip(texts, metas, strict=True)]
        return self.add_documents(docs, ids=ids)

    async def aadd_texts(self, texts: Iterable[str], metadatas: list[dict[str, Any]] | None = None, *,
                         ids: list[str] | None = None, **kwargs: Any) -> list[str]:
        texts = list(texts)
        metas = metadatas or [{} for _ in texts]
        docs = [Document(page_content=t, metadata=m) for t, m in zip(texts, metas, strict=True)]
        return await self.aadd_documents(docs, ids=ids)

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        with self._sync_conn() as conn:
            conn.execute(_DELETE, (self.collection, list(ids or [])))
        return True

    async def adelete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        async with self._async_conn() as conn:
            await conn.execute(_DELETE, (self.collection, list(ids or [])))
        return True

    def drop_collection(self) -> None:
        """Every vector of this collection and its index (e.g. after moving to another model)."""
        with self._sync_conn() as conn, conn.transaction():
            conn.execute("delete from kb_vectors where collection = %s", (self.collection,))
            conn.execute(sql.SQL("drop index if exists {}").format(sql.Identifier(self.index_name())))
        self._index_ready = False

    # -- reads ------------------------------------------------------------------------------------

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        with self._sync_conn() as conn:
            rows = conn.execute(_GET, (self.collection, list(ids))).fetchall()
        return [self._document(r) for r in rows]

    async def aget_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        async with self._async_conn() as conn:
            cur = await conn.execute(_GET, (self.collection, list(ids)))
            rows = await cur.fetchall()
        return [self._document(r) for r in rows]

    def similarity_search_by_vector_with_score(
        self, embedding: list[float], k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        scoped, store_id = self._scope(kwargs)
        audience = kwargs.get("audience")
        params = {"q": vector_literal(embedding), "c": self.collection, "s": store_id, "k": k, "a": audience}
        with self._sync_conn() as conn, conn.transaction():
            # filtered HNSW scans keep going until k rows pass the filter (pgvector >= 0.8)
            conn.execute("select set_config('hnsw.iterative_scan', 'strict_order', true)")
            rows = conn.execute(self._search_sql(scoped, audience is not None), params).fetchall()
        return [(self._document(r), float(r["score"])) for r in rows]

    async def asimilarity_search_by_vector_with_score(
        self, embedding: list[float], k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        scoped, store_id = self._scope(kwargs)
        audience = kwargs.get("audience")
        params = {"q": vector_literal(embedding), "c": self.collection, "s": store_id, "k": k, "a": audience}
        async with self._async_conn() as conn, conn.transaction():
            await conn.execute("select set_config('hnsw.iterative_scan', 'strict_order', true)")
            cur = await conn.execute(self._search_sql(scoped, audience is not None), params)
            rows = await cur.fetchall()
        return [(self._document(r), float(r["score"])) for r in rows]

    def similarity_search_with_score(self, query: str, k: int = 4, **kwargs: Any) -> list[tuple[Document, float]]:
        return self.similarity_search_by_vector_with_score(self._embedding.embed_query(query), k, **kwargs)

    async def asimilarity_search_with_score(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        vector = await self._embedding.aembed_query(query)
        return await self.asimilarity_search_by_vector_with_score(vector, k, **kwargs)

    def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k, **kwargs)]

    async def asimilarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return [doc for doc, _ in await self.asimilarity_search_with_score(query, k, **kwargs)]

    def similarity_search_by_vector(self, embedding: list[float], k: int = 4, **kwargs: Any) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_by_vector_with_score(embedding, k, **kwargs)]

    async def asimilarity_search_by_vector(self, embedding: list[float], k: int = 4, **kwargs: Any
                                           ) -> list[Document]:
        return [doc for doc, _ in await self.asimilarity_search_by_vector_with_score(embedding, k, **kwargs)]

    def _select_relevance_score_fn(self) -> Any:
        return lambda score: score  # already cosine similarity

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> PgVectorStore:
        """kwargs: collection, dimensions, and conninfo (and/or pool) as for the constructor."""
        store = cls(embedding, collection=kwargs["collection"], dimensions=kwargs["dimensions"],
                    pool=kwargs.get("pool"), conninfo=kwargs.get("conninfo"))
        store.add_texts(texts, metadatas, ids=ids)
        return store
