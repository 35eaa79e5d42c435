"""The knowledge tables, incremental indexing into them (and a vector store), and full-text retrieval.

knowledge_documents / knowledge_chunks hold every passage whatever the backend: the full-text index
lives on them, and they remember what was ingested (a fingerprint per document) so a re-run only
touches what changed. When a vector store is configured, `KnowledgeIndexer` writes each chunk to it
too, under the same id (`<doc_id>#<n>`), before the rows: a document whose embedding failed keeps its
old fingerprint and is retried on the next run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import psycopg
from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.vectorstores import VectorStore
from pydantic import Field

from graph.retrieval import ScopedRetriever, passage_metadata
from graph.text import DEFAULT_ANALYZER, KIWI_SETUP, search_text, with_help_centre_words
from persistence.db import Pool, async_connection, sync_connection

SEARCH_SQL = "select chunk_id, doc_id, title, url, content, score from kb_search(%s, %s, %s, %s)"
COUNT_SQL = "select count(*) as n from knowledge_chunks"
OTHER_SOURCES_SQL = "select count(*) as n from knowledge_documents where source <> %s"
VERSIONS_SQL = "select doc_id, content_hash from knowledge_documents where source = %s"
CHUNK_IDS_SQL = "select doc_id, chunk_id from knowledge_chunks where doc_id = any(%s) order by doc_id, chunk_index"
UPSERT_DOC_SQL = """
insert into knowledge_documents (doc_id, store_id, title, url, source, content_hash, audience)
values (%s, %s, %s, %s, %s, %s, %s)
on conflict (doc_id) do update
   set store_id = excluded.store_id, title = excluded.title, url = excluded.url,
       source = excluded.source, content_hash = excluded.content_hash, audience = excluded.audience
