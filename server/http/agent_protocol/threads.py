"""Threads: a thread IS a session (create, get, delete, search) and its state (state, history: only the latest
state is kept, checkpoints are pruned per turn)."""

from __future__ import annotations

import asyncio
from typing import Any, Literal
from uuid import UUID

import msgspec
import psycopg
from litestar import Controller, Request, delete, get, post
from litestar.datastructures import State
from litestar.di import Provide
from litestar.params import FromPath

from server.errors import (
    Forbidden,
    ThreadExists,
    Unsupported,
    ValidationFailed,
)
from server.http.access import access
from server.http.agent_protocol.assistants import ASSISTANT_ID
from server.http.agent_protocol.common import iso, latest_state, owned, provide_principal, values_of
from server.http.deps import Caller, checked
from server.resources import Resources
from server.schemas import Session, StoreId, UserId, decode_body
from server.services.auth import Principal


class ThreadCreate(msgspec.Struct):
    thread_id: UUID | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    if_exists: Literal["raise", "do_nothing"] = "raise"
    supersteps: list[Any] | None = None

class ThreadSearch(msgspec.Struct):
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    values: dict[str, Any] | None = None
    status: Literal["idle", "busy", "interrupted", "error"] | None = None
    limit: int = 10
    offset: int = 0
    sort_by: str | None = None
    sort_order: Literal["asc", "desc"] | None = None
    select: list[str] | None = None

class HistoryRequest(msgspec.Struct):
    limit: int = 10
    before: Any = None
    metadata: dict[str, Any] | None = None
    checkpoint: dict[str, Any] | None = None

def thread_json(session: Session, values: dict[str, Any] | None = None) -> dict[str, Any]:
    metadata = {**session.metadata, "store_id": session.store_id, "graph_id": ASSISTANT_ID,
                "assistant_id": ASSISTANT_ID}
    if session.user_id is not None:
        metadata["user_id"] = session.user_id
    out: dict[str, Any] = {
        "thread_id": str(session.session_id),
        "created_at": iso(session.created_at),
        "updated_at": iso(session.last_activity_at),
        "metadata": metadata,
        # a thread handed to a person waits at its interrupt (graph/handoff.py) until an operator releases it
        "status": "interrupted" if session.status == "handoff" else "busy" if session.turn_running else "idle",
        "interrupts": {},
    }
    if values is not None:
        out["values"] = values
    return out

def state_json(thread_id: UUID, snapshot: Any) -> dict[str, Any]:
    configurable = (snapshot.config or {}).get("configurable", {})
    parent = (snapshot.parent_config or {}).get("configurable") if snapshot.parent_config else None
    return {
        "values": values_of(snapshot),
        "next": list(snapshot.next or ()),
        "tasks": [],
        "interrupts": [],
        "metadata": dict(snapshot.metadata or {}),
        "created_at": snapshot.created_at,
        "checkpoint": {"thread_id": str(thread_id), "checkpoint_ns": configurable.get("checkpoint_ns", ""),
                       "checkpoint_id": configurable.get("checkpoint_id")},
        "parent_checkpoint": (
            {"thread_id": str(thread_id), "checkpoint_ns": parent.get("checkpoint_ns", ""),
             "checkpoint_id": parent.get("checkpoint_id")} if parent else None
        ),
    }

async def _history(res: Resources, principal: Principal, thread_id: str) -> list[dict[str, Any]]:
    session = await owned(res, principal, thread_id)
    snapshot = await latest_state(res, session.session_id)
    return [state_json(session.session_id, snapshot)] if snapshot.created_at else []


