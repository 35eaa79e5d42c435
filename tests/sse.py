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