"""
DELETE_CHUNKS_SQL = "delete from knowledge_chunks where doc_id = %s"
INSERT_CHUNK_SQL = """
insert into knowledge_chunks (chunk_id, doc_id, store_id, chunk_index, title, url, content, search_text, audience)
values (%s, %s, %s, %s, %s, %s, %s, %s, %s)
"""
DELETE_DOCS_SQL = "delete from knowledge_documents where doc_id = any(%s)"

# bump when chunking or what a chunk carries changes, so the next run rewrites every document
# (3: the audience, in the rows and the vector stores' metadata)
CHUNKER_VERSION = "3"
AUDIENCES = ("shopper", "seller", "all")


@dataclass(frozen=True)
class Chunk:
    title: str
    content: str


@dataclass(frozen=True)
class KnowledgeDocument:
    """One source document (a file, a Notion page) split into chunks.

    `version` says what was read: a content hash for files, `last_edited_time` for Notion pages.
    """

    doc_id: str
    title: str
    url: str | None
    store_id: str | None
    source: str
    version: str
    chunks: Sequence[Chunk]
    audience: str = "all"  # who it is written for: shopper, seller or all

    def chunk_id(self, index: int) -> str:
        return f"{self.doc_id}#{index}"

    def as_documents(self) -> list[Document]:
        return [
            Document(
                id=self.chunk_id(i),
                page_content=c.content,
                metadata=passage_metadata(title=c.title, url=self.url, doc_id=self.doc_id, store_id=self.store_id,
                                          chunk_index=i, source=self.source, audience=self.audience),
            )
            for i, c in enumerate(self.chunks)
        ]


class SyncProgress(Protocol):
    """What a sync tells as it goes (server/integrations/progress.py: a bar on a terminal, log lines otherwise)."""

    def start(self, total: int) -> None: ...
    def advance(self, title: str, outcome: str) -> None: ...
    def stop(self) -> None: ...


@dataclass
class IngestReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    failed: int = 0
    chunks: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (doc id, reason)

    def summary(self, noun: str = "documents") -> str:
        rate = f" ({self.chunks / self.seconds:.1f} chunks/s)" if self.chunks and self.seconds else ""
        return (f"{noun} added {self.added}, updated {self.updated}, unchanged {self.unchanged}, "
                f"deleted {self.deleted}, failed {self.failed}; chunks written {self.chunks}; "
                f"{self.seconds:.1f} s{rate}")


class KnowledgeRepository:
    def __init__(self, pool: Pool, analyzer: str = DEFAULT_ANALYZER) -> None:
        self.pool = pool
        self.analyzer = analyzer  # how Korean text is cut for the full-text index (graph/text.py)

    async def chunk_count(self) -> int:
        async with self.pool.connection() as conn:
            cur = await conn.execute(COUNT_SQL)
            row = await cur.fetchone()
        return int(row["n"]) if row else 0

    async def documents_outside(self, source: str) -> int:
        async with self.pool.connection() as conn:
            cur = await conn.execute(OTHER_SOURCES_SQL, (source,))
            row = await cur.fetchone()
        return int(row["n"]) if row else 0

    async def fingerprints(self, source: str) -> dict[str, str]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(VERSIONS_SQL, (source,))
            return {r["doc_id"]: r["content_hash"] for r in await cur.fetchall()}

    async def chunk_ids(self, doc_ids: Sequence[str]) -> list[str]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(CHUNK_IDS_SQL, (list(doc_ids),))
            return [r["chunk_id"] for r in await cur.fetchall()]

    async def replace_document(self, doc: KnowledgeDocument, fingerprint: str) -> None:
        """The document row and all its chunks, in one transaction."""
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(
                UPSERT_DOC_SQL, (doc.doc_id, doc.store_id, doc.title, doc.url, doc.source, fingerprint, doc.audience)
            )
            await conn.execute(DELETE_CHUNKS_SQL, (doc.doc_id,))
            async with conn.cursor() as cur:
                await cur.executemany(
                    INSERT_CHUNK_SQL,
                    [
                        (doc.chunk_id(i), doc.doc_id, doc.store_id, i, c.title, doc.url, c.content,
                         search_text(f"{c.title}\n{c.content}", self.analyzer), doc.audience)
                        for i, c in enumerate(doc.chunks)
                    ],
                )

    async def delete_documents(self, doc_ids: Sequence[str]) -> int:
        async with self.pool.connection() as conn:
            cur = await conn.execute(DELETE_DOCS_SQL, (list(doc_ids),))
            return cur.rowcount


class KnowledgeIndexer:
    """Writes documents to the knowledge tables and, when given, a vector store (same chunk ids).

    `index_label` names the vector index (e.g. "pgvector:text-embedding-3-small:1536"); it is part
    of each document's fingerprint, so pointing the service at another index re-embeds everything.
    """

    def __init__(self, repo: KnowledgeRepository, vectorstore: VectorStore | None = None,
                 index_label: str = "postgres-fts") -> None:
        self.repo = repo
        self.vectorstore = vectorstore
        self.index_label = index_label

    def fingerprint(self, version: str) -> str:
        """What a document was indexed from and how: another analyzer or index re-indexes it."""
        kiwi = f"|{KIWI_SETUP}" if "kiwi" in self.repo.analyzer else ""
        recipe = f"{version}|{self.index_label}|chunker-{CHUNKER_VERSION}|analyzer-{self.repo.analyzer}{kiwi}"
        return hashlib.sha256(recipe.encode()).hexdigest()

    async def is_current(self, doc_id: str, version: str, known: dict[str, str]) -> bool:
        return known.get(doc_id) == self.fingerprint(version)

    async def write(self, doc: KnowledgeDocument) -> int:
        """Index one document (vectors first, then rows); returns the number of chunks written."""
        return await self.write_many([doc])

    async def write_many(self, docs: Sequence[KnowledgeDocument]) -> int:
        """Index documents together: their chunks embedded in one call (a batch keeps every core busy), then each
        document's rows; returns the number of chunks written."""
        if self.vectorstore is not None:
            old_ids = set(await self.repo.chunk_ids([d.doc_id for d in docs]))
            new_docs = [chunk for doc in docs for chunk in doc.as_documents()]
            if new_docs:
                await self.vectorstore.aadd_documents(new_docs, ids=[str(d.id) for d in new_docs])
            stale = sorted(old_ids - {str(d.id) for d in new_docs})
            if stale:
                await self.vectorstore.adelete(stale)
        for doc in docs:
            await self.repo.replace_document(doc, self.fingerprint(doc.version))
        return sum(len(doc.chunks) for doc in docs)

    async def remove(self, doc_ids: Sequence[str]) -> int:
        if not doc_ids:
            return 0
        if self.vectorstore is not None:
            ids = await self.repo.chunk_ids(doc_ids)
            if ids:
                await self.vectorstore.adelete(ids)
        return await self.repo.delete_documents(doc_ids)

    async def sync(self, source: str, documents: Sequence[KnowledgeDocument], *, prune: bool = True,
                   progress: SyncProgress | None = None, batch_chunks: int = 64) -> IngestReport:
        """Write what changed, in batches of about `batch_chunks` chunks; with prune, remove this source's documents
        not given. `progress` hears of each document written."""
        report = IngestReport()
        known = await self.repo.fingerprints(source)
        changed = []
        for doc in documents:
            if await self.is_current(doc.doc_id, doc.version, known):
                report.unchanged += 1
            else:
                changed.append(replace(doc, source=source))
        if progress is not None:
            progress.start(len(changed))
        batch: list[KnowledgeDocument] = []
        for i, doc in enumerate(changed):
            batch.append(doc)
            if sum(len(d.chunks) for d in batch) < batch_chunks and i + 1 < len(changed):
                continue
            report.chunks += await self.write_many(batch)
            for written in batch:
                outcome = "updated" if written.doc_id in known else "added"
                report.updated += outcome == "updated"
                report.added += outcome == "added"
                if progress is not None:
                    progress.advance(written.title, outcome)
            batch = []
        if progress is not None:
            progress.stop()
        if prune:
            given = {d.doc_id for d in documents}
            report.deleted = await self.remove(sorted(set(known) - given))
        return report


