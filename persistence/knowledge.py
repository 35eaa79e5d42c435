"""The knowledge tables: incremental document upserts and PostgreSQL full-text retrieval."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from graph.retrieval import Passage
from graph.text import search_text
from persistence.db import Pool

SEARCH_SQL = "select chunk_id, doc_id, title, url, content, score from kb_search(%s, %s, %s)"
COUNT_SQL = "select count(*) as n from knowledge_chunks"
DOC_HASH_SQL = "select content_hash from knowledge_documents where doc_id = %s"
UPSERT_DOC_SQL = """
insert into knowledge_documents (doc_id, store_id, title, url, source, content_hash)
values (%s, %s, %s, %s, %s, %s)
on conflict (doc_id) do update
   set store_id = excluded.store_id, title = excluded.title, url = excluded.url,
       source = excluded.source, content_hash = excluded.content_hash
"""
DELETE_CHUNKS_SQL = "delete from knowledge_chunks where doc_id = %s"
INSERT_CHUNK_SQL = """
insert into knowledge_chunks (chunk_id, doc_id, store_id, chunk_index, title, url, content, search_text)
values (%s, %s, %s, %s, %s, %s, %s, %s)
"""
DELETE_MISSING_SQL = """
delete from knowledge_documents where source = %s and not (doc_id = any(%s)) returning doc_id
"""


@dataclass(frozen=True)
class Chunk:
    title: str
    content: str


@dataclass(frozen=True)
class Document:
    doc_id: str
    title: str
    url: str | None
    store_id: str | None
    source: str
    content_hash: str
    chunks: Sequence[Chunk]


@dataclass
class IngestReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    chunks: int = 0


class KnowledgeRepository:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def chunk_count(self) -> int:
        async with self.pool.connection() as conn:
            cur = await conn.execute(COUNT_SQL)
            row = await cur.fetchone()
        return int(row["n"]) if row else 0

    async def sync(self, source: str, documents: Sequence[Document], *, prune: bool = True) -> IngestReport:
        """Write what changed (by content hash); with prune, drop this source's documents not given."""
        report = IngestReport()
        async with self.pool.connection() as conn, conn.transaction():
            for doc in documents:
                cur = await conn.execute(DOC_HASH_SQL, (doc.doc_id,))
                old = await cur.fetchone()
                if old is not None and old["content_hash"] == doc.content_hash:
                    report.unchanged += 1
                    continue
                await conn.execute(
                    UPSERT_DOC_SQL, (doc.doc_id, doc.store_id, doc.title, doc.url, source, doc.content_hash)
                )
                await conn.execute(DELETE_CHUNKS_SQL, (doc.doc_id,))
                async with conn.cursor() as cur2:
                    await cur2.executemany(
                        INSERT_CHUNK_SQL,
                        [
                            (f"{doc.doc_id}#{i}", doc.doc_id, doc.store_id, i, c.title, doc.url, c.content,
                             search_text(f"{c.title}\n{c.content}"))
                            for i, c in enumerate(doc.chunks)
                        ],
                    )
                report.chunks += len(doc.chunks)
                if old is None:
                    report.added += 1
                else:
                    report.updated += 1
            if prune:
                cur = await conn.execute(DELETE_MISSING_SQL, (source, [d.doc_id for d in documents]))
                report.deleted = len(await cur.fetchall())
        return report


class FullTextRetriever:
    """Retriever over knowledge_chunks with PostgreSQL full-text search (no embedding model needed)."""

    name = "postgres-fts"

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def search(self, query: str, *, store_id: str | None, k: int) -> list[Passage]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(SEARCH_SQL, (search_text(query), store_id, k))
            rows = await cur.fetchall()
        return [
            Passage(id=r["chunk_id"], title=r["title"], url=r["url"], score=float(r["score"]), content=r["content"])
            for r in rows
        ]
