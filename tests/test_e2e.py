"""End to end: the server as a real process on the embedded PostgreSQL, spoken to over HTTP and SSE.

One server uses the real ChatOpenAI client against the local OpenAI-compatible server; a second one
has no key and answers offline from the bundled sample knowledge base.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any
from uuid import uuid4

import httpx
import pytest
from httpx_sse import aconnect_sse

from tests.conftest import create_database, execute, fetch_all
from tests.fake_openai import FakeOpenAIServer
from tests.server_process import ServerProcess
from tests.sse import stream_and_cancel

pytestmark = pytest.mark.e2e
API = "/api/session-chat"


@pytest.fixture(scope="module")
def server(database_url: str, fake_openai: FakeOpenAIServer) -> Iterator[ServerProcess]:
    with ServerProcess({
        "DATABASE_URL": database_url,
        "OPENAI_API_KEY": "sk-local-test",
        "OPENAI_BASE_URL": fake_openai.base_url,
        "OPENAI_MAX_RETRIES": "0",
        "MAX_MESSAGE_CHARS": "500",
        "MAX_BODY_BYTES": "8192",
    }) as proc:
        yield proc


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as c:
        yield c


async def new_session(client: httpx.AsyncClient, store_id: str = "store-e2e", **extra: Any) -> dict[str, Any]:
    r = await client.post(f"{API}/sessions", json={"store_id": store_id, **extra})
    assert r.status_code == 201, r.text
    return r.json()


async def stream_turn(client: httpx.AsyncClient, session_id: str, message: str) -> list[tuple[str, str, Any]]:
    events = []
    async with aconnect_sse(client, "POST", f"{API}/sessions/{session_id}/chat/stream",
                            json={"message": message}) as source:
        assert source.response.status_code == 200
        assert source.response.headers["content-type"].startswith("text/event-stream")
        async for sse in source.aiter_sse():
            events.append((sse.event, sse.id, json.loads(sse.data)))
    return events


async def messages_of(client: httpx.AsyncClient, session_id: str) -> list[dict[str, Any]]:
    r = await client.get(f"{API}/sessions/{session_id}/messages")
    assert r.status_code == 200
    return list(r.json()["items"])


def assert_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert body["code"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    assert "Traceback" not in r.text
    return dict(body)


async def test_session_lifecycle_over_http(client: httpx.AsyncClient) -> None:
    store = f"store-{uuid4().hex[:6]}"
    created = await new_session(client, store, user_id="shopper-7", metadata={"channel": "widget"})
    assert created["status"] == "active" and created["message_count"] == 0
    assert created["metadata"] == {"channel": "widget"} and created["user_id"] == "shopper-7"
    got = (await client.get(f"{API}/sessions/{created['session_id']}")).json()
    assert got["session_id"] == created["session_id"] and got["expires_at"] > got["last_activity_at"]

    others = [await new_session(client, store) for _ in range(2)]
    page1 = (await client.get(f"{API}/sessions", params={"store_id": store, "limit": 2})).json()
    assert [s["session_id"] for s in page1["items"]] == [s["session_id"] for s in reversed(others)]
    page2 = (await client.get(f"{API}/sessions", params={"store_id": store, "limit": 2,
                                                            "cursor": page1["next_cursor"]})).json()
    assert [s["session_id"] for s in page2["items"]] == [created["session_id"]] and page2["next_cursor"] is None
    by_user = (await client.get(f"{API}/sessions", params={"store_id": store, "user_id": "shopper-7"})).json()
    assert [s["session_id"] for s in by_user["items"]] == [created["session_id"]]

    r = await client.delete(f"{API}/sessions/{created['session_id']}")
    assert r.status_code == 204
    assert_error(await client.get(f"{API}/sessions/{created['session_id']}"), 404, "session_not_found")
    assert_error(await client.delete(f"{API}/sessions/{created['session_id']}"), 404, "session_not_found")
    assert_error(await client.post(f"{API}/sessions/{created['session_id']}/chat/stream", json={"message": "hi"}),
                 404, "session_not_found")


async def test_streamed_turn_event_order_and_stored_content(client: httpx.AsyncClient, database_url: str) -> None:
    session = await new_session(client)
    events = await stream_turn(client, session["session_id"], "How much is shipping to Jeju?")
    kinds = [e for e, _, _ in events]
    assert kinds[0] == "metadata" and kinds[1] == "sources" and kinds[-1] == "done"
    assert set(kinds[2:-1]) == {"token"} and len(kinds) > 4
    assert [int(i) for _, i, _ in events] == list(range(1, len(events) + 1))
    meta = events[0][2]
    assert set(meta) >= {"session_id", "user_message_id", "message_id", "run_id", "model"}
    assert meta["run_id"] == meta["message_id"] and meta["session_id"] == session["session_id"]
    sources = events[1][2]["sources"]
    assert sources and set(sources[0]) == {"id", "title", "url", "score", "snippet"}
    assert any("Shipping" in s["title"] for s in sources)

    done = events[-1][2]["message"]
    tokens = "".join(d["delta"] for e, _, d in events if e == "token")
    assert done["content"] == tokens and done["status"] == "complete"
    assert done["message_id"] == meta["message_id"] and done["run_id"] == meta["message_id"]
    assert done["input_tokens"] > 0 and done["output_tokens"] > 0
    assert done["sources"] == sources

    stored = await messages_of(client, session["session_id"])
    assert [(m["role"], m["status"]) for m in stored] == [("user", "complete"), ("assistant", "complete")]
    assert stored[1]["content"] == tokens and stored[0]["message_id"] == meta["user_message_id"]
    s = (await client.get(f"{API}/sessions/{session['session_id']}")).json()
    assert (s["message_count"], s["input_tokens"], s["output_tokens"]) == (
        2, done["input_tokens"], done["output_tokens"])
    rows = fetch_all(database_url, "select count(*) as n from chat_messages where session_id = %s",
                     (session["session_id"],))
    assert rows[0]["n"] == 2


async def test_non_streaming_chat(client: httpx.AsyncClient) -> None:
    session = await new_session(client)
    r = await client.post(f"{API}/sessions/{session['session_id']}/chat", json={"message": "Can I pay with KakaoPay?"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user_message"]["content"] == "Can I pay with KakaoPay?"
    assert body["message"]["role"] == "assistant" and body["message"]["status"] == "complete"
    assert body["message"]["content"].startswith("I saw 1 user messages")


async def test_second_turn_while_one_runs_is_409_with_on_busy_reject(client: httpx.AsyncClient) -> None:
    session = await new_session(client)
    sid = session["session_id"]
    async with aconnect_sse(client, "POST", f"{API}/sessions/{sid}/chat/stream",
                            json={"message": "[[slow]] long answer"}) as source:
        kinds = []
        async for sse in source.aiter_sse():
            kinds.append(sse.event)
            if sse.event == "token" and kinds.count("token") == 1:
                busy = await client.post(f"{API}/sessions/{sid}/chat/stream",
                                         json={"message": "me too", "on_busy": "reject"})
                assert_error(busy, 409, "session_busy")
                busy = await client.post(f"{API}/sessions/{sid}/chat", json={"message": "me too", "on_busy": "reject"})
                assert_error(busy, 409, "session_busy")
        assert kinds[-1] == "done"
    # the refused turns wrote nothing; the next one runs
    assert len(await messages_of(client, sid)) == 2
    assert (await stream_turn(client, sid, "now?"))[-1][0] == "done"


async def _leave_after_tokens(client: httpx.AsyncClient, sid: str, text: str, n: int) -> str:
    """Stream a turn, leave after `n` tokens (closing the connection); the answer's message id."""
    async with aconnect_sse(client, "POST", f"{API}/sessions/{sid}/chat/stream", json={"message": text}) as source:
        tokens, message_id = 0, ""
        async for sse in source.aiter_sse():
            if sse.event == "metadata":
                message_id = json.loads(sse.data)["message_id"]
            tokens += sse.event == "token"
            if tokens == n:
                break  # leaving the block closes the connection
    return message_id


