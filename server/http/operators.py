"""/api/admin: the people behind the assistant (API.md, "Store settings and handoff") — sessions waiting for a
person, an operator's reply, the release that gives the session back to the assistant, and the store's webhook log.

The admin token or an admin key reaches every store; a store's own key reaches its own sessions and nothing else
(404 for another store's, as everywhere)."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.datastructures import State
from litestar.di import Provide
from litestar.params import FromPath, QueryParameter

from server.http.access import access
from server.http.deps import OperatorDep, owned_session, provide_operator, resources_of
from server.schemas import Message, OperatorReply, Session, StoreId, decode_body


class OperatorController(Controller):
    path = "/api/admin"
    tags = ["operators"]
    dependencies = {"operator": Provide(provide_operator)}
    opt = access("operator")

    @get("/handoffs")
    async def handoffs(
        self,
        state: State,
        operator: OperatorDep,
        store_id: Annotated[StoreId | None, QueryParameter(name="store_id")] = None,
    ) -> dict[str, Any]:
        """Sessions waiting for a person, oldest first, with how long each has waited (a store key: its own)."""
        return {"items": await resources_of(state).handoffs.waiting(operator.scope(store_id))}

    @post("/sessions/{session_id:str}/reply", status_code=201)
    async def reply(self, session_id: FromPath[str], state: State, request: Request[Any, Any, Any],
                    operator: OperatorDep) -> Message:
        """An operator's message to a session waiting for a person (409 not_in_handoff otherwise): stored with role
        `operator` and who wrote it, and shown on the shopper's open page at once (the session's event stream)."""
        body = decode_body(await request.body(), OperatorReply)
        res = resources_of(state)
        session = await owned_session(res, operator.principal, session_id)
        return await res.handoffs.reply(session.session_id, body.content, body.operator or operator.shown_name)

    @post("/sessions/{session_id:str}/release", status_code=200)
    async def release(self, session_id: FromPath[str], state: State, operator: OperatorDep) -> Session:
        """Give the session back to the assistant (409 not_in_handoff if it is not waiting for a person): the
        graph resumes with what was written meanwhile, and the next message is answered with all of it."""
        res = resources_of(state)
        session = await owned_session(res, operator.principal, session_id)
        await res.handoffs.release(session.session_id, operator.name)
        return await res.sessions.get(session.session_id)


    @get("/stores/{store_id:str}/webhooks")
    async def webhooks(self, store_id: FromPath[str], state: State, operator: OperatorDep) -> dict[str, Any]:
        """The store's last 50 webhook deliveries, newest first, each with every attempt (status code or error,
        duration): what `/admin` shows."""
        return {"items": await resources_of(state).webhooks.log(operator.path_store(store_id))}
