"""The Agent Protocol front door: the part of LangGraph Platform's API a chat front end needs.

Clients written for LangGraph Platform (`langgraph_sdk.get_client(url=...)`, LangChain's Agent Chat UI)
talk to the service through these routes; a thread IS a session and a run IS a turn, stored, counted
and traced like any turn of /api/session-chat. Supported (README "Agent Protocol"):

    POST   /threads                      threads.create   (metadata.store_id; thread_id; if_exists)
    GET    /threads/{id}                 threads.get      (with values: the conversation)
    DELETE /threads/{id}                 threads.delete   (soft delete, like DELETE /sessions/{id})
    POST   /threads/search               threads.search   (metadata, status, limit, offset)
    GET    /threads/{id}/state           threads.get_state
    GET|POST /threads/{id}/history       threads.get_history (the latest state: older ones are pruned)
    POST   /threads/{id}/runs/stream     runs.stream (stream_mode messages-tuple, values, updates, custom)
    POST   /runs/stream                  the Agent Protocol's form, thread_id in the body
    POST   /threads/{id}/runs, /runs     runs.create (a background run)
    GET    /threads/{id}/runs[/{run}]    runs.list, runs.get (also GET /runs/{run}, POST /runs/search)
    GET    /threads/{id}/runs/{run}/stream   runs.join_stream with Last-Event-ID (also GET /runs/{run}/stream)
    POST   /threads/{id}/runs/wait, GET /threads/{id}/runs/{run}/join   runs.wait, runs.join (also /runs/wait...)
    POST   /threads/{id}/runs/{run}/cancel   runs.cancel (also POST /runs/{run}/cancel)
    GET    /assistants/{id}, POST /assistants/search, GET /info

Shapes follow the Agent Protocol's OpenAPI document where it has the path (checked in
tests/test_agent_protocol.py against ../shared/reference/agent-protocol-openapi.json) and LangGraph's
Agent Server where the SDK calls a LangGraph extension (`/state`, `/threads/{id}/runs/stream`). What a
run cannot do here (commands, interrupts, checkpoints to resume from, webhooks, other stream modes)
is refused with 422 `unsupported`, never silently ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
import psycopg
from langchain_core.messages import BaseMessage
from litestar import Controller, Request, Response, delete, get, post
from litestar.datastructures import State
from litestar.di import Provide
from litestar.params import FromPath, QueryParameter
from litestar.response import Stream

from graph.graph import build_graph
from graph.retrieval import sources_event
from server import metrics
from server.errors import (
    AssistantNotFound,
    Forbidden,
    RateLimited,
    RunNotFound,
    SessionNotFound,
    ThreadExists,
    ThreadInterrupted,
    Unsupported,
    ValidationFailed,
)
from server.http.access import access, authorization_of
from server.http.deps import SSE_HEADERS, Caller, checked, parse_event_id, parse_id
from server.resources import Resources
from server.schemas import Session, StoreId, UserId, decode_body, sse_frame
from server.services.auth import Principal
from server.services.turns.admission import OnBusy
from server.services.turns.events import Batches, Numbered, Turn

ASSISTANT_ID = "agent"  # the graph's id in langgraph.json, and LangGraph's default assistant id
GRAPH_NAME = build_graph().name
# what useStream and Agent Chat UI send: values, updates, messages-tuple, and custom (always, as Agent Chat UI gives
# onCustomEvent); tasks, checkpoints, debug and events come only with callbacks Agent Chat UI does not give, and are
# refused by name
STREAM_MODES = frozenset({"messages-tuple", "values", "updates", "custom"})
STARTED = datetime.now(UTC)


# -- request bodies: what the SDK and the Agent Protocol send; unknown keys are allowed (the SDK sends
#    many optional ones), the ones we cannot honour are refused by name below

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


class AssistantSearch(msgspec.Struct):
    graph_id: str | None = None
    metadata: dict[str, Any] | None = None
    limit: int = 10
    offset: int = 0


class RunSearch(msgspec.Struct):
    thread_id: UUID | None = None
    agent_id: str | None = None
    metadata: dict[str, Any] | None = None
    status: str | None = None
    limit: int = 10
    offset: int = 0


class RunStream(msgspec.Struct):
    assistant_id: str | None = None
    agent_id: str | None = None  # the Agent Protocol's name for it
    thread_id: UUID | None = None  # POST /runs/stream
    input: Any = None
    messages: list[Any] | None = None  # the Agent Protocol's form of the input
    stream_mode: str | list[str] = "values"
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    config: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    if_not_exists: Literal["create", "reject"] = "reject"
    # LangGraph's default is cancel; a resumable stream is made to be rejoined, so it goes on by default
    on_disconnect: Literal["cancel", "continue"] | None = None
    multitask_strategy: Literal["reject", "interrupt", "rollback", "enqueue"] = "reject"
    command: dict[str, Any] | None = None
    interrupt_before: Any = None
    interrupt_after: Any = None
    checkpoint: dict[str, Any] | None = None
    checkpoint_id: str | None = None
    webhook: str | None = None
    stream_subgraphs: bool = False
    stream_resumable: bool = False


# -- who is calling: the SDK sends its key as x-api-key; Authorization: Bearer works too

async def provide_principal(request: Request[Any, Any, Any], state: State) -> Principal:
    resources: Resources = state.resources
    return await resources.auth.principal(authorization_of(request), request.headers.get("origin"),
                                          request.headers.get("host"))


async def _owned(res: Resources, principal: Principal, thread_id: str | UUID) -> Session:
    sid = thread_id if isinstance(thread_id, UUID) else parse_id(thread_id, "thread_id")
    return await res.sessions.get_visible(sid, principal)


async def _snapshot(res: Resources, thread_id: UUID | str) -> Any:
    """The thread's latest state, from the service's checkpointer."""
    return await res.chat.graph.aget_state({"configurable": {"thread_id": str(thread_id)}})


# -- shapes --------------------------------------------------------------------------------------

def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def message_json(message: BaseMessage) -> dict[str, Any]:
    """A message as LangGraph's server sends it: the LangChain message's fields (type, content, id...)."""
    return message.model_dump(mode="json")


def _values(snapshot: Any) -> dict[str, Any]:
    values = dict(snapshot.values or {})
    if "messages" in values:
        values["messages"] = [message_json(m) if isinstance(m, BaseMessage) else m for m in values["messages"]]
    return values


def thread_json(session: Session, values: dict[str, Any] | None = None) -> dict[str, Any]:
    metadata = {**session.metadata, "store_id": session.store_id, "graph_id": ASSISTANT_ID,
                "assistant_id": ASSISTANT_ID}
    if session.user_id is not None:
        metadata["user_id"] = session.user_id
    out: dict[str, Any] = {
        "thread_id": str(session.session_id),
        "created_at": _iso(session.created_at),
        "updated_at": _iso(session.last_activity_at),
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
        "values": _values(snapshot),
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
        "created_at": _iso(STARTED),
        "updated_at": _iso(STARTED),
    }


def _known_assistant(assistant_id: str | None) -> None:
    if assistant_id not in (None, ASSISTANT_ID, GRAPH_NAME):
        raise AssistantNotFound(detail={"assistant_id": assistant_id, "known": [ASSISTANT_ID]})


# -- a run's input and its events ------------------------------------------------------------------

def _text_of(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content blocks: the text ones
        parts = [b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text"]
        parts += [b for b in content if isinstance(b, str)]
        return "".join(parts) if parts else None
    return None


def user_text(body: RunStream) -> str:
    """The shopper's question: the last user message of input.messages (or the body's messages)."""
    messages: Any = body.messages
    if messages is None and isinstance(body.input, dict):
        messages = body.input.get("messages")
    if isinstance(messages, dict | str):
        messages = [messages]
    for item in reversed(messages if isinstance(messages, list) else []):
        if isinstance(item, str):
            return item
        if isinstance(item, list | tuple) and len(item) == 2 and item[0] in ("user", "human"):
            text = _text_of(item[1])
        elif isinstance(item, dict) and (item.get("role") or item.get("type")) in ("user", "human"):
            text = _text_of(item.get("content"))
        else:
            continue
        if text is not None:
            return text
    raise ValidationFailed("input.messages must end with a user message",
                           {"field": "input.messages", "example": {"messages": [{"role": "user", "content": "..."}]}})


def stream_modes(value: str | list[str]) -> set[str]:
    modes = {value} if isinstance(value, str) else set(value)
    if "messages" in modes:  # the SDK's "messages" is LangGraph's partial-message mode
        raise Unsupported("stream_mode 'messages' is not supported; use 'messages-tuple'",
                          {"supported": sorted(STREAM_MODES)})
    unknown = modes - STREAM_MODES
    if unknown or not modes:
        raise Unsupported(f"stream_mode {sorted(unknown)} is not supported", {"supported": sorted(STREAM_MODES)})
    return modes


def refuse_unsupported(body: RunStream) -> None:
    named = {
        "command": body.command, "interrupt_before": body.interrupt_before, "interrupt_after": body.interrupt_after,
        "webhook": body.webhook,
        "stream_subgraphs": body.stream_subgraphs or None,
    }
    for name, value in named.items():
        if value:
            raise Unsupported(f"'{name}' is not supported by this service", {"field": name})
    if body.multitask_strategy == "rollback":
        raise Unsupported("multitask_strategy 'rollback' is not supported (reject, enqueue or interrupt)",
                          {"field": "multitask_strategy"})


async def _from_latest(res: Resources, thread_id: UUID, body: RunStream) -> None:
    """A run may name the checkpoint it continues from (useStream sends the thread's head with every message); the
    latest is the only one kept (pruned per turn), so naming another — forking from an earlier state — is refused
    by name."""
    named = body.checkpoint_id or (body.checkpoint or {}).get("checkpoint_id")
    if not named:
        return
    latest = (await _snapshot(res, thread_id)).config.get("configurable", {}).get("checkpoint_id")
    if named != latest:
        raise Unsupported("'checkpoint' names an earlier state of the thread: runs continue from its latest state "
                          "(older checkpoints are not kept)", {"field": "checkpoint", "latest": latest})


def _chunk(message_id: str, content: str, **extra: Any) -> dict[str, Any]:
    return {"type": "AIMessageChunk", "id": message_id, "content": content, "additional_kwargs": {},
            "response_metadata": {}, "name": None, "tool_calls": [], "invalid_tool_calls": [],
            "tool_call_chunks": [], "usage_metadata": None, **extra}


@dataclass(frozen=True)
class RunRef:
    """Which run a stream is of, for the shapes of its events."""
    run_id: UUID
    thread_id: UUID
    store_id: str


RUN_STATUS = {"queued": "pending", "streaming": "running", "complete": "success", "cancelled": "interrupted"}
# a run status asked for → (message status, whether it timed out)
STATUS_FILTER: dict[str, tuple[str, bool | None]] = {
    "pending": ("queued", None), "running": ("streaming", None), "success": ("complete", None),
    "interrupted": ("cancelled", None), "error": ("error", False), "timeout": ("error", True)}


def run_json(row: dict[str, Any]) -> dict[str, Any]:
    """A turn as a run (LangGraph's Run; the Agent Protocol's has no `running`, which the SDK relies on)."""
    status = RUN_STATUS.get(row["status"]) or ("timeout" if row["error_code"] == "timeout" else "error")
    return {"run_id": str(row["message_id"]), "thread_id": str(row["session_id"]), "assistant_id": ASSISTANT_ID,
            "created_at": _iso(row["created_at"]), "updated_at": _iso(row["updated_at"]), "status": status,
            "metadata": row["metadata"] or {}, "kwargs": {}}


def run_paths(thread_id: UUID | str, run_id: UUID | str, modes: set[str]) -> dict[str, str]:
    """Content-Location (where the run is: the SDK reads its ids from it) and, for a resumable stream, Location
    (where the SDK reconnects with Last-Event-ID: the run's stream, in the same stream modes)."""
    run = f"/threads/{thread_id}/runs/{run_id}"
    query = "&".join(f"stream_mode={m}" for m in sorted(modes))
    return {"Content-Location": run, "Location": f"{run}/stream?{query}"}


async def one_by_one(items: Numbered) -> Batches:
    async with contextlib.aclosing(items):
        async for item in items:
            yield [item]


async def run_events(res: Resources, run: RunRef, batches: Batches,
                     modes: set[str], before: dict[str, Any] | None, *, resumable: bool) -> AsyncIterator[bytes]:
    """A turn's events in the shapes LangGraph's server streams (metadata, messages, updates, values, error); the
    turn itself is the service's, so it is stored and traced as usual. Resumable: the last frame made of each of
    our events carries its id, so a client reconnecting with it as Last-Event-ID resumes exactly after it (a cut
    inside the frames of one event repeats that event's frames, which are idempotent: full values, the final
    message by id, an empty closing chunk). A re-run after a dead replica is a `metadata` with its attempt."""
    run_id, thread_id = str(run.run_id), str(run.thread_id)
    meta = {"langgraph_node": "generate", "langgraph_step": 2, "thread_id": thread_id, "run_id": run_id,
            "assistant_id": ASSISTANT_ID, "graph_id": ASSISTANT_ID, "store_id": run.store_id}
    restarted = False
    async with contextlib.aclosing(batches):
        async for batch in batches:  # a batch's frames leave in one write
            out: list[bytes] = []
            for n, event, data in batch:
                restarted = await _frames_of(res, run, n, event, data, modes, before, meta, restarted, resumable,
                                             out)
            if out:  # (an empty body chunk is no write at all)
                yield b"".join(out)


async def _frames_of(res: Resources, run: RunRef, n: int, event: str, data: dict[str, Any], modes: set[str],
                     before: dict[str, Any] | None, meta: dict[str, Any], restarted: bool, resumable: bool,
                     out: list[bytes]) -> bool:
    """One of our events as LangGraph's server's frames, added to `out`; whether the run has restarted."""
    run_id, thread_id = str(run.run_id), str(run.thread_id)
    frames: list[tuple[str, Any]] = []
    if event == "restart":
        restarted = True
        frames.append(("metadata", {"run_id": run_id, "thread_id": thread_id, "attempt": data["attempt"]}))
    elif event == "metadata":
        if not restarted:
            frames.append(("metadata", {"run_id": run_id, "thread_id": thread_id, "attempt": 1}))
        if "values" in modes and before is not None:
            frames.append(("values", before))
    elif event == "sources":
        if "updates" in modes:
            frames.append(("updates", {"retrieve": {"passages": data["sources"]}}))
        if "custom" in modes:  # what the graph's retrieve node writes to LangGraph's stream writer
            frames.append(("custom", sources_event(data["sources"])))
    elif event == "custom" and "custom" in modes:  # anything else a node wrote: passed through
        frames.append(("custom", data))
    elif event == "token" and "messages-tuple" in modes:
        frames.append(("messages", [_chunk(run_id, data["delta"]), meta]))
    elif event == "done":
        message = data["message"]
        usage = {"input_tokens": message.input_tokens, "output_tokens": message.output_tokens,
                 "total_tokens": message.input_tokens + message.output_tokens}
        if "messages-tuple" in modes:  # the closing chunk: finish reason and the provider's usage
            frames.append(("messages", [_chunk(run_id, "", usage_metadata=usage, chunk_position="last",
                                               response_metadata={"finish_reason": "stop",
                                                                  "model_name": message.model}), meta]))
        if "updates" in modes:
            final = {"type": "ai", "id": run_id, "content": message.content, "usage_metadata": usage,
                     "response_metadata": {"finish_reason": "stop", "model_name": message.model}}
            frames.append(("updates", {"generate": {"messages": [final]}}))
        if "values" in modes:
            frames.append(("values", _values(await _snapshot(res, thread_id))))
    elif event == "handoff" and "updates" in modes:  # the run ends at the graph's interrupt: a person replies
        frames.append(("updates", {"__interrupt__": [{"value": {"waiting_for": "operator", **data},
                                                      "id": run_id}]}))
    elif event == "error":
        frames.append(("error", {"error": data.get("code", "internal_error"), "message": data.get("message", ""),
                                 "run_id": run_id}))
    for i, (name, payload) in enumerate(frames, start=1):
        out.append(sse_frame(n if resumable and i == len(frames) else None, name, payload))
    return restarted


# -- routes --------------------------------------------------------------------------------------

class AgentProtocolController(Controller):
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
        _known_assistant(assistant_id)
        return assistant_json()

    @post("/assistants/search", status_code=200)
    async def search_assistants(self, request: Request[Any, Any, Any], principal: Caller) -> list[dict[str, Any]]:
        body: AssistantSearch = decode_body(await request.body(), AssistantSearch)
        if body.graph_id not in (None, ASSISTANT_ID) or body.offset > 0:
            return []
        return [assistant_json()]

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
            session = await _owned(res, principal, body.thread_id)
        return thread_json(session, {"messages": []} if session.message_count == 0 else None)

    @get("/threads/{thread_id:str}")
    async def get_thread(self, thread_id: FromPath[str], state: State, principal: Caller) -> dict[str, Any]:
        res: Resources = state.resources
        session = await _owned(res, principal, thread_id)
        snapshot = await _snapshot(res, session.session_id)
        return thread_json(session, _values(snapshot))

    @delete("/threads/{thread_id:str}", status_code=204)
    async def delete_thread(self, thread_id: FromPath[str], state: State, principal: Caller) -> None:
        res: Resources = state.resources
        session = await _owned(res, principal, thread_id)
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
                _snapshot(res, s.session_id) for s in sessions))
            return [thread_json(s, _values(snap)) for s, snap in zip(sessions, snapshots, strict=True)]
        return [thread_json(s) for s in sessions]

    @get("/threads/{thread_id:str}/state")
    async def get_state(self, thread_id: FromPath[str], state: State, principal: Caller) -> dict[str, Any]:
        res: Resources = state.resources
        session = await _owned(res, principal, thread_id)
        snapshot = await _snapshot(res, session.session_id)
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


