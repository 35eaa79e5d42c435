"""The Litestar application: routes of API.md, the error body, and the process's resources."""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from uuid import UUID

import psycopg
from litestar import Controller, Litestar, Request, Response, delete, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import CacheControlHeader, State
from litestar.di import NamedDependency, Provide
from litestar.exceptions import HTTPException, NotFoundException, ValidationException
from litestar.handlers import BaseRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.plugins.prometheus import PrometheusConfig, PrometheusController
from litestar.response import File, Stream
from litestar.static_files import create_static_files_router
from psycopg_pool import PoolTimeout

from persistence.admin import AdminRepository
from server import metrics
from server.agent_protocol import AgentProtocolController
from server.auth import Principal
from server.errors import (
    AppError,
    DatabaseUnavailable,
    Forbidden,
    MessageNotFound,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    SessionNotFound,
    Unauthorized,
    UnsupportedMediaType,
    ValidationFailed,
)
from server.resources import Resources, open_resources
from server.schemas import (
    ChatRequest,
    ChatResponse,
    CreateSessionRequest,
    DatabaseHealth,
    FeedbackRequest,
    FeedbackResponse,
    Health,
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
from server.settings import Settings, load_settings

log = logging.getLogger(__name__)
VERSION = "0.1.0"

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _res(state: State) -> Resources:
    return state.resources


def parse_id(value: str, field: str) -> UUID:
    """Ids are UUIDs: a malformed one is the client's mistake (400), never a lookup or a 500."""
    try:
        return UUID(value)
    except ValueError:
        raise ValidationFailed(f"{field} must be a UUID", {"field": field, "value": value[:64]}) from None


def _utc(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


Caller = NamedDependency[Principal]  # the `principal` dependency: who is calling (server/auth.py)


@dataclass(frozen=True)
class StatsQuery:
    """A store's statistics request: the same query string for shoppers' keys and operators."""

    store_id: str
    start: datetime | None
    end: datetime | None
    tz: str | None

    async def run(self, res: Resources) -> StoreStats:
        return await res.analytics.store_stats(self.store_id, _utc(self.start), _utc(self.end), self.tz)


async def stats_query(
    store_id: Annotated[StoreId, QueryParameter(name="store_id")],
    start: Annotated[datetime | None, QueryParameter(name="from")] = None,
    end: Annotated[datetime | None, QueryParameter(name="to")] = None,
    tz: Annotated[str | None, QueryParameter(name="tz", max_length=64)] = None,
) -> StatsQuery:
    return StatsQuery(store_id, start, end, tz)


StatsRequest = NamedDependency[StatsQuery]  # the `stats_request` dependency (stats_query)


async def provide_principal(request: Request[Any, Any, Any], state: State) -> Principal:
    return await _res(state).auth.principal(request.headers.get("authorization"))


async def _owned_session(res: Resources, principal: Principal, session_id: str) -> Session:
    """The session, if it exists and this caller's store may see it; otherwise 404, the same way."""
    return await res.sessions.get_visible(parse_id(session_id, "session_id"), principal)


async def _turn_session(res: Resources, principal: Principal, session_id: str) -> UUID:
    """The session a turn may run on, and the turn counted against the key's rate limit.

    Only a store key needs the session looked up first; otherwise begin_turn itself answers 404.
    """
    try:
        sid = parse_id(session_id, "session_id")
        if principal.store_id is not None:
            await _owned_session(res, principal, session_id)
        await res.auth.take_turn(principal)
    except (SessionNotFound, RateLimited) as exc:
        metrics.record_refusal("not_found" if isinstance(exc, SessionNotFound) else "rate_limited")
        raise
    return sid


class SessionController(Controller):
    path = "/api/session-chat"
    tags = ["sessions"]
    dependencies = {"principal": Provide(provide_principal)}

    @post("/sessions", status_code=201)
    async def create_session(self, data: JSONBody[CreateSessionRequest], state: State,
                             principal: Caller) -> Session:
        if not principal.may_see(data.store_id):
            raise Forbidden("This API key belongs to another store", {"store_id": data.store_id})
        return await _res(state).sessions.create(data.store_id, data.user_id, data.metadata)

    @get("/sessions")
    async def list_sessions(
        self,
        state: State,
        store_id: Annotated[StoreId | None, QueryParameter(name="store_id")] = None,
        user_id: Annotated[str | None, QueryParameter(name="user_id", max_length=256)] = None,
        status: Annotated[Literal["active", "expired"] | None, QueryParameter(name="status")] = None,
        limit: Annotated[int, QueryParameter(name="limit", ge=1, le=100)] = 20,
        cursor: Annotated[str | None, QueryParameter(name="cursor", max_length=512)] = None,
        *,
        principal: Caller,
    ) -> SessionPage:
        if principal.store_id is not None:
            if store_id is not None and store_id != principal.store_id:
                raise NotFound("No such store for this API key", {"store_id": store_id})
            store_id = principal.store_id
        return await _res(state).sessions.list(
            store_id=store_id, user_id=user_id, status=status, limit=limit, cursor=cursor
        )

    @get("/sessions/{session_id:str}")
    async def get_session(self, session_id: FromPath[str], state: State, principal: Caller) -> Session:
        return await _owned_session(_res(state), principal, session_id)

    @delete("/sessions/{session_id:str}", status_code=204)
    async def delete_session(self, session_id: FromPath[str], state: State, principal: Caller) -> None:
        session = await _owned_session(_res(state), principal, session_id)
        await _res(state).sessions.delete(session.session_id)

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
        res = _res(state)
        session = await _owned_session(res, principal, session_id)
        rows = await res.messages.list(session.session_id, limit=limit, before=before)
        return MessagePage(items=[message_out(r) for r in rows])

    @post("/sessions/{session_id:str}/chat", status_code=200)
    async def chat(self, session_id: FromPath[str], data: JSONBody[ChatRequest], state: State,
                   principal: Caller) -> ChatResponse:
        res = _res(state)
        sid = await _turn_session(res, principal, session_id)
        message, user_message = await res.chat.run_to_end(sid, data.message, data.metadata)
        return ChatResponse(message=message, user_message=user_message)

    @post(
        "/sessions/{session_id:str}/chat/stream",
        status_code=200,
        media_type="text/event-stream",
        description="Server-Sent Events: metadata, sources, token..., then done or error (API.md).",
    )
    async def chat_stream(self, session_id: FromPath[str], data: JSONBody[ChatRequest], state: State,
                          principal: Caller) -> Stream:
        res = _res(state)
        sid = await _turn_session(res, principal, session_id)
        turn = await res.chat.start_turn(sid, data.message, data.metadata)

        async def frames() -> AsyncIterator[bytes]:
            n = 0
            async for event, payload in turn.stream():
                n += 1
                yield sse_frame(n, event, payload)

        return Stream(frames(), media_type="text/event-stream", headers=SSE_HEADERS)

    @post("/messages/{message_id:str}/feedback", status_code=201)
    async def feedback(
        self, message_id: FromPath[str], data: JSONBody[FeedbackRequest], state: State,
        request: Request[Any, Any, Any], principal: Caller,
    ) -> FeedbackResponse:
        # Litestar converts bodies leniently ("1" -> 1.0); a score must be a JSON number
        data = decode_body(await request.body(), FeedbackRequest)
        mid = parse_id(message_id, "message_id")
        res = _res(state)
        row = await res.messages.upsert_feedback(mid, data.score, data.comment, scope=principal.store_id)
        if row is None:
            raise MessageNotFound(detail={"message_id": message_id})
        if row["run_id"] is not None:  # assistant messages are runs; feedback on them goes to LangSmith too
            res.tracing.send_feedback(mid, row["run_id"], float(row["score"]), row["comment"],
                                      created=bool(row["created"]))
        return FeedbackResponse(message_id=row["message_id"], score=row["score"], comment=row["comment"])

    @get("/sessions/{session_id:str}/stats")
    async def session_stats(self, session_id: FromPath[str], state: State, principal: Caller) -> SessionStats:
        session = await _owned_session(_res(state), principal, session_id)
        return await _res(state).analytics.session_stats(session.session_id)

    @get("/stats", dependencies={"stats_request": Provide(stats_query)})
    async def store_stats(self, state: State, stats_request: StatsRequest, principal: Caller) -> StoreStats:
        if not principal.may_see(stats_request.store_id):
            raise NotFound("No such store for this API key", {"store_id": stats_request.store_id})
        return await stats_request.run(_res(state))


@get("/health", tags=["operations"])
async def health(state: State) -> Response[Health]:
    res = _res(state)
    ok, latency = True, None
    try:
        t0 = time.perf_counter()
        async with res.pool.connection(timeout=2.0) as conn:
            await conn.execute("select 1")
        latency = round((time.perf_counter() - t0) * 1000, 2)
    except (psycopg.Error, PoolTimeout, OSError):
        ok = False
    body = Health(
        status="ok" if ok else "degraded",
        database=DatabaseHealth(ok=ok, latency_ms=latency),
        model=res.chat.model_name,
        retriever=res.knowledge.backend,
        tracing=res.settings.tracing_enabled,
        version=VERSION,
    )
    return Response(body, status_code=200 if ok else 503)


# -- one error body for everything -------------------------------------------------------------

def _error_response(err: AppError) -> Response[dict[str, Any]]:
    return Response(err.body(), status_code=err.status_code, headers=err.headers)


def _validation_detail(exc: ValidationException) -> dict[str, Any]:
    extra = exc.extra if isinstance(exc.extra, list) else [exc.extra] if exc.extra else []
    return {"errors": [e if isinstance(e, dict) else {"message": str(e)} for e in extra]}


def handle_exception(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    if isinstance(exc, AppError):
        return _error_response(exc)
    if isinstance(exc, ValidationException):
        return _error_response(ValidationFailed(str(exc.detail) or None, _validation_detail(exc)))
    if isinstance(exc, NotFoundException):
        return _error_response(NotFound(f"No route for {request.method} {request.url.path}"))
    if isinstance(exc, HTTPException):
        code = exc.status_code
        if code == 413:
            return _error_response(PayloadTooLarge(detail={"max_bytes": request.app.state.settings.max_body_bytes}))
        if code == 405:
            return _error_response(MethodNotAllowed())
        if code == 415:
            return _error_response(UnsupportedMediaType())
        if 400 <= code < 500:
            return _error_response(ValidationFailed(str(exc.detail)))
    if isinstance(exc, psycopg.OperationalError | PoolTimeout):
        log.warning("database unavailable: %s", type(exc).__name__)
        return _error_response(DatabaseUnavailable())
    if isinstance(exc, psycopg.errors.DataError):  # e.g. an out-of-range timestamp from a query string
        return _error_response(ValidationFailed("A value is out of range"))
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return _error_response(AppError())


async def admin_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """/api/admin/*: Bearer ADMIN_TOKEN or an admin API key; open only in development before any key exists."""
    settings: Settings = connection.app.state.settings
    res: Resources = connection.app.state.resources
    header = connection.headers.get("authorization", "")
    if settings.admin_token is not None and hmac.compare_digest(
        header.encode(), f"Bearer {settings.admin_token.get_secret_value()}".encode()
    ):
        return
    principal = await res.auth.principal(header or None)  # 401 without a valid key where keys are required
    if principal.anonymous and settings.admin_token is not None:
        raise Unauthorized("A valid admin token is required (Authorization: Bearer ...)")
    if not principal.anonymous and not principal.admin:
        raise Forbidden("This API key is for one store; the admin API needs an admin key")


class AdminController(Controller):
    path = "/api/admin"
    tags = ["admin"]
    guards = [admin_guard]

    @get("/capacity")
    async def capacity(self, state: State) -> dict[str, Any]:
        """Against the seed's thresholds for Aurora or Redis: connections, sessions a month, latency, sizes."""
        return await _res(state).capacity.report()

    @get("/stores")
    async def stores(self, state: State) -> dict[str, Any]:
        """Every store with sessions: id, session count, last activity (the operator page's picker)."""
        return {"items": await AdminRepository(_res(state).pool).stores()}

    @get("/stats", dependencies={"stats_request": Provide(stats_query)})
    async def stats(self, state: State, stats_request: StatsRequest) -> StoreStats:
        """GET /api/session-chat/stats for operators (ADMIN_TOKEN or an admin key)."""
        return await stats_request.run(_res(state))

    @get("/sessions")
    async def search_sessions(
        self,
        state: State,
        store_id: Annotated[StoreId | None, QueryParameter(name="store_id")] = None,
        q: Annotated[str | None, QueryParameter(name="q", max_length=200)] = None,
        limit: Annotated[int, QueryParameter(name="limit", ge=1, le=200)] = 50,
    ) -> dict[str, Any]:
        """Sessions, newest activity first; `q` matches a session id prefix, the user id or message text."""
        return {"items": await AdminRepository(_res(state).pool).search_sessions(store_id, q, limit)}

    @get("/sessions/{session_id:str}/transcript")
    async def transcript(self, session_id: FromPath[str], state: State) -> dict[str, Any]:
        """A session and every message with its usage, timings, sources, feedback and LangSmith link."""
        res = _res(state)
        session = await res.sessions.get(parse_id(session_id, "session_id"))
        rows = await AdminRepository(res.pool).transcript(session.session_id)
        messages = []
        for row in rows:
            row["trace_url"] = await res.tracing.trace_url(row["run_id"]) if row["role"] == "assistant" else None
            messages.append(row)
        return {"session": session, "messages": messages, "tracing": res.tracing.enabled}


WEB = Path(__file__).resolve().parent / "web"
PAGE_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                                           "script-src 'self'; connect-src 'self'; frame-ancestors 'none'"}


@get("/", include_in_schema=False)
async def shopper_page() -> File:
    """The shopper chat (server/web/index.html); its data comes from /api/session-chat."""
    return File(WEB / "index.html", content_disposition_type="inline", media_type="text/html; charset=utf-8",
                headers=PAGE_HEADERS)


@get("/admin", include_in_schema=False)
async def operator_page() -> File:
    """The operator page; the page is static, its data (/api/admin/*) needs the admin token in production."""
    return File(WEB / "admin.html", content_disposition_type="inline", media_type="text/html; charset=utf-8",
                headers=PAGE_HEADERS)


static_files = create_static_files_router(path="/static", directories=[WEB], include_in_schema=False,
                                          cache_control=CacheControlHeader(no_cache=True))


class MetricsController(PrometheusController):
    """GET /metrics: Prometheus text format."""

    path = "/metrics"
    include_in_schema = True
    tags = ["operations"]


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with open_resources(settings) as resources:
            app.state.resources = resources
            yield

    prometheus = PrometheusConfig(app_name="sixshop-ai-agent", prefix="sixshop", group_path=True,
                                  exclude=["/metrics"])
    return Litestar(
        route_handlers=[SessionController, AdminController, AgentProtocolController, health, MetricsController,
                        shopper_page, operator_page, static_files],
        middleware=[prometheus.middleware],
        lifespan=[lifespan],
        state=State({"settings": settings}),
        exception_handlers={Exception: handle_exception},
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(title="sixshop-ai-agent", version=VERSION, path="/schema"),
        debug=False,
        logging_config=None,  # server.logs configures logging once for the process
    )
