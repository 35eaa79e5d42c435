"""The process's one async connection pool, shared by repositories and the LangGraph saver."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

APPLICATION_NAME = "sixshop-ai-agent"
T = TypeVar("T")
UNAVAILABLE_FAST_FAIL_S = 1.0


class Pipelined(Protocol):
    """A read sent in the round trip of another statement (psycopg's pipeline mode): `send` queues it on the
    connection after that statement, `receive` takes its result once the pipeline has run. In autocommit both
    run in one implicit transaction, in order: the read sees what the statement before it wrote."""

    async def send(self, conn: AsyncConnection[Any]) -> None: ...

    async def receive(self) -> None: ...


@dataclass(frozen=True)
class PoolConfig:
    conninfo: str
    min_size: int = 2
    max_size: int = 20
    max_idle_s: float = 30.0
    timeout_s: float = 5.0
    application_name: str = APPLICATION_NAME
    prepare: bool = True  # server-side prepared statements; off behind a transaction-mode pooler


def pool_kwargs(application_name: str = APPLICATION_NAME, prepare: bool = True) -> dict[str, object]:
    # AsyncPostgresSaver needs autocommit and dict rows; our repositories are written for the same.
    # prepare_threshold=0 prepares every statement on first use (what LangGraph's docs show); None turns
    # prepared statements off, which a transaction-mode pooler needs: PgBouncer 1.18 hands the next
    # transaction to any server connection, where the statement was never prepared.
    return {
        "autocommit": True,
        "prepare_threshold": 0 if prepare else None,
        "row_factory": dict_row,
        "application_name": application_name,
    }


@dataclass(frozen=True)
class ServerFacts:
    """What one probe connection learns about the server behind a conninfo."""

    pooled: bool  # a pooler (PgBouncer, RDS Proxy) sits between us and PostgreSQL
    server_version: int  # server_version_num, e.g. 150020
    user: str
    superuser: bool


PROBE_SQL = """
select pg_backend_pid() as pid, current_setting('server_version_num')::int as version, current_user as usr,
       coalesce((select rolsuper from pg_roles where rolname = current_user), false) as superuser
"""


async def probe(conninfo: str, timeout_s: float = 5.0) -> ServerFacts:
    """Connect once and look. A pooler gives the client a backend key of its own making, so the pid in it
    differs from the pid of the server process that runs our query; on a direct connection they match."""
    async with await AsyncConnection.connect(conninfo, autocommit=True, prepare_threshold=None,
                                             row_factory=dict_row, connect_timeout=max(1, round(timeout_s)),
                                             application_name=APPLICATION_NAME) as conn:
        row = await (await conn.execute(PROBE_SQL)).fetchone()
        assert row is not None
        return ServerFacts(pooled=int(row["pid"]) != conn.info.backend_pid, server_version=int(row["version"]),
                           user=str(row["usr"]), superuser=bool(row["superuser"]))


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

    def __init__(self, *args: Any, behind_pooler: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.behind_pooler = behind_pooler  # its connections go through a transaction-mode pooler
        self.hold_times = LatencyWindow()
        self.observers: list[Callable[[float, float], None]] = []  # (wait_s, hold_s)
        self._checking: asyncio.Task[None] | None = None
        # when a connection attempt last failed, or a request waited in vain for a connection
        self._unavailable_at: float | None = None

    @asynccontextmanager  # same signature as AsyncConnectionPool.connection
    async def connection(self, timeout: float | None = None) -> AsyncIterator[AsyncConnection[dict[str, Any]]]:  # noqa: ASYNC109
        asked = time.perf_counter()
        request_default = timeout is None and POOL_WAIT_S.get() is None
        if timeout is None:
            timeout = POOL_WAIT_S.get()
        if request_default and self._unavailable_at is not None and \
                asked - self._unavailable_at < UNAVAILABLE_FAST_FAIL_S:
            # the database was away a moment ago (a connection attempt failed, or a request waited its whole
            # timeout): answer 503 now rather than make every request (and a load balancer retrying on other
            # replicas) wait as long. Accepted turns (which set POOL_WAIT_S) still wait.
            raise PoolTimeout("the database was unavailable a moment ago")
        try:
            async with super().connection(timeout=timeout) as conn:
                got = time.perf_counter()
                self._unavailable_at = None
                try:
                    yield conn
                except psycopg.OperationalError:
                    self._check_soon()
                    raise
                finally:
                    held = time.perf_counter() - got
                    self.hold_times.record(held)
                    for observe in self.observers:
                        observe(got - asked, held)
        except PoolTimeout:
            if request_default:
                self._unavailable_at = time.perf_counter()
            raise

    async def _connect(self, timeout: float | None = None) -> AsyncConnection[dict[str, Any]]:  # noqa: ASYNC109
        # psycopg_pool's hook for each new connection: a failed attempt is the surest sign the database (or the
        # pooler in front of it) is away right now
        try:
            return await super()._connect(timeout)
        except psycopg.OperationalError:
            self._unavailable_at = time.perf_counter()
            raise

    def _check_soon(self) -> None:
        """One connection broke (the server or the pooler restarted): the idle ones most likely did too. Check them
        all now, so the next requests get working connections instead of each finding a dead one."""
        if self._checking is None or self._checking.done():
            self._checking = asyncio.get_running_loop().create_task(self._check_quietly())

    async def _check_quietly(self) -> None:
        try:
            await self.check()
        except Exception:  # the server may still be away; the pool's own reconnect loop goes on
            return


async def retry_unavailable(call: Callable[[], Awaitable[T]], *, deadline_s: float) -> T:
    """`call()` again while the database is unavailable (connection lost, pool timeout), for up to `deadline_s`:
    for the writes that must not be lost to a short outage, such as the end of a turn that already streamed."""
    until, pause = time.monotonic() + deadline_s, 0.1
    while True:
        try:
            return await call()
        except (psycopg.OperationalError, PoolTimeout):
            if time.monotonic() + pause > until:
                raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)


async def open_pool(cfg: PoolConfig) -> TimedPool:
    pool = TimedPool(
        cfg.conninfo,
        behind_pooler=not cfg.prepare,
        min_size=cfg.min_size,
        max_size=cfg.max_size,
        max_idle=cfg.max_idle_s,
        timeout=cfg.timeout_s,
        kwargs=pool_kwargs(cfg.application_name, cfg.prepare),
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