async def _history(res: Resources, principal: Principal, thread_id: str) -> list[dict[str, Any]]:
    session = await _owned(res, principal, thread_id)
    snapshot = await _snapshot(res, session.session_id)
    return [state_json(session.session_id, snapshot)] if snapshot.created_at else []


async def begin_run(res: Resources, principal: Principal, thread_id: UUID, body: RunStream, *,
                    background: bool = False) -> tuple[Turn, set[str], dict[str, Any] | None]:
    """Everything that can be refused is refused before the run starts: (turn, stream modes, the state as the run
    starts when `values` is streamed). A background run does not belong to any connection."""
    _known_assistant(body.assistant_id or body.agent_id)
    refuse_unsupported(body)
    modes = stream_modes(body.stream_mode)
    text = user_text(body)
    try:
        session = await _owned(res, principal, thread_id)
        if session.status == "handoff":  # refused before anything is stored: an operator answers, not a run
            raise ThreadInterrupted(detail={"thread_id": str(thread_id)})
        await _from_latest(res, thread_id, body)
    except SessionNotFound:
        if body.if_not_exists != "create":
            metrics.record_refusal("not_found")
            raise
        store_id = (body.metadata or {}).get("store_id") or principal.store_id or res.settings.default_store()
        if store_id is None:
            raise ValidationFailed("if_not_exists='create' needs metadata.store_id (or a store key)",
                                   {"field": "metadata.store_id"}) from None
        store_id = checked(store_id, StoreId, "metadata.store_id")
        if not principal.may_see(store_id) or principal.shopper:
            raise Forbidden("This credential cannot open a thread in this store", {"store_id": store_id}) from None
        try:
            await res.sessions.create(store_id, None, {}, session_id=thread_id)
        except psycopg.errors.UniqueViolation:  # a thread with this id exists, but not for this caller
            raise SessionNotFound(detail={"session_id": str(thread_id)}) from None
    try:
        await res.auth.take_turn(principal)
    except RateLimited:
        metrics.record_refusal("rate_limited")
        raise
    before = None
    if "values" in modes and not background:  # the state as the run starts: the conversation so far
        before = _values(await _snapshot(res, thread_id))
    metadata = {k: v for k, v in (body.metadata or {}).items() if k != "store_id"}
    on_busy: OnBusy = "reject" if body.multitask_strategy == "rollback" else body.multitask_strategy  # refused above
    turn = await res.chat.start_turn(thread_id, text, metadata, on_busy=on_busy,
                                     on_disconnect=body.on_disconnect or (
                                         "continue" if background or body.stream_resumable else "cancel"))
    if before is not None:  # ... plus the new question
        before["messages"] = [*before.get("messages", []),
                              {"type": "human", "id": str(turn.user_message_id), "content": text}]
    return turn, modes, before


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


