"""Streams and joins: a run streamed as it starts (POST .../runs/stream), and a run's stream joined later from any
replica with Last-Event-ID (GET .../runs/{run_id}/stream)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

from litestar import Controller, Request, get, post
from litestar.datastructures import State
from litestar.di import Provide
from litestar.params import FromPath
from litestar.response import Stream

from server.errors import (
    Unsupported,
)
from server.http.access import access
from server.http.agent_protocol.common import latest_state, provide_principal, values_of
from server.http.agent_protocol.run_stream import STREAM_MODES, RunRef, one_by_one, run_events, run_paths, stream_modes
from server.http.agent_protocol.runs import RunStream, begin_run, run_row
from server.http.deps import SSE_HEADERS, Caller, parse_event_id, parse_id
from server.resources import Resources
from server.schemas import Session, decode_body
from server.services.auth import Principal


async def start_run(res: Resources, principal: Principal, thread_id: UUID, body: RunStream) -> Stream:
    """A streamed run: 200 and its events (refusals come before, as errors). With `stream_resumable` the events
    carry ids and `Location` names the run's stream, where the SDK reconnects with Last-Event-ID."""
    turn, modes, before = await begin_run(res, principal, thread_id, body)
    paths = run_paths(thread_id, turn.message_id, modes)
    if not body.stream_resumable:
        del paths["Location"]
    run = RunRef(turn.message_id, thread_id, turn.store_id)
    return Stream(run_events(res, run, turn.batches(), modes, before, resumable=body.stream_resumable),
                  media_type="text/event-stream", headers={**SSE_HEADERS, **paths})

async def _values_before(res: Resources, thread_id: UUID, run_id: UUID) -> dict[str, Any]:
    """The state a joined run started from, as far as it can be told: the thread's values, with the run's question
    when no checkpoint has it yet (the run is still running)."""
    values = values_of(await latest_state(res, thread_id))
    row = await res.messages.get_stream(run_id)
    if row is not None and row["user_message_id"] is not None:
        asked = str(row["user_message_id"])
        if all(m.get("id") != asked for m in values.get("messages", [])):
            question = await res.messages.get(row["user_message_id"])
            if question is not None:
                values["messages"] = [*values.get("messages", []),
                                      {"type": "human", "id": asked, "content": question["content"]}]
    return values

async def join_stream(res: Resources, request: Request[Any, Any, Any], row: dict[str, Any],
                      session: Session) -> Stream:
    """A run's stream joined (runs.join_stream; the SDK's reconnect): the events after Last-Event-ID, live or
    stored, on any replica; `stream_mode` (default: all) and `cancel_on_disconnect` from the query."""
    after = parse_event_id(request.headers.get("last-event-id") or request.query_params.get("last_event_id"))
    asked = [m for m in request.query_params.getall("stream_mode", []) if m]
    modes = stream_modes(asked) if asked else set(STREAM_MODES)
    cancel = request.query_params.get("cancel_on_disconnect", "false").lower() in ("1", "true")
    run_id = row["message_id"]
    items = await res.chat.rejoin(session.session_id, run_id, after)
    before = await _values_before(res, session.session_id, run_id) if "values" in modes and after == 0 else None
    run = RunRef(run_id, session.session_id, session.store_id)

    async def frames() -> AsyncIterator[bytes]:
        ended = False
        try:
            async for frame in run_events(res, run, one_by_one(items), modes, before, resumable=True):
                yield frame
            ended = True
        finally:
            if cancel and not ended:
                with contextlib.suppress(Exception):  # already ended, or the database away: nothing to stop
                    await res.chat.cancel(session.session_id, run_id)

    return Stream(frames(), media_type="text/event-stream",
                  headers={**SSE_HEADERS, **run_paths(session.session_id, run_id, modes)})


class StreamController(Controller):
    """Runs' streams: started with the run, or joined."""
    path = "/"
    tags = ["agent-protocol"]
    dependencies = {"principal": Provide(provide_principal)}
    opt = access("agent")

    @post("/threads/{thread_id:str}/runs/stream", status_code=200, media_type="text/event-stream")
    async def stream_run(self, thread_id: FromPath[str], request: Request[Any, Any, Any], state: State,
                         principal: Caller) -> Stream:
        body: RunStream = decode_body(await request.body(), RunStream)
        return await start_run(state.resources, principal, parse_id(thread_id, "thread_id"), body)

    @post("/runs/stream", status_code=200, media_type="text/event-stream")
    async def stream_run_ap(self, request: Request[Any, Any, Any], state: State, principal: Caller) -> Stream:
        body: RunStream = decode_body(await request.body(), RunStream)
        if body.thread_id is None:
            raise Unsupported("stateless runs are not supported: pass thread_id (a session)", {"field": "thread_id"})
        return await start_run(state.resources, principal, body.thread_id, body)

    @get("/threads/{thread_id:str}/runs/{run_id:str}/stream", media_type="text/event-stream")
    async def stream(self, thread_id: FromPath[str], run_id: FromPath[str], request: Request[Any, Any, Any],
                     state: State, principal: Caller) -> Stream:
        row, session = await run_row(state.resources, principal, run_id, thread_id)
        return await join_stream(state.resources, request, row, session)

    @get("/runs/{run_id:str}/stream", media_type="text/event-stream")
    async def stream_ap(self, run_id: FromPath[str], request: Request[Any, Any, Any], state: State,
                        principal: Caller) -> Stream:
        row, session = await run_row(state.resources, principal, run_id)
        return await join_stream(state.resources, request, row, session)
