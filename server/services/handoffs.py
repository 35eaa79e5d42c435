"""A person behind the assistant: the operators' queue, their replies, the release that resumes the graph, and each
session's event stream (what a shopper's page follows, on any replica: sql/013's session_events and NOTIFY)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

from langchain_core.runnables import RunnableConfig
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command

from graph.state import ChatContext
from persistence.handoffs import EVENTS_PAGE, HandoffRepository
from server.errors import AppError
from server.schemas import Message, check_text, message_out

SessionEvent = tuple[int | None, str, dict[str, Any]]  # (id, event, data); id None: a keep-alive comment
KEEPALIVE_S = 15.0  # an idle event stream sends a comment this often (proxies close silent connections)


class NotInHandoff(AppError):
    status_code, code, default_message = 409, "not_in_handoff", "This session is not waiting for a person"


class HandoffService:
    def __init__(self, repo: HandoffRepository, graph: CompiledStateGraph[Any, Any, Any, Any], *,
                 max_message_chars: int, stale_after: timedelta) -> None:
        self.repo = repo
        self.graph = graph
        self.max_message_chars = max_message_chars
        self.stale_after = stale_after
        self._listeners: dict[UUID, set[asyncio.Event]] = {}  # event streams open here, by session

    async def waiting(self, store_id: str | None) -> list[dict[str, Any]]:
        """Sessions waiting for a person, oldest first, with how long they have waited."""
        return [{**row, "session_id": str(row["session_id"]), "started_at": row["started_at"].isoformat(),
                 "first_reply_at": row["first_reply_at"].isoformat() if row["first_reply_at"] else None,
                 "waiting_seconds": round(float(row.pop("waiting_s")), 1)}
                for row in await self.repo.waiting(store_id)]

    async def reply(self, session_id: UUID, content: str, author: str) -> Message:
        """An operator's message, stored and sent to the shopper's open page (the session's event stream)."""
        row = await self.repo.reply(session_id, check_text(content, "content", self.max_message_chars), author)
        if row is None:
            raise NotInHandoff(detail={"session_id": str(session_id)})
        return message_out(row)

    async def release(self, session_id: UUID, by: str) -> None:
        """Give the session back to the assistant: the graph resumes (Command(resume=...)) with what the shopper
        and the operators wrote meanwhile, so the next answer has the whole conversation. The session is claimed
        meanwhile, as by a turn: nothing written in between is lost."""
        claim = uuid4()
        opened = await self.repo.claim_release(session_id, claim, self.stale_after)
        if opened is None:
            raise NotInHandoff(detail={"session_id": str(session_id)})
        released = False
        try:
            written = await self.repo.written_since(session_id, int(opened["after_seq"]))
            resume = {"messages": [{"role": r["role"], "content": r["content"], "id": str(r["message_id"]),
                                    "author": r["author"]} for r in written],
                      "released_by": by}
            config: RunnableConfig = {"configurable": {"thread_id": str(session_id)}, "run_name": "operator_release",
                      "metadata": {"session_id": str(session_id), "store_id": opened["store_id"]}}
            state = await self.graph.aget_state(config)
            if state.next:  # the thread waits at wait_for_operator (an older thread may not: nothing to resume)
                await self.graph.ainvoke(Command(resume=resume), config, context=ChatContext(handoff=False),
                                         durability="exit")
            released = True
        finally:
            await asyncio.shield(self.repo.end_release(session_id, claim, by, released=released))

    # -- the session's event stream

    def on_event(self, message: dict[str, Any]) -> None:
        """A notification on SESSION_EVENTS: wake this process's streams of that session."""
        with contextlib.suppress(ValueError, KeyError):
            for wake in self._listeners.get(UUID(str(message["session"])), ()):
                wake.set()

    async def events(self, session_id: UUID, after: int) -> AsyncGenerator[SessionEvent, None]:
        """(id, event, data) of the session after id `after`, as they happen, for as long as the client stays:
        `message` {"message"} and `status` {"status"}; (None, "keepalive", {}) when idle for a while."""
        wake = asyncio.Event()
        self._listeners.setdefault(session_id, set()).add(wake)
        try:
            while True:
                wake.clear()
                rows = await self.repo.events(session_id, after)
                for row in rows:
                    after = int(row["event_id"])
                    if row["kind"] == "status":
                        yield after, "status", {"status": row["event_status"]}
                    elif row["message_id"] is not None:  # its message deleted since: nothing to show
                        yield after, "message", {"message": message_out(row)}
                if len(rows) == EVENTS_PAGE:  # a full page: read on before waiting
                    continue
                try:
                    async with asyncio.timeout(KEEPALIVE_S):
                        await wake.wait()
                except TimeoutError:
                    yield None, "keepalive", {}
        finally:
            listeners = self._listeners.get(session_id)
            if listeners is not None:
                listeners.discard(wake)
                if not listeners:
                    del self._listeners[session_id]
