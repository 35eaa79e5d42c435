"""Real LangGraph clients (issue 18): the JS SDK, `@langchain/langgraph-sdk` pinned in tests/js/package.json, calls
everything Agent Chat UI and useStream call — threads.create/search/getHistory/getState, assistants.search,
runs.stream with values, updates, messages-tuple and custom, resumable, joinStream after a "reload" — with a store
key; and a page on another origin gets CORS answers."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import ROOT, fetch_all
from tests.node import installed, prepared
from tests.server_process import ServerProcess
from tests.test_auth import _new_key

pytestmark = pytest.mark.e2e


PREPARED_DATABASE = True  # conftest.database_url: a copy of a database a keyless `serve` has prepared


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[ServerProcess]:
    # the offline answerer, slowed so that the client leaves mid-answer and joins it again
    with ServerProcess({"DATABASE_URL": database_url, "OFFLINE_CHUNK_DELAY_MS": "30", "KEYS_CACHE_SECONDS": "0",
                        "CAPACITY_SAMPLE_SECONDS": "0"}) as proc:
        yield proc


def test_the_js_sdk_does_what_agent_chat_ui_does(server: ServerProcess, database_url: str) -> None:
    project = prepared("the LangGraph JS SDK", installed, ROOT / "tests" / "js")
    key = _new_key(database_url, "--store", "store-js")
    done = subprocess.run(["node", "agent_protocol.mjs", server.base_url, key], cwd=project, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"metadata", "values", "updates", "messages", "custom"} <= set(seen["events"])
    assert seen["first_part"] and seen["answer"].startswith(seen["first_part"])
    rows = fetch_all(database_url, "select store_id, role, status from chat_messages where session_id = %s "
                                   "order by seq", (seen["thread_id"],))
    assert [(r["store_id"], r["role"], r["status"]) for r in rows] == [
        ("store-js", "user", "complete"), ("store-js", "assistant", "complete")] * 2


async def test_cors_lets_a_page_on_another_origin_call_the_api(server: ServerProcess) -> None:
    origin = "http://localhost:5173"  # Agent Chat UI's dev server; in development any localhost port may call
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as c:
        pre = await c.options("/threads/search", headers={
            "Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-api-key,last-event-id"})
        assert pre.status_code in (200, 204), pre.text
        assert pre.headers["access-control-allow-origin"] == origin
        allowed = pre.headers["access-control-allow-headers"].lower()
        assert all(h in allowed for h in ("content-type", "x-api-key", "last-event-id", "authorization"))
        assert "access-control-allow-credentials" not in pre.headers
        r = await c.post("/threads", json={}, headers={"Origin": origin})
        assert r.headers["access-control-allow-origin"] == origin
        assert "content-location" in r.headers["access-control-expose-headers"].lower()
        elsewhere = await c.post("/threads", json={}, headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in elsewhere.headers
