"""/api/session-chat: sessions, messages, turns (JSON and SSE), feedback and statistics (API.md)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
from litestar import Controller, Request, Response, delete, get, post
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.response import Stream

from server import metrics
from server.errors import Forbidden, MessageNotFound, NotFound, RateLimited, SessionNotFound
from server.http.access import access, client_address
from server.http.deps import (
    SSE_HEADERS,
    After,
    Caller,
    StatsRequest,
    owned_session,
    parse_id,
    provide_after,
    provide_principal,
    resources_of,
    stats_query,
)
from server.resources import Resources
from server.schemas import (
    CancelAccepted,
    ChatRequest,
    ChatResponse,
    CreateSessionRequest,
    FeedbackRequest,
    FeedbackResponse,
    HandoffInfo,
    HandoffResponse,
    IdentifyRequest,
    IdentifyResponse,
    MessagePage,
    Session,
    SessionPage,
    SessionStats,
    StoreId,
    StoreStats,
    decode_body,
    message_out,
    sse_frame,
)
from server.services.auth import Principal


async def _turn_session(res: Resources, principal: Principal, session_id: str) -> UUID:
    """The session a turn may run on, and the turn counted against the key's rate limit.

    Only a caller limited to some sessions needs the session looked up first; otherwise begin_turn itself answers
    404. A session token on its own session is one too, but that session is its store's for good: no lookup.
    """
    try:
        sid = parse_id(session_id, "session_id")
        own = principal.kind == "session" and principal.session_id == sid
        if principal.store_id is not None and not own:
            await owned_session(res, principal, session_id)
        await res.auth.take_turn(principal)
    except (SessionNotFound, RateLimited) as exc:
        metrics.record_refusal("not_found" if isinstance(exc, SessionNotFound) else "rate_limited")
        raise
    return sid


class SessionController(Controller):
    path = "/api/session-chat"
    tags = ["sessions"]
    dependencies = {"principal": Provide(provide_principal), "after": Provide(provide_after)}
    opt = access("shopper")

    @post("/sessions", status_code=201, opt=access("open-session"))
    async def create_session(self, data: JSONBody[CreateSessionRequest], state: State,
                             request: Request[Any, Any, Any], principal: Caller) -> Session:
        """A new session. With a publishable key (a browser) it is anonymous: a `user_id` sent by a browser is not
        trusted and not kept; with a verified shopper's token it is that shopper's. The answer carries a
        `session_token` for the browser."""
        res = resources_of(state)
        if not principal.may_see(data.store_id):
            raise Forbidden("This credential belongs to another store", {"store_id": data.store_id})
        user_id = data.user_id
        if principal.kind == "session":
            if principal.user_id is None:
                raise Forbidden("An anonymous session token reaches its own session only")
            user_id = principal.user_id
        elif principal.kind == "publishable":
            user_id = None
        if principal.shopper:
            await res.auth.take_session(data.store_id, client_address(request))
        session = await res.sessions.create(data.store_id, user_id, data.metadata)
        return res.sessions.with_token(session, res.auth, verified=principal.user_id is not None)

    @post("/identify", status_code=200, opt=access("identify"))
    async def identify(self, data: JSONBody[IdentifyRequest], state: State, request: Request[Any, Any, Any],
                       principal: Caller) -> IdentifyResponse:
        """A store's backend vouches for its logged-in shopper with a short-lived JWT (`identity`); the answer is a
        verified session token on the shopper's latest active session of that store (a new one if none)."""
        res = resources_of(state)
        if not principal.may_see(data.store_id):
            raise Forbidden("This credential belongs to another store", {"store_id": data.store_id})
        user_id = await res.store_settings.verify_identity(data.store_id, data.identity)
        session = await res.sessions.latest_of(data.store_id, user_id)
        if session is None:
            if principal.shopper:
                await res.auth.take_session(data.store_id, client_address(request))
            session = await res.sessions.create(data.store_id, user_id, {})
        token = res.sessions.with_token(session, res.auth, verified=True).session_token
        assert token is not None
        return IdentifyResponse(session_token=token, user_id=user_id, session_id=session.session_id)

    @get("/sessions")
    async def list_sessions(
        self,
        state: State,
        store_id: Annotated[StoreId | None, QueryParameter(name="store_id")] = None,
        user_id: Annotated[str | None, QueryParameter(name="user_id", max_length=256)] = None,
        status: Annotated[Literal["active", "expired", "handoff"] | None, QueryParameter(name="status")] = None,
        limit: Annotated[int, QueryParameter(name="limit", ge=1, le=100)] = 20,
        cursor: Annotated[str | None, QueryParameter(name="cursor", max_length=512)] = None,
        *,
        principal: Caller,
    ) -> SessionPage:
        """A store's sessions (a store key: its own store only); with a session token only what it reaches: its own
        session, or a verified shopper's sessions of that store."""
        res = resources_of(state)
        if principal.kind == "session":
            return await res.sessions.list(store_id=None, user_id=None, status=status, limit=limit, cursor=cursor,
                                           within=principal)
        if principal.store_id is not None:
            if store_id is not None and store_id != principal.store_id:
                raise NotFound("No such store for this API key", {"store_id": store_id})
            store_id = principal.store_id
        return await resources_of(state).sessions.list(
            store_id=store_id, user_id=user_id, status=status, limit=limit, cursor=cursor
        )

    @get("/sessions/{session_id:str}")
    async def get_session(self, session_id: FromPath[str], state: State, principal: Caller) -> Session:
        return await owned_session(resources_of(state), principal, session_id)

    @delete("/sessions/{session_id:str}", status_code=204)
    async def delete_session(self, session_id: FromPath[str], state: State, principal: Caller) -> None:
        session = await owned_session(resources_of(state), principal, session_id)
        await resources_of(state).sessions.delete(session.session_id)

    @get("/sessions/{session_id:str}/messages")
    async def list_messages(
        self,
        session_id: FromPath[str],
        state: State,
        limit: Annotated[int, QueryParameter(name="limit", ge=1, le=500)] = 100,
        before: Annotated[UUID | None, QueryParameter(name="before")] = None,
        *,
        principal: Caller,
    ) -> MessagePage:
        res = resources_of(state)
        session = await owned_session(res, principal, session_id)
        rows = await res.messages.list(session.session_id, limit=limit, before=before)
        return MessagePage(items=[message_out(r) for r in rows])

    @post("/sessions/{session_id:str}/chat", status_code=200,
          responses={202: ResponseSpec(HandoffResponse, description="The session waits for a person: the message "
                                                                    "is kept for the operator, no answer")})
    async def chat(self, session_id: FromPath[str], data: JSONBody[ChatRequest], state: State,
                   principal: Caller) -> ChatResponse | Response[HandoffResponse]:
        res = resources_of(state)
        sid = await _turn_session(res, principal, session_id)
        message, user_message, handoff = await res.chat.run_to_end(sid, data.message, data.metadata,
                                                                   on_busy=data.on_busy)
        if message is None:
            assert handoff is not None
            return Response(HandoffResponse(user_message=user_message, handoff=msgspec.convert(handoff, HandoffInfo)),
                            status_code=202)
        if handoff is not None:  # this very answer handed the shopper to a person
            return ChatResponse(message=message, user_message=user_message,
                                handoff=msgspec.convert(handoff, HandoffInfo))
        return ChatResponse(message=message, user_message=user_message)

    @post(
        "/sessions/{session_id:str}/chat/stream",
        status_code=200,
        media_type="text/event-stream",
        description="Server-Sent Events: metadata, sources, token..., then done or error (API.md).",
    )
    async def chat_stream(self, session_id: FromPath[str], data: JSONBody[ChatRequest], state: State,
                          principal: Caller) -> Stream:
        res = resources_of(state)
        sid = await _turn_session(res, principal, session_id)
        turn = await res.chat.start_turn(sid, data.message, data.metadata, on_busy=data.on_busy)

        async def frames() -> AsyncIterator[bytes]:  # each event framed once, a batch of them to a write
            async with contextlib.aclosing(turn.batches()) as batches:
                async for batch in batches:
                    yield b"".join([sse_frame(n, event, payload) for n, event, payload in batch])

        return Stream(frames(), media_type="text/event-stream", headers=SSE_HEADERS)

    @get(
        "/sessions/{session_id:str}/messages/{message_id:str}/stream",
        media_type="text/event-stream",
        description="Rejoin an answer's stream after Last-Event-ID (header, or ?last_event_id=), on any replica, "
                    "while it runs or after it ended (API.md, Durable turns).",
    )
    async def rejoin_stream(self, session_id: FromPath[str], message_id: FromPath[str], state: State,
                            principal: Caller, after: After) -> Stream:
        res = resources_of(state)
        session = await owned_session(res, principal, session_id)
        mid = parse_id(message_id, "message_id")
        events = await res.chat.rejoin(session.session_id, mid, after)

        async def frames() -> AsyncIterator[bytes]:
            async for n, event, payload in events:
                yield sse_frame(n, event, payload)

        return Stream(frames(), media_type="text/event-stream", headers=SSE_HEADERS)

    @get(
        "/sessions/{session_id:str}/events",
        media_type="text/event-stream",
        description="The session's events as they happen, on any replica, resumable with Last-Event-ID: `message` "
                    "{message} for operator messages, messages kept for a person and finished answers; `status` "
                    "{status} on handoff and release (API.md).",
    )
    async def session_events(self, session_id: FromPath[str], state: State, principal: Caller,
                             after: After) -> Stream:
        res = resources_of(state)
        session = await owned_session(res, principal, session_id)

        async def frames() -> AsyncIterator[bytes]:
            async with contextlib.aclosing(res.handoffs.events(session.session_id, after)) as events:
                async for n, event, payload in events:
                    yield b": keepalive\n\n" if n is None else sse_frame(n, event, payload)

        return Stream(frames(), media_type="text/event-stream", headers=SSE_HEADERS)

    @post("/sessions/{session_id:str}/messages/{message_id:str}/cancel", status_code=202)
    async def cancel_turn(self, session_id: FromPath[str], message_id: FromPath[str], state: State,
                          principal: Caller) -> CancelAccepted:
        """Stop a running answer (on any replica): stored `cancelled` with what it had said; 409 if it ended."""
        res = resources_of(state)
        session = await owned_session(res, principal, session_id)
        mid = parse_id(message_id, "message_id")
        await res.chat.cancel(session.session_id, mid)
        return CancelAccepted(message_id=mid)

    @post("/messages/{message_id:str}/feedback", status_code=201)
    async def feedback(
        self, message_id: FromPath[str], data: JSONBody[FeedbackRequest], state: State,
        request: Request[Any, Any, Any], principal: Caller,
    ) -> FeedbackResponse:
        # Litestar converts bodies leniently ("1" -> 1.0); a score must be a JSON number
        data = decode_body(await request.body(), FeedbackRequest)
        mid = parse_id(message_id, "message_id")
        res = resources_of(state)
        if principal.kind == "session":  # a shopper rates only the answers of sessions it reaches
            found = await res.messages.session_of(mid)
            if found is None or not principal.may_see_session(found["store_id"], found["session_id"],
                                                              found["user_id"]):
                raise MessageNotFound(detail={"message_id": message_id})
        row = await res.messages.upsert_feedback(mid, data.score, data.comment, scope=principal.store_id)
        if row is None:
            raise MessageNotFound(detail={"message_id": message_id})
        if row["run_id"] is not None:  # assistant messages are runs; feedback on them goes to LangSmith too
            res.tracing.send_feedback(mid, row["run_id"], float(row["score"]), row["comment"],
                                      created=bool(row["created"]))
        return FeedbackResponse(message_id=row["message_id"], score=row["score"], comment=row["comment"])

    @get("/sessions/{session_id:str}/stats")
    async def session_stats(self, session_id: FromPath[str], state: State, principal: Caller) -> SessionStats:
        session = await owned_session(resources_of(state), principal, session_id)
        return await resources_of(state).analytics.session_stats(session.session_id)

    @get("/stats", dependencies={"stats_request": Provide(stats_query)}, opt=access("store"))
    async def store_stats(self, state: State, stats_request: StatsRequest, principal: Caller) -> StoreStats:
        if not principal.may_see(stats_request.store_id):
            raise NotFound("No such store for this API key", {"store_id": stats_request.store_id})
        return await stats_request.run(resources_of(state))