async def _run_row(res: Resources, principal: Principal, run_id: str,
                   thread_id: str | None = None) -> tuple[dict[str, Any], Session]:
    """A run this caller may see (of this thread, when given), with its thread; 404 run_not_found otherwise."""
    rid = parse_id(run_id, "run_id")
    row = await res.messages.run(rid)
    if row is None or (thread_id is not None and row["session_id"] != parse_id(thread_id, "thread_id")):
        raise RunNotFound(detail={"run_id": run_id})
    try:
        session = await _owned(res, principal, row["session_id"])
    except SessionNotFound:
        raise RunNotFound(detail={"run_id": run_id}) from None
    return row, session


async def _until_end(res: Resources, thread_id: UUID, run_id: UUID) -> dict[str, Any] | None:
    """Wait for a run to end, on whichever replica it runs: None when it answered, else its `error` event's data."""
    async with contextlib.aclosing(await res.chat.rejoin(thread_id, run_id, 0)) as events:
        async for _, event, data in events:
            if event == "error":
                return data
            if event == "done":
                return None
    return None


async def _outcome(res: Resources, thread_id: UUID, run_id: UUID) -> dict[str, Any]:
    """What runs.wait and runs.join answer once the run has ended: the thread's values, or LangGraph's
    `__error__` for a run that failed."""
    error = await _until_end(res, thread_id, run_id)
    if error is not None:
        return {"__error__": {"error": error.get("code", "internal_error"), "message": error.get("message", "")}}
    return _values(await _snapshot(res, thread_id))


