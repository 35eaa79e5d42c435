"""Reading a Server-Sent Events response in the tests: (id, event, data) as they arrive."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx


async def read_sse(response: httpx.Response) -> AsyncIterator[tuple[int, str, dict[str, Any]]]:
    name, n = "", 0
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("id: "):
            n = int(line[4:])
        elif line.startswith("data: "):
            yield n, name, json.loads(line[6:])


async def stream_and_cancel(streaming: httpx.AsyncClient, cancelling: httpx.AsyncClient, session_id: str, text: str,
                            after_tokens: int = 2) -> tuple[list[tuple[str, dict[str, Any]]], httpx.Response]:
    """Stream a turn through `streaming` and, once `after_tokens` tokens have come, cancel it through `cancelling`
    (the same client, or one on another replica): (every event of the stream, the cancel's response)."""
    api = "/api/session-chat"
    events: list[tuple[str, dict[str, Any]]] = []
    cancelled: httpx.Response | None = None
    async with streaming.stream("POST", f"{api}/sessions/{session_id}/chat/stream", json={"message": text}) as r:
        async for _, event, data in read_sse(r):
            events.append((event, data))
            if event == "token" and [e for e, _ in events].count("token") == after_tokens:
                mid = events[0][1]["message_id"]
                cancelled = await cancelling.post(f"{api}/sessions/{session_id}/messages/{mid}/cancel")
    assert cancelled is not None, events
    return events, cancelled
