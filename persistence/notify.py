"""PostgreSQL LISTEN/NOTIFY between the replicas: control messages for turns (cancel one, or follow one, on
whichever replica runs it) and the events of followed turns.

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
TURN_EVENTS = "sixshop_turn_events"
SESSION_FREE = "sixshop_session_free"  # sent by finish_turn (sql/008) and close_queued_turn (sql/009)
MAX_PAYLOAD = 7000  # bytes; PostgreSQL refuses a NOTIFY payload of 8000 or more
NOTIFY_SQL = "select pg_notify(%s, %s)"

Handler = Callable[[dict[str, Any]], None]


async def publish(pool: Pool, channel: str, message: dict[str, Any] | str) -> None:
    payload = message if isinstance(message, str) else json.dumps(message, separators=(",", ":"))
    async with pool.connection() as conn:
        await conn.execute(NOTIFY_SQL, (channel, payload))


class Listener:
    """One LISTEN connection per process for a few channels, each notification handed to its channel's handler
    on the event loop."""

    def __init__(self, conninfo: str, handlers: dict[str, Handler], *, retry_s: float = 1.0) -> None:
        self.conninfo = conninfo
        self.handlers = handlers
        self.retry_s = retry_s
        self.ready = asyncio.Event()  # set while LISTEN is in force
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout_s: float = 10.0) -> None:
        self._task = asyncio.create_task(self._run(), name="listen")
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
                    for channel in self.handlers:
                        await conn.execute(sql.SQL("listen {}").format(sql.Identifier(channel)))
                    self.ready.set()
                    async for note in conn.notifies():
                        self._dispatch(note.channel, note.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database went away: listen again once it is back
                if self.ready.is_set():
                    log.warning("LISTEN lost (%s); reconnecting", type(exc).__name__)
            self.ready.clear()
            await asyncio.sleep(self.retry_s)

    def _dispatch(self, channel: str, payload: str) -> None:
        handler = self.handlers.get(channel)
        try:
            message = json.loads(payload)
        except ValueError:
            log.warning("ignored a malformed notification on %s", channel)
            return
        if handler is None:
            return
        try:
            handler(message)
        except Exception:
            log.exception("notification handler failed on %s", channel)
