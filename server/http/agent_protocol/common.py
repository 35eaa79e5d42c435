"""What every Agent Protocol route shares: who is calling, the thread it may see, the thread's state, and the
shapes of times, messages and values."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from langchain_core.messages import BaseMessage
from litestar import Request
from litestar.datastructures import State

from server.http.access import authorization_of
from server.http.deps import parse_id
from server.resources import Resources
from server.schemas import Session
from server.services.auth import Principal


async def provide_principal(request: Request[Any, Any, Any], state: State) -> Principal:
    resources: Resources = state.resources
    return await resources.auth.principal(authorization_of(request), request.headers.get("origin"),
                                          request.headers.get("host"))

async def owned(res: Resources, principal: Principal, thread_id: str | UUID) -> Session:
    sid = thread_id if isinstance(thread_id, UUID) else parse_id(thread_id, "thread_id")
    return await res.sessions.get_visible(sid, principal)

async def latest_state(res: Resources, thread_id: UUID | str) -> Any:
    """The thread's latest state, from the service's checkpointer."""
    return await res.chat.graph.aget_state({"configurable": {"thread_id": str(thread_id)}})

def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None

def message_json(message: BaseMessage) -> dict[str, Any]:
    """A message as LangGraph's server sends it: the LangChain message's fields (type, content, id...)."""
    return message.model_dump(mode="json")

def values_of(snapshot: Any) -> dict[str, Any]:
    values = dict(snapshot.values or {})
    if "messages" in values:
        values["messages"] = [message_json(m) if isinstance(m, BaseMessage) else m for m in values["messages"]]
    return values
