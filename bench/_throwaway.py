"""A throwaway embedded PostgreSQL with the schema and a help centre indexed in it, for the benches that measure
retrieval and answers (bench/fusion.py, bench/answerer.py): started in a temporary folder, gone on exit."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from persistence.db import PoolConfig, open_pool
from persistence.embedded import embedded_conninfo, start_embedded
from persistence.migrations import migrate
from server.integrations.ingest import ingest_path
from server.integrations.knowledge import KnowledgeStack, build_knowledge
from server.settings import Settings


@asynccontextmanager
async def help_centre(knowledge: Path, settings: Settings | None = None) -> AsyncIterator[KnowledgeStack]:
    """`knowledge` (a folder of pages) indexed as `serve` would with `settings` (default: no key, local embeddings,
    hybrid retrieval), on a PostgreSQL of its own."""
    server = start_embedded(Path(tempfile.mkdtemp(prefix="sixshop-bench-pg-")) / "data", delete_on_exit=True)
    try:
        pool = await open_pool(PoolConfig(conninfo=embedded_conninfo(server), min_size=1, max_size=4))
        try:
            await migrate(pool)
            stack = await build_knowledge(settings or Settings(retrieval_mode="hybrid"), pool)
            await ingest_path(stack.indexer, knowledge, source="sample")
            try:
                yield stack
            finally:
                await stack.aclose()
        finally:
            await pool.close()
    finally:
        server.cleanup()
