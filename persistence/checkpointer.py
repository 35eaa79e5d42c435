"""The LangGraph checkpointer on the shared pool: a session's memory is its thread's checkpoint."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import CheckpointTuple, get_checkpoint_id
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from psycopg import AsyncConnection, AsyncCursor
from psycopg.rows import DictRow, dict_row
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

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The stock read, or, once, the thread's latest checkpoint as read beside the statement that began the
        turn (`LatestCheckpoint`, handed over with `using_prefetched` around the run)."""
        held = _PREFETCHED.get()
        configurable = config.get("configurable", {})
        if (held is not None and not held.used and held.thread_id == str(configurable.get("thread_id"))
                and not configurable.get("checkpoint_ns") and not get_checkpoint_id(config)):
            held.used = True
            return await held.value()
        return await super().aget_tuple(config)

    def latest(self, thread_id: str) -> LatestCheckpoint:
        """A read of the thread's latest checkpoint to send in another statement's round trip (persistence/db.py
        `Pipelined`)."""
        return LatestCheckpoint(self, thread_id)

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


_PREFETCHED: ContextVar[LatestCheckpoint | None] = ContextVar("sixshop_prefetched_checkpoint", default=None)


@dataclass(eq=False)
class LatestCheckpoint:
    """A thread's latest checkpoint read in the round trip of the statement that begins a turn, so that the graph
    does not wait for a read of its own (one round trip less before the first token). The statement before it
    in the pipeline claims the session, so the read sees the thread as the run will: no other turn of the
    session writes it until this one ends. The row is turned into a checkpoint only when the run starts (a
    message the claim refuses, or keeps for an operator, costs no decoding). A read that cannot stand in for the
    stock one (a checkpoint from before v4, whose pending sends the stock read migrates) gives `ready` False and
    the graph reads as usual."""

    saver: PooledPostgresSaver
    thread_id: str
    ready: bool = False
    used: bool = False
    _cursor: AsyncCursor[DictRow] | None = None
    _row: DictRow | None = None
    _value: CheckpointTuple | None = None

    async def send(self, conn: AsyncConnection[Any]) -> None:
        self._cursor = conn.cursor(binary=True, row_factory=dict_row)
        await self._cursor.execute(self.saver.SELECT_SQL + _LATEST_WHERE, (self.thread_id, ""), binary=True)

    async def receive(self) -> None:
        assert self._cursor is not None
        row, self._cursor = await self._cursor.fetchone(), None
        self.ready = row is None or row["checkpoint"]["v"] >= 4 or not row["parent_checkpoint_id"]
        self._row = row if self.ready else None

    async def value(self) -> CheckpointTuple | None:
        """The checkpoint read (None: the thread has none yet)."""
        if self._row is not None:
            self._value, self._row = await self.saver._load_checkpoint_tuple(self._row), None
        return self._value

    async def messages(self) -> list[Any]:
        """The conversation in the checkpoint read (none before a thread's first)."""
        value = await self.value()
        return list(value.checkpoint["channel_values"].get("messages", [])) if value is not None else []


# the stock saver's "latest checkpoint" clause (AsyncPostgresSaver.aget_tuple without a checkpoint_id)
_LATEST_WHERE = "WHERE thread_id = %s AND checkpoint_ns = %s ORDER BY checkpoint_id DESC LIMIT 1"


@contextmanager
def using_prefetched(latest: LatestCheckpoint | None) -> Iterator[None]:
    """Within this block (the run's task), the saver's first read of `latest`'s thread is `latest`'s value."""
    if latest is None or not latest.ready:
        yield
        return
    token = _PREFETCHED.set(latest)
    try:
        yield
    finally:
        _PREFETCHED.reset(token)


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
