"""Assistants: the one graph this service runs, as LangGraph's server describes an assistant; and /info."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.datastructures import State
from litestar.di import Provide
from litestar.params import FromPath

from graph.graph import build_graph
from server.errors import (
    AssistantNotFound,
)
from server.http.access import access
from server.http.agent_protocol.common import iso, provide_principal
from server.http.deps import Caller
from server.resources import Resources
from server.schemas import decode_body

ASSISTANT_ID = "agent"  # the graph's id in langgraph.json, and LangGraph's default assistant id

GRAPH_NAME = build_graph().name

STARTED = datetime.now(UTC)

class AssistantSearch(msgspec.Struct):
    graph_id: str | None = None
    metadata: dict[str, Any] | None = None
    limit: int = 10
    offset: int = 0

def assistant_json() -> dict[str, Any]:
    return {
        "assistant_id": ASSISTANT_ID,
        "graph_id": ASSISTANT_ID,
        "name": GRAPH_NAME,
        "description": "The store's customer-support agent: retrieve passages, then answer from them",
        "config": {},
        "context": {},
        "metadata": {"created_by": "system"},
        "version": 1,
        "created_at": iso(STARTED),
        "updated_at": iso(STARTED),
    }

def known_assistant(assistant_id: str | None) -> None:
    if assistant_id not in (None, ASSISTANT_ID, GRAPH_NAME):
        raise AssistantNotFound(detail={"assistant_id": assistant_id, "known": [ASSISTANT_ID]})


class AssistantController(Controller):
    """The assistant (the graph) and what the server supports."""
    path = "/"
    tags = ["agent-protocol"]
    dependencies = {"principal": Provide(provide_principal)}
    opt = access("agent")

    @get("/info", opt=access("public"))  # what the server is and supports: nothing of anyone's
    async def info(self, state: State) -> dict[str, Any]:
        res: Resources = state.resources
        return {"version": "0.1.0", "flags": {"assistants": True, "crons": False, "store": False,
                                                "langsmith": res.settings.tracing_enabled}}

    @get("/assistants/{assistant_id:str}")
    async def get_assistant(self, assistant_id: FromPath[str], principal: Caller) -> dict[str, Any]:
        known_assistant(assistant_id)
        return assistant_json()

    @post("/assistants/search", status_code=200)
    async def search_assistants(self, request: Request[Any, Any, Any], principal: Caller) -> list[dict[str, Any]]:
        body: AssistantSearch = decode_body(await request.body(), AssistantSearch)
        if body.graph_id not in (None, ASSISTANT_ID) or body.offset > 0:
            return []
        return [assistant_json()]
