"""The process's one async connection pool, shared by repositories and the LangGraph saver."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

APPLICATION_NAME = "sixshop-ai-agent"


@dataclass(frozen=True)
class PoolConfig:
    conninfo: str
    min_size: int = 2
    max_size: int = 20
    max_idle_s: float = 30.0
    timeout_s: float = 5.0
    application_name: str = APPLICATION_NAME


def pool_kwargs(application_name: str = APPLICATION_NAME) -> dict[str, object]:
    # AsyncPostgresSaver needs autocommit, no server-side prepared statements (safe behind
    # pgbouncer/RDS proxy) and dict rows; our repositories are written for the same.
    return {
        "autocommit": True,
        "prepare_threshold": 0,
        "row_factory": dict_row,
        "application_name": application_name,
    }


class LatencyWindow:
    """The last `size` durations (seconds), for percentiles of recent behaviour."""

    def __init__(self, size: int = 4096) -> None:
        self._values: deque[float] = deque(maxlen=size)

    def record(self, seconds: float) -> None:
        self._values.append(seconds)

    def __len__(self) -> int:
        return len(self._values)

    def percentile(self, q: float) -> float | None:
        if not self._values:
            return None
        ordered = sorted(self._values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# How long a connection may be waited for when the caller gives no timeout. Unset: the pool's own
# (DB_CONNECTION_TIMEOUT, so a request is refused with 503 quickly when the database is away). A turn
# that has started streaming sets it to its own deadline: under a burst of turns the wait is the CPU's
# backlog, and an accepted turn should wait for its queries rather than fail after the answer began.
POOL_WAIT_S: ContextVar[float | None] = ContextVar("pool_wait_s", default=None)


class TimedPool(AsyncConnectionPool[AsyncConnection[dict[str, Any]]]):
    """The pool, timing each use: wait for a connection, then how long it is held (the database work).

    Every repository and the LangGraph saver go through `connection()`, so this is the service's
    database latency as the service sees it; the capacity report reads its p95.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hold_times = LatencyWindow()
        self.observers: list[Callable[[float, float], None]] = []  # (wait_s, hold_s)

    @asynccontextmanager  # same signature as AsyncConnectionPool.connection
    async def connection(self, timeout: float | None = None) -> AsyncIterator[AsyncConnection[dict[str, Any]]]:  # noqa: ASYNC109
        asked = time.perf_counter()
        if timeout is None:
            timeout = POOL_WAIT_S.get()
        async with super().connection(timeout=timeout) as conn:
            got = time.perf_counter()
            try:
                yield conn
            finally:
                held = time.perf_counter() - got
                self.hold_times.record(held)
                for observe in self.observers:
                    observe(got - asked, held)


async def open_pool(cfg: PoolConfig) -> TimedPool:
    pool = TimedPool(
        cfg.conninfo,
        min_size=cfg.min_size,
        max_size=cfg.max_size,
        max_idle=cfg.max_idle_s,
        timeout=cfg.timeout_s,
        kwargs=pool_kwargs(cfg.application_name),
        open=False,
        name=cfg.application_name,
    )
    await pool.open(wait=True, timeout=max(cfg.timeout_s, 10.0))
    return pool


Pool = AsyncConnectionPool[AsyncConnection[dict[str, Any]]]  # a TimedPool in the service


@contextmanager
def sync_connection(conninfo: str | None, owner: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    """A short sync connection, for the sync half of LangChain interfaces (scripts, standard tests)."""
    if conninfo is None:
        raise RuntimeError(f"sync use of {owner} needs `conninfo`")
    with psycopg.connect(conninfo, autocommit=True, row_factory=dict_row) as conn:
        yield conn


@asynccontextmanager
async def async_connection(pool: Pool | None, conninfo: str | None, owner: str
                           ) -> AsyncIterator[AsyncConnection[dict[str, Any]]]:
    """A connection from the pool, or a short one from `conninfo` when there is no pool."""
    if pool is not None:
        async with pool.connection() as conn:
            yield conn
        return
    if conninfo is None:
        raise RuntimeError(f"{owner} needs a pool or a conninfo")
    async with await AsyncConnection.connect(conninfo, autocommit=True, row_factory=dict_row) as conn:
        yield conn