def _ap_messages(values: dict[str, Any]) -> list[dict[str, Any]]:
    """The Agent Protocol's Message form of the conversation (role, content, id)."""
    roles = {"human": "user", "ai": "assistant"}
    return [{"role": roles.get(m.get("type"), m.get("type")), "content": m.get("content", ""), "id": m.get("id")}
            for m in values.get("messages", [])]


async def _wait_response(res: Resources, row: dict[str, Any]) -> dict[str, Any]:
    """The Agent Protocol's RunWaitResponse: the run as it ended, the thread's values and messages."""
    outcome = await _outcome(res, row["session_id"], row["message_id"])
    ended = await res.messages.run(row["message_id"])
    values = {} if "__error__" in outcome else outcome
    return {"run": run_json(ended or row), "values": values, "messages": _ap_messages(values)}


async def _values_before(res: Resources, thread_id: UUID, run_id: UUID) -> dict[str, Any]:
    """The state a joined run started from, as far as it can be told: the thread's values, with the run's question
    when no checkpoint has it yet (the run is still running)."""
    values = _values(await _snapshot(res, thread_id))
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


async def cancel_run(res: Resources, row: dict[str, Any], action: str) -> None:
    if action == "rollback":
        raise Unsupported("cancel action 'rollback' is not supported: a cancelled run is stored `cancelled` with its "
                          "partial answer", {"field": "action"})
    if action != "interrupt":
        raise ValidationFailed("action must be 'interrupt'", {"field": "action"})
    await res.chat.cancel(row["session_id"], row["message_id"])


