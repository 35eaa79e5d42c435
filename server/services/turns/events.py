"""A turn's event log and its readers: `Turn` (the events so far, numbered; any number of readers follow it), the
events a finished turn is rebuilt from its stored row (`stored_events`), and the data of the events every turn
shares. Nothing here reads or writes the database (tests/test_layout.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal
from uuid import UUID

from langchain_core.messages import BaseMessage

from server.schemas import message_out

Event = tuple[str, dict[str, Any]]
Numbered = AsyncGenerator[tuple[int, str, dict[str, Any]], None]  # (id, event, data) as they come
Batches = AsyncGenerator[list[tuple[int, str, dict[str, Any]]], None]  # the same, a socket write's worth at a time
# the longest an event waits to leave with the ones after it in one socket write (Turn.batches)
WRITE_WINDOW_S = 0.005
OnDisconnect = Literal["continue", "cancel"]
# what a turn that did not complete tells its client, by the error code stored on its message
ERROR_TEXTS = {
    "cancelled": "cancelled",
    "timeout": "The language model did not finish in time",
    "model_error": "The language model failed to answer",
    "database_unavailable": "The database became unavailable",
    "internal_error": "The turn failed on the server",
    "abandoned": "The server running this turn stopped before it ended",
}
RUNNING = ("streaming", "queued")  # an answer's statuses until it ends
HANDOFF_MODEL = "handoff"  # the `model` of an answer that is only the handoff notice (no model was called)
DEFAULT_AUDIENCE = "shopper"  # a session whose metadata names no audience is a shopper's
ATTEMPT_IDS = 1_000_000  # attempt n > 1 of a turn numbers its events from n × this: `restart` is n × ATTEMPT_IDS


def error_data(code: str, message_id: UUID | str) -> dict[str, Any]:
    """An `error` event's data for a turn that ended with the stored error code `code`."""
    return {"code": "model_error" if code == "timeout" else code,  # a timeout is the model's
            "message": ERROR_TEXTS.get(code, code), "message_id": str(message_id)}


def metadata_data(session_id: UUID | str, user_message_id: UUID | str, message_id: UUID | str,
                  model: str | None, run_id: UUID | str | None = None) -> dict[str, Any]:
    """The `metadata` event's data: the first event of every turn's stream (of every attempt's, after `restart`)."""
    return {"session_id": str(session_id), "user_message_id": str(user_message_id),
            "message_id": str(message_id), "run_id": str(run_id or message_id), "model": model}


def restart_data(attempt: int, run_id: UUID | str) -> dict[str, Any]:
    """A `restart` event's data: the turn is re-run (its replica died); what came before is to be discarded."""
    return {"attempt": attempt, "run_id": str(run_id)}


def ending_event(row: dict[str, Any]) -> Event:
    """A stored answer's last event: `done` with the message, or `error` with the code of API.md."""
    if row["status"] == "complete":
        return "done", {"message": message_out(row)}
    return "error", error_data(row["error_code"] or "internal_error", row["message_id"])


def stored_events(row: dict[str, Any], after: int) -> list[tuple[int, str, dict[str, Any]]]:
    """A finished turn's events after id `after`, rebuilt from its row: the same ids the live stream had, the
    token deltas after `after` joined into one event (their concatenation is the stored content)."""
    index = row.get("stream_index")
    metadata = metadata_data(row["session_id"], row["user_message_id"], row["message_id"], row["model"],
                             row["run_id"])
    out: list[tuple[int, str, dict[str, Any]]] = []
    first = index.get("first_id", 1) if index else 1  # > 1: a re-run, whose events start with `restart`
    metadata_id = first + 1 if first > 1 else 1
    if first > 1 and after < first:
        out.append((first, "restart", restart_data(row["attempt"], row["run_id"])))
    if after < metadata_id:
        out.append((metadata_id, "metadata", metadata))
    if index is None:  # closed without a stream of its own (a dead replica's turn, taken over): how it ended
        out.append((max(after + 1, 2), *ending_event(row)))
        return out
    if index["sources_id"] and after < index["sources_id"]:
        out.append((index["sources_id"], "sources", {"sources": row["sources"] or []}))
    ends, first_token = index["token_ends"], index["first_token_id"]
    if ends and after < first_token + len(ends) - 1:
        start = ends[after - first_token] if after >= first_token else 0
        out.append((first_token + len(ends) - 1, "token", {"delta": row["content"][start:]}))
    if index.get("handoff") and after < index["handoff"][0]:
        out.append((index["handoff"][0], "handoff", index["handoff"][1]))
    if after < index["final_id"]:
        out.append((index["final_id"], *ending_event(row)))
    return out


