"""Runs: a run IS a turn, its id the answer's message id. What a run's request may ask (and what is refused by
name), starting one, and the run routes that are not a stream: create, list, search, get, wait, join, cancel."""

from __future__ import annotations

import contextlib
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
import psycopg
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.di import Provide
from litestar.params import FromPath, QueryParameter

from server import metrics
from server.errors import (
    Forbidden,
    RateLimited,
    RunNotFound,
    SessionNotFound,
    ThreadInterrupted,
    Unsupported,
    ValidationFailed,
)
from server.http.access import access
from server.http.agent_protocol.assistants import ASSISTANT_ID, known_assistant
from server.http.agent_protocol.common import iso, latest_state, owned, provide_principal, values_of
from server.http.agent_protocol.run_stream import STREAM_MODES, run_paths, stream_modes
from server.http.deps import Caller, checked, parse_id
from server.resources import Resources
from server.schemas import Session, StoreId, decode_body
from server.services.auth import Principal
from server.services.turns.admission import OnBusy
from server.services.turns.events import Turn


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
    latest = (await latest_state(res, thread_id)).config.get("configurable", {}).get("checkpoint_id")
    if named != latest:
        raise Unsupported("'checkpoint' names an earlier state of the thread: runs continue from its latest state "
                          "(older checkpoints are not kept)", {"field": "checkpoint", "latest": latest})

RUN_STATUS = {"queued": "pending", "streaming": "running", "complete": "success", "cancelled": "interrupted"}

# a run status asked for → (message status, whether it timed out)
STATUS_FILTER: dict[str, tuple[str, bool | None]] = {
    "pending": ("queued", None), "running": ("streaming", None), "success": ("complete", None),
    "interrupted": ("cancelled", None), "error": ("error", False), "timeout": ("error", True)}

def run_json(row: dict[str, Any]) -> dict[str, Any]:
    """A turn as a run (LangGraph's Run; the Agent Protocol's has no `running`, which the SDK relies on)."""
    status = RUN_STATUS.get(row["status"]) or ("timeout" if row["error_code"] == "timeout" else "error")
    return {"run_id": str(row["message_id"]), "thread_id": str(row["session_id"]), "assistant_id": ASSISTANT_ID,
            "created_at": iso(row["created_at"]), "updated_at": iso(row["updated_at"]), "status": status,
            "metadata": row["metadata"] or {}, "kwargs": {}}

async def begin_run(res: Resources, principal: Principal, thread_id: UUID, body: RunStream, *,
                    background: bool = False) -> tuple[Turn, set[str], dict[str, Any] | None]:
    """Everything that can be refused is refused before the run starts: (turn, stream modes, the state as the run
    starts when `values` is streamed). A background run does not belong to any connection."""
    known_assistant(body.assistant_id or body.agent_id)
    refuse_unsupported(body)
    modes = stream_modes(body.stream_mode)
    text = user_text(body)
    try:
        session = await owned(res, principal, thread_id)
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
        before = values_of(await latest_state(res, thread_id))
    metadata = {k: v for k, v in (body.metadata or {}).items() if k != "store_id"}
    on_busy: OnBusy = "reject" if body.multitask_strategy == "rollback" else body.multitask_strategy  # refused above
    turn = await res.chat.start_turn(thread_id, text, metadata, on_busy=on_busy,
                                     on_disconnect=body.on_disconnect or (
                                         "continue" if background or body.stream_resumable else "cancel"))
    if before is not None:  # ... plus the new question
        before["messages"] = [*before.get("messages", []),
                              {"type": "human", "id": str(turn.user_message_id), "content": text}]
    return turn, modes, before

async def run_row(res: Resources, principal: Principal, run_id: str,
                   thread_id: str | None = None) -> tuple[dict[str, Any], Session]:
    """A run this caller may see (of this thread, when given), with its thread; 404 run_not_found otherwise."""
    rid = parse_id(run_id, "run_id")
    row = await res.messages.run(rid)
    if row is None or (thread_id is not None and row["session_id"] != parse_id(thread_id, "thread_id")):
        raise RunNotFound(detail={"run_id": run_id})
    try:
        session = await owned(res, principal, row["session_id"])
    except SessionNotFound:
        raise RunNotFound(detail={"run_id": run_id}) from None
    return row, session

async def until_end(res: Resources, thread_id: UUID, run_id: UUID) -> dict[str, Any] | None:
    """Wait for a run to end, on whichever replica it runs: None when it answered, else its `error` event's data."""
    async with contextlib.aclosing(await res.chat.rejoin(thread_id, run_id, 0)) as events:
        async for _, event, data in events:
            if event == "error":
                return data
            if event == "done":
                return None
    return None