class FullTextRetriever(ScopedRetriever):
    """PostgreSQL full-text search over knowledge_chunks (no embedding model needed).

    Async calls use `pool`; sync calls open a short connection from `conninfo`.
    """

    name: str | None = "postgres-fts"
    analyzer: str = DEFAULT_ANALYZER  # the index's (KnowledgeRepository.analyzer): a query is cut the same way
    pool: Any = Field(default=None, exclude=True)
    conninfo: str | None = Field(default=None, exclude=True, repr=False)

    def _sync_conn(self) -> AbstractContextManager[psycopg.Connection[dict[str, Any]]]:
        return sync_connection(self.conninfo, "FullTextRetriever")

    def _async_conn(self) -> AbstractAsyncContextManager[psycopg.AsyncConnection[dict[str, Any]]]:
        return async_connection(self.pool, self.conninfo, "FullTextRetriever")

    def _query_text(self, query: str) -> str:
        """What the index is searched for: the query with the help centre's words for a shopper's ("무배" →
        무료배송, graph/lexicon.py), cut as the index was."""
        return search_text(with_help_centre_words(query), self.analyzer)

    @staticmethod
    def _documents(rows: list[dict[str, Any]]) -> list[Document]:
        return [
            Document(
                id=r["chunk_id"],
                page_content=r["content"],
                # ts_rank_cd's rank r as r / (1 + r), PostgreSQL's own normalisation 32: a relevance in 0–1, the
                # same order
                metadata=passage_metadata(title=r["title"], url=r["url"], doc_id=r["doc_id"],
                                          score=float(r["score"]) / (1 + float(r["score"]))),
            )
            for r in rows
        ]

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        k, store_id = self._args(kwargs)
        with self._sync_conn() as conn:
            rows = conn.execute(SEARCH_SQL, (self._query_text(query), store_id, k,
                                             self._audience(kwargs))).fetchall()
        return self._documents(rows)

    async def _asearch(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        k, store_id = self._args(kwargs)
        async with self._async_conn() as conn:
            cur = await conn.execute(SEARCH_SQL, (self._query_text(query), store_id, k,
                                                  self._audience(kwargs)))
            rows = await cur.fetchall()
        return self._documents(rows)