class RunController(Controller):
    """Runs as LangGraph's SDK calls them (under /threads/{thread_id}/runs) and as the Agent Protocol names them
    (/runs): a run is a turn, its id the answer's message id."""
    path = "/"
    tags = ["agent-protocol"]
    dependencies = {"principal": Provide(provide_principal)}
    opt = access("agent")

    @post("/threads/{thread_id:str}/runs", status_code=200)
    async def create(self, thread_id: FromPath[str], request: Request[Any, Any, Any], state: State,
                     principal: Caller) -> Response[dict[str, Any]]:
        body: RunStream = decode_body(await request.body(), RunStream)
        return await _create(state.resources, principal, parse_id(thread_id, "thread_id"), body)

    @post("/runs", status_code=200)
    async def create_ap(self, request: Request[Any, Any, Any], state: State,
                        principal: Caller) -> Response[dict[str, Any]]:
        body: RunStream = decode_body(await request.body(), RunStream)
        return await _create(state.resources, principal, _thread_of(body), body)

    @get("/threads/{thread_id:str}/runs")
    async def list_runs(self, thread_id: FromPath[str], state: State, principal: Caller,
                        limit: Annotated[int, QueryParameter()] = 10, offset: Annotated[int, QueryParameter()] = 0,
                        status: Annotated[str | None, QueryParameter()] = None) -> list[dict[str, Any]]:
        return await _list(state.resources, principal, thread_id, limit, offset, status)

    @post("/runs/search", status_code=200)
    async def search(self, request: Request[Any, Any, Any], state: State, principal: Caller) -> list[dict[str, Any]]:
        body: RunSearch = decode_body(await request.body(), RunSearch)
        if body.thread_id is None:
            raise Unsupported("runs are searched within a thread: pass thread_id", {"field": "thread_id"})
        return await _list(state.resources, principal, str(body.thread_id), body.limit, body.offset, body.status)

    @get("/threads/{thread_id:str}/runs/{run_id:str}")
    async def get_run(self, thread_id: FromPath[str], run_id: FromPath[str], state: State,
                      principal: Caller) -> dict[str, Any]:
        row, _ = await _run_row(state.resources, principal, run_id, thread_id)
        return run_json(row)

    @get("/runs/{run_id:str}")
    async def get_run_ap(self, run_id: FromPath[str], state: State, principal: Caller) -> dict[str, Any]:
        row, _ = await _run_row(state.resources, principal, run_id)
        return run_json(row)

    @post("/threads/{thread_id:str}/runs/wait", status_code=200)
    async def create_and_wait(self, thread_id: FromPath[str], request: Request[Any, Any, Any], state: State,
                              principal: Caller) -> Response[dict[str, Any]]:
        res: Resources = state.resources
        body: RunStream = decode_body(await request.body(), RunStream)
        tid = parse_id(thread_id, "thread_id")
        turn, _, _ = await begin_run(res, principal, tid, body, background=True)
        paths = run_paths(tid, turn.message_id, set())
        return Response(await _outcome(res, tid, turn.message_id),
                        headers={"Content-Location": paths["Content-Location"],
                                 "Location": f"{paths['Content-Location']}/join"})

    @post("/runs/wait", status_code=200)
    async def create_and_wait_ap(self, request: Request[Any, Any, Any], state: State,
                                 principal: Caller) -> dict[str, Any]:
        res: Resources = state.resources
        body: RunStream = decode_body(await request.body(), RunStream)
        turn, _, _ = await begin_run(res, principal, _thread_of(body), body, background=True)
        row = await res.messages.run(turn.message_id)
        assert row is not None
        return await _wait_response(res, row)

    @get("/threads/{thread_id:str}/runs/{run_id:str}/join")
    async def join(self, thread_id: FromPath[str], run_id: FromPath[str], state: State,
                   principal: Caller) -> dict[str, Any]:
        row, session = await _run_row(state.resources, principal, run_id, thread_id)
        return await _outcome(state.resources, session.session_id, row["message_id"])

    @get("/runs/{run_id:str}/wait")
    async def wait_ap(self, run_id: FromPath[str], state: State, principal: Caller) -> dict[str, Any]:
        row, _ = await _run_row(state.resources, principal, run_id)
        return await _wait_response(state.resources, row)

    @get("/threads/{thread_id:str}/runs/{run_id:str}/stream", media_type="text/event-stream")
    async def stream(self, thread_id: FromPath[str], run_id: FromPath[str], request: Request[Any, Any, Any],
                     state: State, principal: Caller) -> Stream:
        row, session = await _run_row(state.resources, principal, run_id, thread_id)
        return await join_stream(state.resources, request, row, session)

    @get("/runs/{run_id:str}/stream", media_type="text/event-stream")
    async def stream_ap(self, run_id: FromPath[str], request: Request[Any, Any, Any], state: State,
                        principal: Caller) -> Stream:
        row, session = await _run_row(state.resources, principal, run_id)
        return await join_stream(state.resources, request, row, session)

    @post("/threads/{thread_id:str}/runs/{run_id:str}/cancel", status_code=202)
    async def cancel(self, thread_id: FromPath[str], run_id: FromPath[str], state: State, principal: Caller,
                     wait: Annotated[str, QueryParameter()] = "0",
                     action: Annotated[str, QueryParameter()] = "interrupt") -> Response[dict[str, Any] | None]:
        res: Resources = state.resources
        row, session = await _run_row(res, principal, run_id, thread_id)
        await cancel_run(res, row, action)
        if wait.lower() not in ("1", "true"):
            return Response(None, status_code=202)
        await _until_end(res, session.session_id, row["message_id"])
        ended = await res.messages.run(row["message_id"])
        return Response(run_json(ended or row), status_code=200)

    @post("/runs/{run_id:str}/cancel", status_code=204)
    async def cancel_ap(self, run_id: FromPath[str], state: State, principal: Caller,
                        wait: Annotated[bool, QueryParameter()] = False,
                        action: Annotated[str, QueryParameter()] = "interrupt") -> None:
        res: Resources = state.resources
        row, session = await _run_row(res, principal, run_id)
        await cancel_run(res, row, action)
        if wait:
            await _until_end(res, session.session_id, row["message_id"])