async def _settled(client: httpx.AsyncClient, sid: str) -> list[dict[str, Any]]:
    for _ in range(150):
        stored = await messages_of(client, sid)
        if stored[-1]["status"] != "streaming":
            return stored
        await asyncio.sleep(0.1)
    raise AssertionError("the turn never ended")


async def test_client_disconnect_mid_stream_lets_the_turn_finish(
    client: httpx.AsyncClient, fake_openai: FakeOpenAIServer
) -> None:
    """TURN_ON_DISCONNECT=continue (the default): the answer is completed and stored after its client left."""
    session = await new_session(client)
    sid = session["session_id"]
    await _leave_after_tokens(client, sid, "[[slow]] then I leave", 3)
    stored = await _settled(client, sid)
    assert [(m["role"], m["status"]) for m in stored] == [("user", "complete"), ("assistant", "complete")]
    assert stored[-1]["content"].split() == [f"tok{i}" for i in range(60)]  # the whole answer
    assert (await client.get(f"{API}/sessions/{sid}")).json()["turn_running"] is False
    assert (await stream_turn(client, sid, "back again"))[-1][0] == "done"


async def test_a_running_turn_is_cancelled_on_request(client: httpx.AsyncClient) -> None:
    session = await new_session(client)
    sid = session["session_id"]
    events, r = await stream_and_cancel(client, client, sid, "[[slow]] stop me")
    mid = events[0][1]["message_id"]
    assert (r.status_code, r.json()) == (202, {"message_id": mid, "status": "cancelling"})
    assert events[-1][0] == "error" and events[-1][1]["code"] == "cancelled"
    stored = await _settled(client, sid)
    assert [(m["role"], m["status"]) for m in stored] == [("user", "complete"), ("assistant", "cancelled")]
    assert stored[-1]["content"].startswith("tok0 tok1") and len(stored[-1]["content"].split()) < 60
    again = await client.post(f"{API}/sessions/{sid}/messages/{mid}/cancel")
    assert_error(again, 409, "turn_ended")
    user_mid = stored[0]["message_id"]  # not an answer
    assert_error(await client.post(f"{API}/sessions/{sid}/messages/{user_mid}/cancel"), 404, "message_not_found")
    assert_error(await client.post(f"{API}/sessions/{sid}/messages/{uuid4()}/cancel"), 404,
                 "message_not_found")
    assert_error(await client.post(f"{API}/sessions/{sid}/messages/nope/cancel"), 400, "validation_error")
    other = await new_session(client)  # an answer of another session is not found through this one
    assert_error(await client.post(f"{API}/sessions/{other['session_id']}/messages/{mid}/cancel"), 404,
                 "message_not_found")
    assert (await stream_turn(client, sid, "still here?"))[-1][0] == "done"