class ThreadController(Controller):
    """Threads as LangGraph's SDK and the Agent Protocol call them."""
    path = "/"
    tags = ["agent-protocol"]
    dependencies = {"principal": Provide(provide_principal)}
    opt = access("agent")

    @post("/threads", status_code=200)
    async def create_thread(self, request: Request[Any, Any, Any], state: State,
                            principal: Caller) -> dict[str, Any]:
        res: Resources = state.resources
        body: ThreadCreate = decode_body(await request.body(), ThreadCreate)
        if body.supersteps:
            raise Unsupported("'supersteps' is not supported by this service", {"field": "supersteps"})
        metadata = dict(body.metadata)
        store_id = metadata.pop("store_id", None) or principal.store_id or res.settings.default_store()
        user_id = metadata.pop("user_id", None)
        for key in ("graph_id", "assistant_id"):
            metadata.pop(key, None)
        if store_id is None:
            raise ValidationFailed("metadata.store_id is required (or a store key, or DEFAULT_STORE_ID): the store "
                                   "whose knowledge the thread uses",
                                   {"field": "metadata.store_id"})
        store_id = checked(store_id, StoreId, "metadata.store_id")
        user_id = None if user_id is None else checked(user_id, UserId, "metadata.user_id")
        if not principal.may_see(store_id) or principal.shopper:  # a session token has its one thread
            raise Forbidden("This credential cannot open a thread in this store", {"store_id": store_id})
        try:
            session = await res.sessions.create(store_id, user_id, metadata, session_id=body.thread_id)
        except psycopg.errors.UniqueViolation:
            assert body.thread_id is not None
            if body.if_exists == "raise":
                raise ThreadExists(detail={"thread_id": str(body.thread_id)}) from None
            session = await owned(res, principal, body.thread_id)
        return thread_json(session, {"messages": []} if session.message_count == 0 else None)

    @get("/threads/{thread_id:str}")
    async def get_thread(self, thread_id: FromPath[str], state: State, principal: Caller) -> dict[str, Any]:
        res: Resources = state.resources
        session = await owned(res, principal, thread_id)
        snapshot = await latest_state(res, session.session_id)
        return thread_json(session, values_of(snapshot))

    @delete("/threads/{thread_id:str}", status_code=204)
    async def delete_thread(self, thread_id: FromPath[str], state: State, principal: Caller) -> None:
        res: Resources = state.resources
        session = await owned(res, principal, thread_id)
        await res.sessions.delete(session.session_id)

    @post("/threads/search", status_code=200)
    async def search_threads(self, request: Request[Any, Any, Any], state: State,
                             principal: Caller) -> list[dict[str, Any]]:
        res: Resources = state.resources
        body: ThreadSearch = decode_body(await request.body(), ThreadSearch)
        if not 1 <= body.limit <= 1000 or not 0 <= body.offset <= 10_000:
            raise ValidationFailed("limit must be 1..1000 and offset 0..10000", {"field": "limit"})
        if body.values:
            raise Unsupported("searching by state values is not supported", {"field": "values"})
        if body.sort_by not in (None, "created_at") or body.sort_order not in (None, "desc"):
            raise Unsupported("threads are listed newest first (sort_by created_at, desc)", {"field": "sort_by"})
        if body.status == "error":
            return []  # a turn never leaves its thread in error: the next turn may run
        metadata = dict(body.metadata)
        store_id, user_id = metadata.pop("store_id", None), metadata.pop("user_id", None)
        store_id = None if store_id is None else checked(store_id, StoreId, "metadata.store_id")
        user_id = None if user_id is None else checked(user_id, UserId, "metadata.user_id")
        metadata.pop("graph_id", None)
        metadata.pop("assistant_id", None)
        if principal.store_id is not None:
            if store_id not in (None, principal.store_id):
                return []
            store_id = principal.store_id
        interrupted = body.status == "interrupted"  # waiting for a person: the sessions in handoff
        page = await res.sessions.list(store_id=store_id, user_id=user_id, status="handoff" if interrupted else None,
                                       limit=body.offset + body.limit, cursor=None, metadata=metadata or None,
                                       busy=None if body.status is None or interrupted else body.status == "busy",
                                       within=principal)
        sessions = page.items[body.offset:]
        if body.select is not None and "values" in body.select:
            snapshots = await asyncio.gather(*(
                latest_state(res, s.session_id) for s in sessions))
            return [thread_json(s, values_of(snap)) for s, snap in zip(sessions, snapshots, strict=True)]
        return [thread_json(s) for s in sessions]

    @get("/threads/{thread_id:str}/state")
    async def get_state(self, thread_id: FromPath[str], state: State, principal: Caller) -> dict[str, Any]:
        res: Resources = state.resources
        session = await owned(res, principal, thread_id)
        snapshot = await latest_state(res, session.session_id)
        return state_json(session.session_id, snapshot)

    @get("/threads/{thread_id:str}/history")
    async def get_history(self, thread_id: FromPath[str], state: State, principal: Caller) -> list[dict[str, Any]]:
        """The thread's states, newest first: only the latest is kept (checkpoints are pruned per turn)."""
        return await _history(state.resources, principal, thread_id)

    @post("/threads/{thread_id:str}/history", status_code=200)
    async def post_history(self, thread_id: FromPath[str], request: Request[Any, Any, Any], state: State,
                           principal: Caller) -> list[dict[str, Any]]:
        body: HistoryRequest = decode_body(await request.body(), HistoryRequest)
        if body.before or body.checkpoint:
            return []  # nothing older than the latest state is kept
        return (await _history(state.resources, principal, thread_id))[:max(1, body.limit)]
