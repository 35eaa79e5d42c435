"""/api/admin: operators' capacity, stores, statistics, session search and transcripts."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.di import Provide
from litestar.handlers import BaseRouteHandler
from litestar.params import FromPath, QueryParameter

from persistence.admin import AdminRepository
from server.errors import Forbidden, ValidationFailed
from server.http.access import access
from server.http.deps import (
    OperatorDep,
    StatsRequest,
    operator_of,
    owned_session,
    provide_operator,
    resources_of,
    stats_query,
)
from server.schemas import CreatedKey, KeyRequest, StoreId, StoreStats, decode_body


async def admin_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """/api/admin/*: Bearer ADMIN_TOKEN, an admin API key or a signed-in operator (their stores); open only in
    development before any key exists. A store key has the store routes (settings, handoffs), not these."""
    principal = (await operator_of(connection, "A valid admin token or operator sign-in is required")).principal
    if principal.kind == "key" and not principal.admin:
        raise Forbidden("This API key is for one store; the admin API needs an admin key")


class AdminController(Controller):
    path = "/api/admin"
    tags = ["admin"]
    guards = [admin_guard]
    dependencies = {"operator": Provide(provide_operator)}
    opt = access("operator")

    @get("/capacity")
    async def capacity(self, state: State, operator: OperatorDep) -> dict[str, Any]:
        """Against the seed's thresholds for Aurora or Redis: connections, sessions a month, latency, sizes."""
        if operator.principal.stores is not None:
            raise Forbidden("The capacity report is the deployment's, for its administrators")
        return await resources_of(state).capacity.report()

    @post("/keys", status_code=201)
    async def create_key(self, state: State, request: Request[Any, Any, Any], operator: OperatorDep) -> CreatedKey:
        """A new API key, shown once: a store's publishable key (`publishable`: for its web page; an operator may make
        one for their own stores), or a secret store or admin key (administrators only)."""
        body = decode_body(await request.body(), KeyRequest)
        if body.publishable and body.store_id is None:
            raise ValidationFailed("a publishable key belongs to one store: give store_id", {"field": "store_id"})
        if operator.principal.stores is not None and not body.publishable:
            raise Forbidden("Operators make publishable keys only; secret keys are the administrators'")
        if body.store_id is not None:
            operator.require_store(body.store_id)
        elif operator.principal.store_id is not None or operator.principal.stores is not None:
            raise Forbidden("Only an administrator makes an admin key")
        key, row = await resources_of(state).auth.keys.create(store_id=body.store_id, name=body.name,
                                                               publishable=body.publishable)
        return CreatedKey(key=key, key_id=row["key_id"], store_id=row["store_id"], kind=row["kind"],
                          prefix=row["prefix"])

    @get("/stores")
    async def stores(self, state: State, operator: OperatorDep) -> dict[str, Any]:
        """Every store with sessions: id, session count, last activity (the operator page's picker); an operator's
        own stores only, those without sessions yet included."""
        rows = await AdminRepository(resources_of(state).pool).stores()
        reach = operator.principal.stores
        if reach is None:
            return {"items": rows}
        seen = {r["store_id"]: r for r in rows if r["store_id"] in reach}
        return {"items": [seen.get(s) or {"store_id": s, "session_count": 0, "last_activity_at": None}
                          for s in sorted(reach)]}

    @get("/stats", dependencies={"stats_request": Provide(stats_query)})
    async def stats(self, state: State, stats_request: StatsRequest, operator: OperatorDep) -> StoreStats:
        """GET /api/session-chat/stats for operators (their stores; ADMIN_TOKEN or an admin key: any)."""
        operator.require_store(stats_request.store_id)
        return await stats_request.run(resources_of(state))

    @get("/sessions")
    async def search_sessions(
        self,
        state: State,
        store_id: Annotated[StoreId | None, QueryParameter(name="store_id")] = None,
        q: Annotated[str | None, QueryParameter(name="q", max_length=200)] = None,
        limit: Annotated[int, QueryParameter(name="limit", ge=1, le=200)] = 50,
        *,
        operator: OperatorDep,
    ) -> dict[str, Any]:
        """Sessions, newest activity first; `q` matches a session id prefix, the user id or message text."""
        store = operator.scope(store_id)
        return {"items": await AdminRepository(resources_of(state).pool).search_sessions(store, q, limit)}

    @get("/sessions/{session_id:str}/transcript")
    async def transcript(self, session_id: FromPath[str], state: State, operator: OperatorDep) -> dict[str, Any]:
        """A session and every message with its usage, timings, sources, feedback and LangSmith link."""
        res = resources_of(state)
        session = await owned_session(res, operator.principal, session_id)
        rows = await AdminRepository(res.pool).transcript(session.session_id)
        messages = []
        for row in rows:
            row["trace_url"] = await res.tracing.trace_url(row["run_id"]) if row["role"] == "assistant" else None
            messages.append(row)
        return {"session": session, "messages": messages, "tracing": res.tracing.enabled}
