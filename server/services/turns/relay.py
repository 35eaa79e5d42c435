"""Following and cancelling a turn across replicas: a client rejoining a turn's stream gets its events whether the
turn runs here, on another replica (relayed over PostgreSQL NOTIFY), or has ended (rebuilt from its row); a cancel
reaches the replica that runs the turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import msgspec

from persistence.notify import MAX_PAYLOAD, TURN_CONTROL, TURN_EVENTS
from server.errors import MessageNotFound, TurnEnded
from server.services.turns.events import RUNNING, Numbered, Turn, error_data, stored_events
from server.services.turns.running import TurnRunner
from server.services.turns.setup import TurnSetup

log = logging.getLogger(__name__)

FOLLOW_CHECK_S = 1.0  # a follower that hears nothing this long looks at the row


async def _aiter(items: list[tuple[int, str, dict[str, Any]]]) -> Numbered:
    for item in items:
        yield item


def _batches(to: str, items: list[list[Any]]) -> Iterator[str]:
    """NOTIFY payloads for a follower: as many events as fit in each."""
    batch: list[bytes] = []
    size = 0
    for item in items:
        encoded = msgspec.json.encode(item)
        if len(encoded) > MAX_PAYLOAD - 100:
            encoded = msgspec.json.encode([item[0], "ref"])
        if batch and size + len(encoded) > MAX_PAYLOAD - 100:
            yield _payload(to, batch)
            batch, size = [], 0
        batch.append(encoded)
        size += len(encoded) + 1
    if batch:
        yield _payload(to, batch)


def _payload(to: str, batch: list[bytes]) -> str:
    return msgspec.json.encode({"to": to, "e": [msgspec.Raw(b) for b in batch]}).decode()


class Relay:
    def __init__(self, setup: TurnSetup, runner: TurnRunner) -> None:
        self.setup = setup
        self.runner = runner
        # sends to the other replicas (PostgreSQL NOTIFY on a channel, wired by server/resources.py): a turn's
        # cancel or follow request (TURN_CONTROL), a followed turn's events (TURN_EVENTS)
        self.notify: Callable[[str, dict[str, Any] | str], Awaitable[None]] | None = None
        self._followers: dict[str, asyncio.Queue[list[Any]]] = {}  # remote follows waiting here, by key
        self._relays: set[asyncio.Task[None]] = set()

    async def cancel(self, session_id: UUID, message_id: UUID) -> None:
        """Stop a running turn of this session wherever it runs; it is stored `cancelled` with its partial
        answer. 404 for no such answer in this session, 409 when it already ended."""
        row = await self.setup.messages.get(message_id)
        if row is None or row["session_id"] != session_id or row["role"] != "assistant":
            raise MessageNotFound(detail={"message_id": str(message_id)})
        if row["status"] not in RUNNING:
            raise TurnEnded(detail={"message_id": str(message_id), "status": row["status"]})
        await self.cancel_anywhere(message_id)

    async def cancel_anywhere(self, message_id: UUID) -> None:
        """Cancel a running turn here, or ask the other replicas to (the one running it does)."""
        if not self.runner.cancel_local(message_id) and self.notify is not None:
            await self.notify(TURN_CONTROL, {"cancel": str(message_id)})

    async def rejoin(self, session_id: UUID, message_id: UUID, after: int
                     ) -> Numbered:
        """The events of an answer of this session after id `after`, whether it runs here, runs on another
        replica, or has ended. 404 (raised here, before any event) for no such answer."""
        turn = self.runner.here(message_id)
        if turn is not None and turn.session_id == session_id:
            return turn.events(after)
        row = await self.setup.messages.get_stream(message_id)
        if row is None or row["session_id"] != session_id or row["role"] != "assistant":
            raise MessageNotFound(detail={"message_id": str(message_id)})
        if row["status"] not in RUNNING or self.notify is None:
            return _aiter(stored_events(row, after))
        # past its deadline a turn still `streaming` lost its replica: nobody will end it before recovery does
        return self._follow(row, after)

    def _patience(self, row: dict[str, Any]) -> float:
        """When a follower stops waiting for a running turn that says nothing: past the turn's deadline (counted
        from its start, or its re-run's) and a margin."""
        running_s = (datetime.now(UTC) - row["created_at"]).total_seconds()
        return time.monotonic() + self.setup.turn_timeout.total_seconds() - running_s + FOLLOW_CHECK_S * 5

    async def _follow(self, row: dict[str, Any], after: int) -> Numbered:
        """A turn running on another replica: ask it (NOTIFY) to relay its events from `after`; when nothing
        comes for a while, look at the row, and once the turn has ended serve the rest from there (its replica
        may have died, or ended the turn before it heard us). A turn re-run elsewhere (a new run_id on the row)
        is asked again. Still nothing past its deadline: it ends with `error` `abandoned`."""
        assert self.notify is not None
        message_id, run_id = row["message_id"], row["run_id"]
        give_up = self._patience(row)
        key = uuid4().hex
        inbox: asyncio.Queue[list[Any]] = asyncio.Queue()
        self._followers[key] = inbox
        last, live, heard, silent = after, True, False, 0
        try:
            await self.notify(TURN_CONTROL, {"follow": str(message_id), "after": after, "to": key})
            while True:
                batch: list[Any] = []
                if live:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(FOLLOW_CHECK_S):  # not wait_for: see _run_when_free
                            batch = await inbox.get()
                else:
                    await asyncio.sleep(FOLLOW_CHECK_S)
                heard = heard or bool(batch)
                for item in batch:
                    if len(item) == 2 and item[0] > last:  # an event too big to relay: the rest comes from the row
                        live = False
                    if live and len(item) == 3 and item[0] > last:
                        last = item[0]
                        yield item[0], item[1], item[2]
                        if item[1] in ("done", "error"):
                            return
                if not batch:  # silence, or no longer live: has the turn ended?
                    now = await self.setup.messages.get_stream(message_id)
                    if now is not None and now["status"] not in RUNNING:
                        for event in stored_events(now, last):
                            yield event
                        return
                    silent += 1
                    # re-run by another replica; or our request was not heard (sent as the turn started there)
                    if live and now is not None and (now["run_id"] != run_id or (not heard and silent % 3 == 0)):
                        run_id, give_up = now["run_id"], self._patience(now)
                        await self.notify(TURN_CONTROL, {"follow": str(message_id), "after": last, "to": key})
                    if time.monotonic() > give_up:
                        yield last + 1, "error", error_data("abandoned", message_id)
                        return
        finally:
            self._followers.pop(key, None)

    def on_control(self, message: dict[str, Any]) -> None:
        """A notification on TURN_CONTROL: act on it if the turn runs here."""
        if "cancel" in message:
            self.runner.cancel_local(UUID(str(message["cancel"])))
        elif "follow" in message:
            turn = self.runner.here(UUID(str(message["follow"])))
            if turn is not None:
                task = asyncio.create_task(self._relay(turn, int(message.get("after", 0)), str(message["to"])))
                self._relays.add(task)
                task.add_done_callback(self._relays.discard)

    def on_events(self, message: dict[str, Any]) -> None:
        """A notification on TURN_EVENTS: a batch for a follower waiting here."""
        inbox = self._followers.get(str(message.get("to")))
        if inbox is not None:
            inbox.put_nowait(message["e"])

    async def _relay(self, turn: Turn, after: int, to: str) -> None:
        """Send a followed turn's events from `after` to its follower's replica, as they come, batched to fit a
        NOTIFY; an event too big for one goes as [id, "ref"] and the follower reads it from the row."""
        assert self.notify is not None
        seen = turn.position_after(after)
        try:
            while True:
                items = [[n, event, data]
                         for n, (event, data) in enumerate(turn.log[seen:], start=turn.first_id + seen)]
                seen += len(items)
                for payload in _batches(to, items):
                    await self.notify(TURN_EVENTS, payload)
                if turn.ended and seen >= len(turn.log):
                    return
                await turn.wait_beyond(seen)
        except Exception as exc:  # the follower falls back on the row; never fail the turn for it
            log.warning("relay of a followed turn failed: %s", type(exc).__name__,
                        extra={"run_id": str(turn.message_id)})
