"""The Agent Protocol front door, spoken to by LangGraph's own SDK (`langgraph_sdk.get_client`), and the
shapes of the supported paths checked against the Agent Protocol's OpenAPI document."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import jsonschema
import pytest
from langgraph_sdk import get_client
from langgraph_sdk.errors import ConflictError, NotFoundError, UnprocessableEntityError

from tests.conftest import fetch_all
from tests.fake_openai import FakeOpenAIServer
from tests.server_process import ServerProcess
from tests.test_auth import _new_key

REFERENCE = Path(__file__).parent / "reference" / "agent-protocol-openapi.json"  # see reference/README.md
SPEC = json.loads(REFERENCE.read_text())
pytestmark = pytest.mark.e2e


def conforms(instance: Any, schema_ref: str) -> None:
    """Validate against a component of the Agent Protocol document (its $refs resolved in place)."""
    schema = {"$ref": f"#/components/schemas/{schema_ref}", "components": SPEC["components"]}
    jsonschema.validate(instance, schema, format_checker=jsonschema.FormatChecker())


def response_schema(path: str, method: str, status: str = "200") -> dict[str, Any]:
    content = SPEC["paths"][path][method]["responses"][status]["content"]
    return {**next(iter(content.values()))["schema"], "components": SPEC["components"]}


def request_schema(path: str, method: str) -> dict[str, Any]:
    return {**SPEC["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"],
            "components": SPEC["components"]}


@pytest.fixture(scope="module")
def server(database_url: str, fake_openai: FakeOpenAIServer) -> Iterator[ServerProcess]:
    with ServerProcess({"DATABASE_URL": database_url, "OPENAI_API_KEY": "sk-local-test",
                        "OPENAI_BASE_URL": fake_openai.base_url, "OPENAI_MAX_RETRIES": "0",
                        "KEYS_CACHE_SECONDS": "0", "CAPACITY_SAMPLE_SECONDS": "0"}) as proc:
        yield proc


async def test_sdk_threads_state_and_a_streamed_run_stored_like_any_turn(
    server: ServerProcess, database_url: str, fake_openai: FakeOpenAIServer
) -> None:
    client = get_client(url=server.base_url, api_key=None)
    thread = await client.threads.create(metadata={"store_id": "store-ap", "user_id": "shopper-1", "channel": "web"})
    conforms(thread, "Thread")
    tid = thread["thread_id"]
    assert thread["metadata"]["store_id"] == "store-ap" and thread["status"] == "idle"

    parts = []
    async for part in client.runs.stream(tid, "agent", input={"messages": [{"role": "user",
                                                                            "content": "How much is shipping?"}]},
                                         stream_mode=["messages-tuple", "values", "updates"],
                                         metadata={"source": "sdk-test"}):
        parts.append(part)
    events = [p.event for p in parts]
    assert events[0] == "metadata" and events.count("messages") > 3 and "error" not in events
    run_id = parts[0].data["run_id"]
    tokens = [p.data[0]["content"] for p in parts if p.event == "messages"]
    chunk, meta = next(p.data for p in parts if p.event == "messages")
    assert chunk["type"] == "AIMessageChunk" and chunk["id"] == run_id and meta["langgraph_node"] == "generate"
    last_chunk = [p.data[0] for p in parts if p.event == "messages"][-1]
    assert last_chunk["usage_metadata"]["output_tokens"] > 0  # the provider's usage, as the closing chunk
    first_values, last_values = [p.data for p in parts if p.event == "values"][:1][0], \
        [p.data for p in parts if p.event == "values"][-1]
    assert first_values["messages"][-1]["content"] == "How much is shipping?"
    assert [m["type"] for m in last_values["messages"]] == ["human", "ai"]
    assert last_values["messages"][-1]["content"] == "".join(tokens)
    updates = [p.data for p in parts if p.event == "updates"]
    assert "retrieve" in updates[0] and updates[0]["retrieve"]["passages"][0]["title"]
    assert "generate" in updates[-1]

    # stored like any other turn: both rows, the run id is the assistant message id, the model was called
    rows = fetch_all(database_url, "select role, content, status, output_tokens, metadata from chat_messages "
                                   "where session_id = %s order by created_at", (tid,))
    assert [(r["role"], r["status"]) for r in rows] == [("user", "complete"), ("assistant", "complete")]
    assert rows[1]["content"] == "".join(tokens) and rows[1]["output_tokens"] > 0
    assert rows[0]["metadata"] == {"source": "sdk-test"}
    assert fetch_all(database_url, "select message_id from chat_messages where message_id = %s", (run_id,))
    assert fake_openai.chat_requests[-1]["body"]["messages"][-1]["content"] == "How much is shipping?"

    # get / get_state / history / search see the same conversation
    got = await client.threads.get(tid)
    conforms(got, "Thread")
    assert [m["id"] for m in got["values"]["messages"]] == [m["id"] for m in last_values["messages"]]
    state = await client.threads.get_state(tid)
    conforms(state, "ThreadState")
    assert state["values"]["messages"][-1]["id"] == run_id and state["next"] == []
    history = await client.threads.get_history(tid)
    assert len(history) == 1 and history[0]["checkpoint"]["checkpoint_id"] == state["checkpoint"]["checkpoint_id"]
    found = await client.threads.search(metadata={"store_id": "store-ap", "channel": "web"})
    assert [t["thread_id"] for t in found] == [tid]
    jsonschema.validate(found, response_schema("/threads/search", "post"))
    assert await client.threads.search(metadata={"store_id": "store-ap", "channel": "app"}) == []
    with_values = await client.threads.search(metadata={"user_id": "shopper-1"}, select=["thread_id", "values"])
    assert with_values[0]["values"]["messages"][-1]["id"] == run_id

    # a second turn continues the conversation (the model sees the history)
    async for _ in client.runs.stream(tid, "agent", input={"messages": [["user", "And returns?"]]},
                                      stream_mode="messages-tuple"):
        pass
    assert [m["role"] for m in fake_openai.chat_requests[-1]["body"]["messages"]][-3:] == ["user", "assistant", "user"]
    assert len((await client.threads.get_state(tid))["values"]["messages"]) == 4


async def test_refusals_are_clear_and_lose_nothing(server: ServerProcess, database_url: str) -> None:
    client = get_client(url=server.base_url, api_key=None)
    with pytest.raises(UnprocessableEntityError, match="not supported"):  # 422 before a stream starts
        async for _ in client.runs.stream(str(uuid4()), "agent", input={"messages": []}, stream_mode="debug"):
            pass
    with pytest.raises(NotFoundError):
        await client.threads.get(str(uuid4()))
    with pytest.raises(NotFoundError):
        async for _ in client.runs.stream(str(uuid4()), "agent", input={"messages": [["user", "hi"]]}):
            pass
    tid = str(uuid4())
    created = await client.threads.create(thread_id=tid, metadata={"store_id": "store-ap"})
    assert created["thread_id"] == tid
    with pytest.raises(ConflictError):
        await client.threads.create(thread_id=tid, metadata={"store_id": "store-ap"})
    same = await client.threads.create(thread_id=tid, metadata={"store_id": "store-ap"}, if_exists="do_nothing")
    assert same["thread_id"] == tid
    assert (await client.assistants.get("agent"))["graph_id"] == "agent"
    assert [a["assistant_id"] for a in await client.assistants.search(graph_id="agent")] == ["agent"]
    with pytest.raises(NotFoundError):
        await client.assistants.get("someone-else")
    doomed = await client.threads.create(metadata={"store_id": "store-ap"})
    await client.threads.delete(doomed["thread_id"])  # a soft delete, like DELETE /sessions/{id}
    with pytest.raises(NotFoundError):
        await client.threads.get(doomed["thread_id"])
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
        cases = [
            ("/threads", {"metadata": {"store_id": "bad store!"}}, 400, "validation_error"),
            (f"/threads/{tid}/runs/stream", {"assistant_id": "other", "input": {"messages": [["user", "x"]]}},
             404, "assistant_not_found"),
            (f"/threads/{tid}/runs/stream", {"input": {"messages": [{"role": "assistant", "content": "x"}]}},
             400, "validation_error"),
            (f"/threads/{tid}/runs/stream", {"input": {"messages": [["user", "x"]]}, "command": {"resume": 1}},
             422, "unsupported"),
            (f"/threads/{tid}/runs/stream", {"input": {"messages": [["user", "x"]]}, "stream_mode": "messages"},
             422, "unsupported"),
            ("/runs/stream", {"input": {"messages": [["user", "x"]]}}, 422, "unsupported"),  # stateless
            ("/threads/search", {"limit": 0}, 400, "validation_error"),
            ("/threads/search", {"metadata": {"store_id": 5}}, 400, "validation_error"),
            ("/threads/search", {"metadata": {"user_id": ["x"]}}, 400, "validation_error"),
            ("/threads", {"metadata": {"store_id": "store-ap", "user_id": 7}}, 400, "validation_error"),
        ]
        # a thread that names no store, from a caller without a store key, is DEFAULT_STORE_ID's (demo-store outside
        # production; in production, unset, it is 400: tests/test_units.py)
        unnamed = (await http.post("/threads", json={"metadata": {}})).json()
        assert unnamed["metadata"]["store_id"] == "demo-store"
        for path, body, status, code in cases:
            r = await http.post(path, json=body)
            assert (r.status_code, r.json()["code"]) == (status, code), (path, body, r.text)
            jsonschema.validate(r.json(), {"$ref": "#/components/schemas/ErrorResponse",
                                           "components": SPEC["components"]})
        info = (await http.get("/info")).json()
        assert info["flags"]["assistants"] is True and info["flags"]["langsmith"] is False
        # the Agent Protocol's own form of a run: POST /runs/stream with thread_id in the body
        body = {"thread_id": tid, "input": {"messages": [{"role": "user", "content": "Opening hours?"}]},
                "stream_mode": ["values"]}
        jsonschema.validate(body, {"$ref": "#/components/schemas/RunCreate", "components": SPEC["components"]})
        r = await http.post("/runs/stream", json=body)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert "event: values" in r.text and "event: error" not in r.text
    rows = fetch_all(database_url, "select role from chat_messages where session_id = %s", (tid,))
    assert sorted(r["role"] for r in rows) == ["assistant", "user"]  # only the accepted run was stored


async def test_request_bodies_the_sdk_sends_conform_to_the_agent_protocol(server: ServerProcess) -> None:
    """What our clients send on the documented paths is valid per the document (the SDK's extra keys
    are allowed: the schemas are open)."""
    seen: list[tuple[str, str, Any]] = []

    async def record(request: httpx.Request) -> None:
        body = json.loads(request.content) if request.content else None
        seen.append((request.method, request.url.path, body))

    client = get_client(url=server.base_url, api_key=None)
    client.http.client.event_hooks["request"].append(record)
    thread = await client.threads.create(metadata={"store_id": "store-ap"}, if_exists="raise")
    await client.threads.search(metadata={"store_id": "store-ap"}, limit=5, offset=0)
    await client.threads.get(thread["thread_id"])
    checked = {("POST", "/threads"): request_schema("/threads", "post"),
               ("POST", "/threads/search"): request_schema("/threads/search", "post")}
    for method, path, body in seen:
        if (method, path) in checked:
            jsonschema.validate(body, checked[(method, path)], format_checker=jsonschema.FormatChecker())
    assert {(m, p) for m, p, _ in seen} >= set(checked)


async def test_keys_and_store_isolation_through_the_sdk(server: ServerProcess, database_url: str) -> None:
    key_a = _new_key(database_url, "--store", "store-ap")
    key_b = _new_key(database_url, "--store", "store-other")
    a, b = get_client(url=server.base_url, api_key=key_a), get_client(url=server.base_url, api_key=key_b)
    thread = await a.threads.create(metadata={})  # a store key's threads belong to its store
    assert thread["metadata"]["store_id"] == "store-ap"
    with pytest.raises(NotFoundError):
        await b.threads.get(thread["thread_id"])
    with pytest.raises(NotFoundError):
        async for _ in b.runs.stream(thread["thread_id"], "agent", input={"messages": [["user", "hi"]]}):
            pass
    assert thread["thread_id"] not in [t["thread_id"] for t in await b.threads.search()]
    assert thread["thread_id"] in [t["thread_id"] for t in await a.threads.search(limit=100)]
    anonymous = get_client(url=server.base_url, api_key=None)
    with pytest.raises(httpx.HTTPStatusError) as err:
        await anonymous.threads.search()
    assert err.value.response.status_code == 401
