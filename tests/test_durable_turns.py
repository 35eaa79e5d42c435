"""Turns that do not belong to their connection (API.md, "Durable turns"): cancelled on request from any
replica — the request reaches the replica running the turn through PostgreSQL NOTIFY."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse

from tests.conftest import fetch_all
from tests.fake_openai import FakeOpenAIServer, Pace
from tests.server_process import ServerProcess

pytestmark = pytest.mark.e2e
API = "/api/session-chat"


@pytest.fixture(scope="module")
def slow_model() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(Pace(0.2, 0.1, 60)) as srv:  # an answer streams for about 6 s
        yield srv


@pytest.fixture(scope="module")
def replicas(database_url: str, slow_model: FakeOpenAIServer) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    env = {"DATABASE_URL": database_url, "OPENAI_API_KEY": "sk-local-test", "OPENAI_BASE_URL": slow_model.base_url,
           "OPENAI_MAX_RETRIES": "0", "CAPACITY_SAMPLE_SECONDS": "0"}
    with ServerProcess(env) as a, ServerProcess(env) as b:
        yield a, b


def _rows(url: str, session_id: str) -> list[dict[str, Any]]:
    return fetch_all(url, "select role, status, content from chat_messages where session_id = %s order by seq",
                     (session_id,))


async def test_a_turn_is_cancelled_from_another_replica(replicas: tuple[ServerProcess, ServerProcess],
                                                        database_url: str) -> None:
    a, b = replicas
    async with httpx.AsyncClient(base_url=a.base_url, timeout=30) as on_a, \
            httpx.AsyncClient(base_url=b.base_url, timeout=30) as on_b:
        sid = (await on_a.post(f"{API}/sessions", json={"store_id": "durable"})).json()["session_id"]
        events: list[tuple[str, dict[str, Any]]] = []
        async with aconnect_sse(on_a, "POST", f"{API}/sessions/{sid}/chat/stream",
                                json={"message": "a long answer please"}) as source:
            async for sse in source.aiter_sse():
                events.append((sse.event, json.loads(sse.data)))
                if sse.event == "token" and [e for e, _ in events].count("token") == 2:
                    mid = events[0][1]["message_id"]
                    r = await on_b.post(f"{API}/sessions/{sid}/messages/{mid}/cancel")  # not where it runs
                    assert r.status_code == 202, r.text
        assert events[-1][0] == "error" and events[-1][1]["code"] == "cancelled"
        assert [e for e, _ in events].count("token") < 10  # stopped within moments, not after 60 tokens
        for _ in range(50):
            if _rows(database_url, sid)[-1]["status"] != "streaming":
                break
            await asyncio.sleep(0.1)
        rows = _rows(database_url, sid)
        assert [(r["role"], r["status"]) for r in rows] == [("user", "complete"), ("assistant", "cancelled")]
        assert rows[1]["content"].startswith("tok0 tok1")
        assert (await on_b.post(f"{API}/sessions/{sid}/messages/{mid}/cancel")).json()["code"] == "turn_ended"
