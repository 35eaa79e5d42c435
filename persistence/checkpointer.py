"""The LangGraph checkpointer on the shared pool: a session's memory is its thread's checkpoint."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from psycopg_pool import AsyncConnectionPool

from persistence.db import Pool


class _NoLock(asyncio.Lock):
    """An asyncio.Lock that never waits: each cursor of a pooled saver has a connection of its own."""

    async def acquire(self) -> Literal[True]:
        return True

    def release(self) -> None:
        return None


class PooledPostgresSaver(AsyncPostgresSaver):
    """The stock saver without its process-wide lock when it runs on a connection pool.

    `AsyncPostgresSaver` takes one `asyncio.Lock` around every cursor, because it may be given a single
    connection. On a pool every cursor checks out its own connection, so the lock only made all
    checkpoint reads, writes and prunes of concurrent turns wait for each other, one round trip at a
    time (measured in bench/run.py at 100 concurrent turns). Everything else is the stock saver.
    """

    def __init__(self, conn: Any, **kwargs: Any) -> None:
        super().__init__(conn, **kwargs)
        if isinstance(conn, AsyncConnectionPool):
            self.lock = _NoLock()


def make_checkpointer(pool: Pool) -> AsyncPostgresSaver:
    return PooledPostgresSaver(pool)