async def run_outcome(res: Resources, thread_id: UUID, run_id: UUID) -> dict[str, Any]:
    """What runs.wait and runs.join answer once the run has ended: the thread's values, or LangGraph's
    `__error__` for a run that failed."""
    error = await until_end(res, thread_id, run_id)
    if error is not None:
        return {"__error__": {"error": error.get("code", "internal_error"), "message": error.get("message", "")}}
    return values_of(await latest_state(res, thread_id))

def _ap_messages(values: dict[str, Any]) -> list[dict[str, Any]]:
    """The Agent Protocol's Message form of the conversation (role, content, id)."""
    roles = {"human": "user", "ai": "assistant"}
    return [{"role": roles.get(m.get("type"), m.get("type")), "content": m.get("content", ""), "id": m.get("id")}
            for m in values.get("messages", [])]

async def _wait_response(res: Resources, row: dict[str, Any]) -> dict[str, Any]:
    """The Agent Protocol's RunWaitResponse: the run as it ended, the thread's values and messages."""
    outcome = await run_outcome(res, row["session_id"], row["message_id"])
    ended = await res.messages.run(row["message_id"])
    values = {} if "__error__" in outcome else outcome
    return {"run": run_json(ended or row), "values": values, "messages": _ap_messages(values)}

async def cancel_run(res: Resources, row: dict[str, Any], action: str) -> None:
    if action == "rollback":
        raise Unsupported("cancel action 'rollback' is not supported: a cancelled run is stored `cancelled` with its "
                          "partial answer", {"field": "action"})
    if action != "interrupt":
        raise ValidationFailed("action must be 'interrupt'", {"field": "action"})
    await res.chat.cancel(row["session_id"], row["message_id"])

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
    session = await owned(res, principal, thread_id)
    if not 1 <= limit <= 1000 or not 0 <= offset <= 100_000:
        raise ValidationFailed("limit must be 1..1000 and offset 0..100000", {"field": "limit"})
    if status is not None and status not in STATUS_FILTER:
        raise ValidationFailed(f"status must be one of {sorted(STATUS_FILTER)}", {"field": "status"})
    stored, timed_out = STATUS_FILTER[status] if status else (None, None)
    rows = await res.messages.runs(session.session_id, limit=limit, offset=offset, status=stored,
                                   timed_out=timed_out)
    return [run_json(r) for r in rows]


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
        row, _ = await run_row(state.resources, principal, run_id, thread_id)
        return run_json(row)

    @get("/runs/{run_id:str}")
    async def get_run_ap(self, run_id: FromPath[str], state: State, principal: Caller) -> dict[str, Any]:
        row, _ = await run_row(state.resources, principal, run_id)
        return run_json(row)

    @post("/threads/{thread_id:str}/runs/wait", status_code=200)
    async def create_and_wait(self, thread_id: FromPath[str], request: Request[Any, Any, Any], state: State,
                              principal: Caller) -> Response[dict[str, Any]]:
        res: Resources = state.resources
        body: RunStream = decode_body(await request.body(), RunStream)
        tid = parse_id(thread_id, "thread_id")
        turn, _, _ = await begin_run(res, principal, tid, body, background=True)
        paths = run_paths(tid, turn.message_id, set())
        return Response(await run_outcome(res, tid, turn.message_id),
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
        row, session = await run_row(state.resources, principal, run_id, thread_id)
        return await run_outcome(state.resources, session.session_id, row["message_id"])

    @get("/runs/{run_id:str}/wait")
    async def wait_ap(self, run_id: FromPath[str], state: State, principal: Caller) -> dict[str, Any]:
        row, _ = await run_row(state.resources, principal, run_id)
        return await _wait_response(state.resources, row)

    @post("/threads/{thread_id:str}/runs/{run_id:str}/cancel", status_code=202)
    async def cancel(self, thread_id: FromPath[str], run_id: FromPath[str], state: State, principal: Caller,
                     wait: Annotated[str, QueryParameter()] = "0",
                     action: Annotated[str, QueryParameter()] = "interrupt") -> Response[dict[str, Any] | None]:
        res: Resources = state.resources
        row, session = await run_row(res, principal, run_id, thread_id)
        await cancel_run(res, row, action)
        if wait.lower() not in ("1", "true"):
            return Response(None, status_code=202)
        await until_end(res, session.session_id, row["message_id"])
        ended = await res.messages.run(row["message_id"])
        return Response(run_json(ended or row), status_code=200)

    @post("/runs/{run_id:str}/cancel", status_code=204)
    async def cancel_ap(self, run_id: FromPath[str], state: State, principal: Caller,
                        wait: Annotated[bool, QueryParameter()] = False,
                        action: Annotated[str, QueryParameter()] = "interrupt") -> None:
        res: Resources = state.resources
        row, session = await run_row(res, principal, run_id)
        await cancel_run(res, row, action)
        if wait:
            await until_end(res, session.session_id, row["message_id"])