async def test_failing_model_leaves_error_and_a_usable_session(client: httpx.AsyncClient) -> None:
    session = await new_session(client)
    sid = session["session_id"]
    events = await stream_turn(client, sid, "[[fail]] break please")
    assert events[-1][0] == "error" and events[-1][2]["code"] == "model_error"
    assert "done" not in [e for e, _, _ in events]
    stored = await messages_of(client, sid)
    assert [(m["role"], m["status"]) for m in stored] == [("user", "complete"), ("assistant", "error")]
    r = await client.post(f"{API}/sessions/{sid}/chat", json={"message": "[[fail]] again"})
    assert_error(r, 502, "model_error")
    assert [m["status"] for m in await messages_of(client, sid)][-1] == "error"
    assert (await stream_turn(client, sid, "fine now?"))[-1][0] == "done"


async def test_feedback_and_stats(client: httpx.AsyncClient) -> None:
    store = f"store-{uuid4().hex[:6]}"
    session = await new_session(client, store)
    sid = session["session_id"]
    done = (await stream_turn(client, sid, "Return policy?"))[-1][2]["message"]
    r = await client.post(f"{API}/messages/{done['message_id']}/feedback", json={"score": 1, "comment": "great"})
    assert r.status_code == 201 and r.json() == {"message_id": done["message_id"], "score": 1.0, "comment": "great"}
    r = await client.post(f"{API}/messages/{done['message_id']}/feedback", json={"score": 0.25})
    assert r.status_code == 201 and r.json()["score"] == 0.25  # repeated feedback updates it
    stats = (await client.get(f"{API}/sessions/{sid}/stats")).json()
    assert stats["message_count"] == 2 and stats["feedback_count"] == 1 and stats["avg_feedback_score"] == 0.25
    assert stats["input_tokens"] == done["input_tokens"] and stats["error_rate"] == 0
    assert stats["cost_usd"] > 0  # gpt-4o-mini prices
    store_stats = (await client.get(f"{API}/stats", params={"store_id": store})).json()
    for key in ("message_count", "session_count", "input_tokens", "output_tokens", "cost_usd", "avg_latency_ms",
                "p50_latency_ms", "p95_latency_ms", "avg_first_token_ms", "error_rate", "feedback_count",
                "avg_feedback_score"):
        assert key in store_stats
    assert store_stats["session_count"] == 1 and store_stats["message_count"] == 2
    empty = (await client.get(f"{API}/stats", params={"store_id": store, "from": "2000-01-01T00:00:00Z",
                                                       "to": "2000-01-02T00:00:00Z"})).json()
    assert empty["message_count"] == 0