def _thread_of(body: RunStream) -> UUID:
    if body.thread_id is None:
        raise Unsupported("stateless runs are not supported: pass thread_id (a session)", {"field": "thread_id"})
    return body.thread_id


async def _create(res: Resources, principal: Principal, thread_id: UUID, body: RunStream) -> Response[dict[str, Any]]:
    """A background run (runs.create): started, answered at once with the run (pending when queued)."""
    turn, _, _ = await begin_run(res, principal, thread_id, body, background=True)
    row = await res.messages.run(turn.message_id)
    assert row is not None
    paths = run_paths(thread_id, turn.message_id, set(STREAM_MODES))
    return Response(run_json(row), headers={"Content-Location": paths["Content-Location"]})


async def _list(res: Resources, principal: Principal, thread_id: str, limit: int, offset: int,
                status: str | None) -> list[dict[str, Any]]:
    session = await _owned(res, principal, thread_id)
    if not 1 <= limit <= 1000 or not 0 <= offset <= 100_000:
        raise ValidationFailed("limit must be 1..1000 and offset 0..100000", {"field": "limit"})
    if status is not None and status not in STATUS_FILTER:
        raise ValidationFailed(f"status must be one of {sorted(STATUS_FILTER)}", {"field": "status"})
    stored, timed_out = STATUS_FILTER[status] if status else (None, None)
    rows = await res.messages.runs(session.session_id, limit=limit, offset=offset, status=stored,
                                   timed_out=timed_out)
    return [run_json(r) for r in rows]
