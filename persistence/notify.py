"""PostgreSQL LISTEN/NOTIFY between the replicas: control messages for turns (cancel one on whichever replica
runs it).

NOTIFY goes out on any pooled connection (it is sent at commit, so it works through a transaction-mode
pooler); LISTEN needs a session of its own, so each process keeps one direct connection for it
(DATABASE_DIRECT_URL behind a pooler). The listener reconnects by itself when that connection drops;
messages sent while it was away are lost, which callers allow for (a cancel is answered 202, and a turn
that is not reached ends by itself).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from psycopg import AsyncConnection, sql

from persistence.db import APPLICATION_NAME, Pool

log = logging.getLogger(__name__)
TURN_CONTROL = "sixshop_turn_control"
NOTIFY_SQL = "select pg_notify(%s, %s)"

Handler = Callable[[dict[str, Any]], None]


async def publish(pool: Pool, channel: str, message: dict[str, Any]) -> None:
    async with pool.connection() as conn:
        await conn.execute(NOTIFY_SQL, (channel, json.dumps(message, separators=(",", ":"))))


class Listener:
    """One LISTEN connection per process, its notifications handed to `handler` on the event loop."""

    def __init__(self, conninfo: str, channel: str, handler: Handler, *, retry_s: float = 1.0) -> None:
        self.conninfo = conninfo
        self.channel = channel
        self.handler = handler
        self.retry_s = retry_s
        self.ready = asyncio.Event()  # set while LISTEN is in force
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout_s: float = 10.0) -> None:
        self._task = asyncio.create_task(self._run(), name=f"listen-{self.channel}")
        await asyncio.wait_for(self.ready.wait(), timeout_s)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                async with await AsyncConnection.connect(self.conninfo, autocommit=True, prepare_threshold=None,
                                                         application_name=f"{APPLICATION_NAME}-listen") as conn:
                    await conn.execute(sql.SQL("listen {}").format(sql.Identifier(self.channel)))
                    self.ready.set()
                    async for note in conn.notifies():
                        self._dispatch(note.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database went away: listen again once it is back
                if self.ready.is_set():
                    log.warning("LISTEN %s lost (%s); reconnecting", self.channel, type(exc).__name__)
            self.ready.clear()
            await asyncio.sleep(self.retry_s)

    def _dispatch(self, payload: str) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            log.warning("ignored a malformed notification on %s", self.channel)
            return
        try:
            self.handler(message)
        except Exception:
            log.exception("notification handler failed on %s", self.channel)