async def test_every_bad_input_gets_its_4xx(client: httpx.AsyncClient, database_url: str) -> None:
    session = await new_session(client)
    sid = session["session_id"]
    chat = f"{API}/sessions/{sid}/chat/stream"
    # malformed ids
    assert_error(await client.get(f"{API}/sessions/not-a-uuid"), 400, "validation_error")
    assert_error(await client.post(f"{API}/messages/123/feedback", json={"score": 1}), 400, "validation_error")
    # unknown ids
    assert_error(await client.get(f"{API}/sessions/{uuid4()}"), 404, "session_not_found")
    assert_error(await client.get(f"{API}/sessions/{uuid4()}/messages"), 404, "session_not_found")
    assert_error(await client.get(f"{API}/sessions/{uuid4()}/stats"), 404, "session_not_found")
    assert_error(await client.post(f"{API}/messages/{uuid4()}/feedback", json={"score": 1}), 404, "message_not_found")
    # bodies: empty, blank, wrong types, unknown fields, not JSON, missing
    for body in ({"message": ""}, {"message": "   \n"}, {"message": 42}, {"message": "hi", "extra": 1}, {},
                 {"message": "hi", "metadata": "x"}, [], {"message": None}):
        assert_error(await client.post(chat, json=body), 400, "validation_error")
    assert_error(await client.post(chat, content=b"{not json", headers={"content-type": "application/json"}),
                 400, "validation_error")
    for body in ({}, {"store_id": ""}, {"store_id": 5}, {"store_id": "ok", "nope": 1}, {"store_id": "a b"},
                 {"store_id": "ok", "metadata": []}):
        assert_error(await client.post(f"{API}/sessions", json=body), 400, "validation_error")
    for body in ({"score": 2}, {"score": -0.1}, {"score": "1"}, {"score": True}, {"score": 1, "x": 1}):
        assert_error(await client.post(f"{API}/messages/{uuid4()}/feedback", json=body), 400, "validation_error")
    # query strings
    for params in ({"limit": 0}, {"limit": 1000}, {"limit": "x"}, {"status": "zombie"}, {"cursor": "garbage!"}):
        assert_error(await client.get(f"{API}/sessions", params=params), 400, "validation_error")
    assert_error(await client.get(f"{API}/stats"), 400, "validation_error")
    assert_error(await client.get(f"{API}/stats", params={"store_id": "s", "from": "yesterday"}), 400,
                 "validation_error")
    assert_error(await client.get(f"{API}/stats", params={"store_id": "s", "from": "2026-02-01T00:00:00Z",
                                                           "to": "2026-01-01T00:00:00Z"}), 400, "validation_error")
    assert_error(await client.get(f"{API}/sessions/{sid}/messages", params={"before": "x"}), 400, "validation_error")
    # too large: a message over MAX_MESSAGE_CHARS (500 here) and a body over MAX_BODY_BYTES (8192)
    assert_error(await client.post(chat, json={"message": "a" * 501}), 413, "payload_too_large")
    assert_error(await client.post(chat, json={"message": "a", "metadata": {"k": "v" * 9000}}), 413,
                 "payload_too_large")
    assert_error(await client.post(f"{API}/sessions", json={"store_id": "s", "metadata": {"k": "v" * 5000}}), 413,
                 "payload_too_large")
    # routes and methods
    assert_error(await client.get("/api/nope"), 404, "not_found")
    assert_error(await client.put(f"{API}/sessions"), 405, "method_not_allowed")
    # nothing above wrote a message
    assert await messages_of(client, sid) == []
    # an expired session: readable, but a turn is 410
    execute(database_url, "update chat_sessions set last_activity_at = now() - interval '2 days' "
                          "where session_id = %s", (sid,))
    assert_error(await client.post(chat, json={"message": "still there?"}), 410, "session_expired")
    got = await client.get(f"{API}/sessions/{sid}")
    assert got.status_code == 200 and got.json()["status"] == "expired"


