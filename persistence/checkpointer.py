"""The LangGraph checkpointer on the shared pool: a session's memory is its thread's checkpoint."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
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

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """The stock `aprune`, with keep_latest in one statement per thread where the thread allows it
        (all the service's threads: one graph, no subgraphs, no DeltaChannel); the stock prune otherwise."""
        if strategy != "keep_latest" or isinstance(thread_ids, str):
            return await super().aprune(thread_ids, strategy=strategy)
        others = []
        for thread_id in dict.fromkeys(str(t) for t in thread_ids):
            async with self._cursor() as cur:
                await cur.execute(PRUNE_ROOT_ONLY_SQL, {"thread": thread_id}, prepare=False)
                row = await cur.fetchone()
            if row is not None and row["found"] and not row["simple"]:
                others.append(thread_id)
        if others:
            await super().aprune(others, strategy=strategy)


# keep_latest for a thread whose checkpoints are all in the root namespace, in one statement (the stock
# saver's takes 13 to 16 round trips, statement by statement in a REPEATABLE READ transaction). One
# statement reads one snapshot, as the stock transaction does: a checkpoint or blob a next turn saves
# meanwhile is neither seen nor deleted. Blobs go only if a deleted checkpoint used them and the head does
# not: a newer checkpoint refers to the head's versions or newer ones, never to an older one.
# When the thread is not that simple (a subgraph's namespace, a DeltaChannel's markers, a head from before
# checkpoint v4 whose pending sends live with its parent), `simple` is empty, nothing is touched, and the
# stock prune does it.
PRUNE_ROOT_ONLY_SQL = """
with head as (
    select checkpoint_id, checkpoint from checkpoints
     where thread_id = %(thread)s and checkpoint_ns = ''
     order by checkpoint_id desc limit 1
), simple as (
    select h.checkpoint_id, h.checkpoint from head h
     where (h.checkpoint ->> 'v')::int >= 4
       and not exists (
           select 1 from checkpoints c
            where c.thread_id = %(thread)s
              and (c.checkpoint_ns <> '' or c.metadata ? 'counters_since_delta_snapshot'
                   or c.metadata ? 'delta_writes_versioned'))
       and not exists (
           select 1 from checkpoints c
            cross join lateral jsonb_each(c.checkpoint -> 'channel_values') as v
            where c.thread_id = %(thread)s and v.value = 'true'::jsonb)
), gone as (
    delete from checkpoints c using simple s
     where c.thread_id = %(thread)s and c.checkpoint_ns = '' and c.checkpoint_id <> s.checkpoint_id
    returning c.checkpoint_id, c.checkpoint -> 'channel_versions' as versions
), writes as (
    delete from checkpoint_writes w
     where w.thread_id = %(thread)s and w.checkpoint_ns = ''
       and w.checkpoint_id in (select checkpoint_id from gone)
), parent as (
    update checkpoints c set parent_checkpoint_id = null from simple s
     where c.thread_id = %(thread)s and c.checkpoint_ns = '' and c.checkpoint_id = s.checkpoint_id
       and c.parent_checkpoint_id is not null
), garbage as (
    select v.key as channel, v.value as version from gone cross join lateral jsonb_each_text(gone.versions) as v
    except
    select v.key, v.value from simple s cross join lateral jsonb_each_text(s.checkpoint -> 'channel_versions') as v
), blobs as (
    delete from checkpoint_blobs b using garbage g
     where b.thread_id = %(thread)s and b.checkpoint_ns = '' and b.channel = g.channel and b.version = g.version
)
select exists (select 1 from head) as found, exists (select 1 from simple) as simple
"""


def make_checkpointer(pool: Pool) -> AsyncPostgresSaver:
    return PooledPostgresSaver(pool)
