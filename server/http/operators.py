"""/api/admin: the people behind the assistant (API.md, "Store settings and handoff") — sessions waiting for a
person, an operator's reply, the release that gives the session back to the assistant, and the store's webhook log.

The admin token or an admin key reaches every store; a store's own key reaches its own sessions and nothing else
(404 for another store's, as everywhere)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, QueryParameter

from server.errors import NotFound, SessionNotFound
from server.http.deps import checked, operator_of, parse_id, resources_of
from server.schemas import Message, OperatorReply, Session, StoreId, decode_body
from server.services.auth import Principal


@dataclass(frozen=True)
class Operator:
    """Who is acting: what they may see, and their name in the transcript and the change log (never a secret)."""

    principal: Principal
    name: str

    def require_store(self, store_id: str) -> None:
        self.principal.require_store(store_id, NotFound("No such store", {"store_id": store_id}))


async def provide_operator(request: Request[Any, Any, Any]) -> Operator:
    principal = await operator_of(request, "A valid admin token or API key is required (Authorization: Bearer ...)")
    if principal is None:
        return Operator(Principal(), "admin-token")
    return Operator(principal, "development" if principal.anonymous else f"key:{principal.key_id}")


OperatorDep = NamedDependency[Operator]  # the `operator` dependency


class OperatorController(Controller):
    path = "/api/admin"
    tags = ["operators"]
    dependencies = {"operator": Provide(provide_operator)}

    @get("/handoffs")
    async def handoffs(
        self,
        state: State,
        operator: OperatorDep,
        store_id: Annotated[StoreId | None, QueryParameter(name="store_id")] = None,
    ) -> dict[str, Any]:
        """Sessions waiting for a person, oldest first, with how long each has waited (a store key: its own)."""
        scope = operator.principal.store_id
        if store_id is not None:
            operator.require_store(store_id)
        return {"items": await resources_of(state).handoffs.waiting(store_id or scope)}

    @post("/sessions/{session_id:str}/reply", status_code=201)
    async def reply(self, session_id: FromPath[str], state: State, request: Request[Any, Any, Any],
                    operator: OperatorDep) -> Message:
        """An operator's message to a session waiting for a person (409 not_in_handoff otherwise): stored with role
        `operator` and who wrote it, and shown on the shopper's open page at once (the session's event stream)."""
        body = decode_body(await request.body(), OperatorReply)
        session = await _session(state, operator, session_id)
        return await resources_of(state).handoffs.reply(session.session_id, body.content,
                                                        body.operator or operator.name)

    @post("/sessions/{session_id:str}/release", status_code=200)
    async def release(self, session_id: FromPath[str], state: State, operator: OperatorDep) -> Session:
        """Give the session back to the assistant (409 not_in_handoff if it is not waiting for a person): the
        graph resumes with what was written meanwhile, and the next message is answered with all of it."""
        session = await _session(state, operator, session_id)
        res = resources_of(state)
        await res.handoffs.release(session.session_id, operator.name)
        return await res.sessions.get(session.session_id)


    @get("/stores/{store_id:str}/webhooks")
    async def webhooks(self, store_id: FromPath[str], state: State, operator: OperatorDep) -> dict[str, Any]:
        """The store's last 50 webhook deliveries, newest first, each with every attempt (status code or error,
        duration): what `/admin` shows."""
        store = checked(store_id, StoreId, "store_id")
        operator.require_store(store)
        return {"items": await resources_of(state).webhooks.log(store)}


async def _session(state: State, operator: Operator, session_id: str) -> Session:
    sid = parse_id(session_id, "session_id")
    session = await resources_of(state).sessions.get(sid)
    operator.principal.require_store(session.store_id, SessionNotFound(detail={"session_id": session_id}))
    return session