async def test_schema_and_health(client: httpx.AsyncClient) -> None:
    health = (await client.get("/health")).json()
    assert health["status"] == "ok" and health["database"]["ok"] is True
    assert health["model"] == "gpt-4o-mini" and health["retriever"] == "hybrid(pgvector+postgres-fts)"
    schema = (await client.get("/schema/openapi.json")).json()
    paths = schema["paths"]
    for path, method in [
        (f"{API}/sessions", "post"), (f"{API}/sessions", "get"), (f"{API}/sessions/{{session_id}}", "get"),
        (f"{API}/sessions/{{session_id}}", "delete"), (f"{API}/sessions/{{session_id}}/messages", "get"),
        (f"{API}/sessions/{{session_id}}/chat", "post"), (f"{API}/sessions/{{session_id}}/chat/stream", "post"),
        (f"{API}/messages/{{message_id}}/feedback", "post"), (f"{API}/sessions/{{session_id}}/stats", "get"),
        (f"{API}/stats", "get"), ("/health", "get"),
    ]:
        assert method in paths[path], (path, method)


# -- the offline default: no key, the bundled sample knowledge base ---------------------------------

@pytest.fixture(scope="module")
def offline_server(pg_server_conninfo: str) -> Iterator[ServerProcess]:
    with ServerProcess({"DATABASE_URL": create_database(pg_server_conninfo, "offline"), "OPENAI_API_KEY": ""}) as proc:
        yield proc


async def test_offline_server_answers_from_the_sample_knowledge_base(offline_server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=offline_server.base_url, timeout=30) as c:
        health = (await c.get("/health")).json()
        assert health["model"] == "offline-extractive-v1"
        session = await new_session(c, "store-offline")
        events = await stream_turn(c, session["session_id"], "배송비는 얼마인가요?")
        assert events[0][2]["model"] == "offline-extractive-v1"
        sources = events[1][2]["sources"]
        assert any(s["title"].startswith("배송 안내") for s in sources)
        done = events[-1][2]["message"]
        assert done["model"] == "offline-extractive-v1"
        assert "3,000원" in done["content"] and done["content"].startswith("도움말")
        assert done["content"] == "".join(d["delta"] for e, _, d in events if e == "token")
        assert done["input_tokens"] > 0 and done["output_tokens"] == sum(e == "token" for e, _, _ in events)
        en = await stream_turn(c, session["session_id"], "How many days do I have to return an item?")
        assert "7 days" in en[-1][2]["message"]["content"]
