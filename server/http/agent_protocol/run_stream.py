"""The one place a run's stream is made: which stream modes exist, and our turn's events in the frames LangGraph's
server streams (metadata, messages, updates, values, custom, error), for a run streamed as it starts and for one
joined later (both in streams.py)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from graph.retrieval import sources_event
from server.errors import (
    Unsupported,
)
from server.http.agent_protocol.assistants import ASSISTANT_ID
from server.http.agent_protocol.common import latest_state, values_of
from server.resources import Resources
from server.schemas import sse_frame
from server.services.turns.events import Batches, Numbered

# what useStream and Agent Chat UI send: values, updates, messages-tuple, and custom (always, as Agent Chat UI gives
# onCustomEvent); tasks, checkpoints, debug and events come only with callbacks Agent Chat UI does not give, and are
# refused by name
STREAM_MODES = frozenset({"messages-tuple", "values", "updates", "custom"})

def stream_modes(value: str | list[str]) -> set[str]:
    modes = {value} if isinstance(value, str) else set(value)
    if "messages" in modes:  # the SDK's "messages" is LangGraph's partial-message mode
        raise Unsupported("stream_mode 'messages' is not supported; use 'messages-tuple'",
                          {"supported": sorted(STREAM_MODES)})
    unknown = modes - STREAM_MODES
    if unknown or not modes:
        raise Unsupported(f"stream_mode {sorted(unknown)} is not supported", {"supported": sorted(STREAM_MODES)})
    return modes

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
            frames.append(("values", values_of(await latest_state(res, thread_id))))
    elif event == "handoff" and "updates" in modes:  # the run ends at the graph's interrupt: a person replies
        frames.append(("updates", {"__interrupt__": [{"value": {"waiting_for": "operator", **data},
                                                      "id": run_id}]}))
    elif event == "error":
        frames.append(("error", {"error": data.get("code", "internal_error"), "message": data.get("message", ""),
                                 "run_id": run_id}))
    for i, (name, payload) in enumerate(frames, start=1):
        out.append(sse_frame(n if resumable and i == len(frames) else None, name, payload))
    return restarted