@dataclass
class Turn:
    session_id: UUID
    store_id: str
    user_id: str | None
    user_message_id: UUID
    message_id: UUID
    content: str
    model: str
    prompt_variant: str
    started: float
    audience: str = DEFAULT_AUDIENCE  # the session's (metadata.audience): which pages it is answered from
    on_disconnect: OnDisconnect = "continue"  # what happens when the client reading the stream leaves
    run_id: UUID | None = None  # this attempt's run (LangSmith, the row's run_id); the first is the message id
    attempt: int = 1  # > 1: re-run after its replica died (its events are numbered from attempt × ATTEMPT_IDS)
    # messages the model must see before this one that no checkpoint holds (an interrupted exchange)
    prelude: list[BaseMessage] = field(default_factory=list)
    # every event so far, in order; an event's SSE id is first_id + its position. Any number of readers follow
    # it: the client that started the turn, and clients rejoining with Last-Event-ID
    log: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    holds_lease: bool = False  # between its claim and its end: renewed by keep_leases
    # the session waits for a person (graph/handoff.py): {"since", "operator_hours_open", "opens_at"}; a message
    # sent then gets no answer (no assistant row: message_id is not stored)
    handoff: dict[str, Any] | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)  # set by end(), after the last event
    _waiters: list[asyncio.Future[None]] = field(default_factory=list)  # one per reader waiting for more

    def __post_init__(self) -> None:
        self.run_id = self.run_id or self.message_id

    @property
    def first_id(self) -> int:
        return 1 if self.attempt == 1 else self.attempt * ATTEMPT_IDS

    def position_after(self, after: int) -> int:
        """How many of this attempt's events a reader who saw up to id `after` has seen (none: an earlier attempt)."""
        return max(0, after - self.first_id + 1)

    def emit(self, event: str, data: dict[str, Any]) -> None:
        self.log.append((event, data))
        self._wake_readers()

    @property
    def ended(self) -> bool:
        return self.finished.is_set()

    def end(self) -> None:
        self.finished.set()
        self._wake_readers()

    def stream_index(self) -> dict[str, Any]:
        """The ids this turn's events had and where each token delta ends in the content: stored with the
        answer, so that a client rejoining after the turn ended gets the same ids (stored_events)."""
        ends: list[int] = []
        first_token_id = sources_id = None
        handoff: list[Any] | None = None
        total = 0
        for n, (event, data) in enumerate(self.log, start=self.first_id):
            if event == "token":
                first_token_id = first_token_id or n
                total += len(data["delta"])
                ends.append(total)
            elif event == "sources":
                sources_id = n
            elif event == "handoff":
                handoff = [n, data]
        index = {"first_id": self.first_id, "sources_id": sources_id, "first_token_id": first_token_id,
                 "token_ends": ends, "final_id": self.first_id + len(self.log)}
        if handoff is not None:  # the answer handed the shopper to a person: a rejoin sees that too
            index["handoff"] = handoff
        return index

    def _wake_readers(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def wait_beyond(self, seen: int) -> None:
        """Until the log has more than `seen` events (a position, not an id), or the turn has ended."""
        while seen >= len(self.log) and not self.ended:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter  # a reader that is cancelled here cancels only its own future

    async def events(self, after: int = 0) -> Numbered:
        """(id, event, data) after id `after`, as they come, until the turn's last event."""
        seen = self.position_after(after)
        while True:
            while seen < len(self.log):
                event, data = self.log[seen]
                yield self.first_id + seen, event, data
                seen += 1
            if self.ended:
                return
            await self.wait_beyond(seen)

    @property
    def metadata_event(self) -> dict[str, Any]:
        return metadata_data(self.session_id, self.user_message_id, self.message_id, self.model, self.run_id)

    async def stream(self) -> AsyncIterator[Event]:
        """metadata, sources, token..., then done or error (see `numbered`)."""
        async with contextlib.aclosing(self.numbered()) as items:
            async for _, event, data in items:
                yield event, data

    async def batches(self, window_s: float = WRITE_WINDOW_S) -> Batches:
        """The stream of the client that started the turn (as `numbered`), in batches to leave in one socket write
        each: every event that came since the last batch. After a pause a batch goes at once; while events come
        faster than `window_s` apart they gather for the rest of the window since the last batch, so no event
        waits longer than that. Leaving early cancels the turn as `numbered` says."""
        seen, last = 0, float("-inf")
        clock = asyncio.get_running_loop().time
        try:
            while True:
                if seen < len(self.log):
                    if (wait := last + window_s - clock()) > 0 and not self.ended:
                        await asyncio.sleep(wait)
                    batch = [(self.first_id + i, *self.log[i]) for i in range(seen, len(self.log))]
                    seen += len(batch)
                    last = clock()
                    yield batch
                    continue
                if self.ended:
                    return
                await self.wait_beyond(seen)
        finally:
            if not self.ended and self.task is not None and self.on_disconnect == "cancel":
                self.task.cancel()

    async def numbered(self) -> Numbered:
        """The stream of the client that started the turn, with event ids, one at a time (`batches` without the
        window). Leaving early cancels the turn only when its `on_disconnect` says so (TURN_ON_DISCONNECT=cancel);
        by default it runs on and is stored."""
        async with contextlib.aclosing(self.batches(window_s=0)) as batches:
            async for batch in batches:
                for item in batch:
                    yield item
