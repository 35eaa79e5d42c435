"""Turns that do not belong to their connection (API.md, "Durable turns"): cancelled on request from any
replica, and rejoined with Last-Event-ID on any replica while they run or after they ended — the request
reaches the replica running the turn through PostgreSQL NOTIFY, and its events come back the same way."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from uuid import uuid4

import httpx
import pytest
from httpx_sse import aconnect_sse

from tests.conftest import fetch_all
from tests.fake_openai import FakeOpenAIServer, Pace
from tests.server_process import ServerProcess
from tests.sse import read_sse

pytestmark = pytest.mark.e2e
API = "/api/session-chat"


@pytest.fixture(scope="module")
def slow_model() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(Pace(0.2, 0.1, 60)) as srv:  # an answer streams for about 6 s
        yield srv


@contextmanager
def _two_replicas(database_url: str, model: FakeOpenAIServer) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    env = {"DATABASE_URL": database_url, "OPENAI_API_KEY": "sk-local-test", "OPENAI_BASE_URL": model.base_url,
           "OPENAI_MAX_RETRIES": "0", "CAPACITY_SAMPLE_SECONDS": "0"}
    with ServerProcess(env) as a, ServerProcess(env) as b:
        yield a, b


@pytest.fixture(scope="module")
def replicas(database_url: str, slow_model: FakeOpenAIServer) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    with _two_replicas(database_url, slow_model) as pair:
        yield pair


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


# -- rejoining a stream with Last-Event-ID -------------------------------------------------------------

async def _start_and_leave(c: httpx.AsyncClient, sid: str, text: str, leave_after: int
                           ) -> tuple[str, list[tuple[int, str, dict[str, Any]]]]:
    """Stream a turn and leave once event id `leave_after` has arrived: (message id, events seen)."""
    seen: list[tuple[int, str, dict[str, Any]]] = []
    async with c.stream("POST", f"{API}/sessions/{sid}/chat/stream", json={"message": text}) as r:
        assert r.status_code == 200
        async for n, name, data in read_sse(r):
            seen.append((n, name, data))
            if n >= leave_after:
                break
    return seen[0][2]["message_id"], seen


async def _rejoin(c: httpx.AsyncClient, sid: str, mid: str, after: int, *, header: bool = True
                  ) -> list[tuple[int, str, dict[str, Any]]]:
    kwargs: dict[str, Any] = {"headers": {"Last-Event-ID": str(after)}} if header else {
        "params": {"last_event_id": str(after)}}
    async with c.stream("GET", f"{API}/sessions/{sid}/messages/{mid}/stream", **kwargs) as r:
        assert r.status_code == 200, await r.aread()
        return [item async for item in read_sse(r)]


def _check_resumed(seen: list[tuple[int, str, dict[str, Any]]], after: int,
                   rejoined: list[tuple[int, str, dict[str, Any]]], stored: str) -> None:
    ids = [n for n, _, _ in rejoined]
    assert ids == sorted(set(ids)) and all(n > after for n in ids), ids  # strictly increasing, all after N
    assert rejoined[-1][1] == "done"
    before = "".join(d["delta"] for n, e, d in seen if e == "token" and n <= after)
    rest = "".join(d["delta"] for _, e, d in rejoined if e == "token")
    assert before + rest == stored


async def test_rejoin_mid_stream_on_the_same_and_on_another_replica(
        replicas: tuple[ServerProcess, ServerProcess], database_url: str) -> None:
    a, b = replicas
    async with httpx.AsyncClient(base_url=a.base_url, timeout=30) as on_a, \
            httpx.AsyncClient(base_url=b.base_url, timeout=30) as on_b:
        for target, header in ((on_a, True), (on_b, False)):
            sid = (await on_a.post(f"{API}/sessions", json={"store_id": "durable"})).json()["session_id"]
            mid, seen = await _start_and_leave(on_a, sid, "a long answer please", 6)
            rejoined = await _rejoin(target, sid, mid, 6, header=header)  # the turn is still running on A
            stored = _rows(database_url, sid)[-1]
            assert stored["status"] == "complete"
            _check_resumed(seen, 6, rejoined, stored["content"])
            assert len([e for _, e, _ in rejoined if e == "token"]) > 1  # it came live, token by token


async def test_rejoin_refusals(replicas: tuple[ServerProcess, ServerProcess]) -> None:
    a, _ = replicas
    async with httpx.AsyncClient(base_url=a.base_url, timeout=30) as c:
        sid = (await c.post(f"{API}/sessions", json={"store_id": "durable"})).json()["session_id"]
        other = (await c.post(f"{API}/sessions", json={"store_id": "durable"})).json()["session_id"]
        mid, _ = await _start_and_leave(c, sid, "short", 1)
        for url, code in ((f"{API}/sessions/{other}/messages/{mid}/stream", "message_not_found"),
                          (f"{API}/sessions/{sid}/messages/{uuid4()}/stream", "message_not_found"),
                          (f"{API}/sessions/{sid}/messages/{mid}/stream?last_event_id=x", "validation_error")):
            r = await c.get(url)
            assert r.json()["code"] == code, (url, r.text)


@pytest.fixture(scope="module")
def quick_model() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(Pace(0.0, 0.004, 40)) as srv:  # 40 tokens in 0.16 s
        yield srv


@pytest.fixture(scope="module")
def quick_replicas(database_url: str, quick_model: FakeOpenAIServer) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    with _two_replicas(database_url, quick_model) as pair:
        yield pair


async def test_a_hundred_disconnects_each_rejoined_yield_the_stored_answer(
        quick_replicas: tuple[ServerProcess, ServerProcess], database_url: str) -> None:
    """Leave at a random point of each of 100 streamed turns; every turn is stored complete, and rejoining from
    the point left (on either replica, during or after the turn) gives exactly the rest of the stored answer."""
    a, b = quick_replicas
    rnd = random.Random(14)
    async with httpx.AsyncClient(base_url=a.base_url, timeout=30) as on_a, \
            httpx.AsyncClient(base_url=b.base_url, timeout=30) as on_b:
        sid = (await on_a.post(f"{API}/sessions", json={"store_id": "durable"})).json()["session_id"]
        for i in range(100):
            leave_at = rnd.randint(1, 43)  # metadata 1, sources 2, tokens 3..42, done 43
            mid, seen = await _start_and_leave(on_a, sid, f"question {i}", leave_at)
            after = seen[-1][0]
            rejoined = await _rejoin(rnd.choice((on_a, on_b)), sid, mid, after)
            stored = fetch_all(database_url, "select status, content from chat_messages where message_id = %s",
                               (mid,))[0]
            assert stored["status"] == "complete"
            if after >= 43:
                assert rejoined == []  # it had everything
            else:
                _check_resumed(seen, after, rejoined, stored["content"])


async def test_rejoining_a_turn_whose_replica_died_ends_it_as_abandoned(
        database_url: str, slow_model: FakeOpenAIServer) -> None:
    """Nobody relays a dead replica's turn: a follower on another replica hears nothing, sees the row still
    `streaming` past the turn's deadline (TURN_TIMEOUT_SECONDS, 3 s here), and ends with `error` `abandoned`
    instead of waiting forever. (Re-running such a turn is the next step of durable turns.)"""
    env = {"DATABASE_URL": database_url, "OPENAI_API_KEY": "sk-local-test", "OPENAI_BASE_URL": slow_model.base_url,
           "OPENAI_MAX_RETRIES": "0", "CAPACITY_SAMPLE_SECONDS": "0", "TURN_TIMEOUT_SECONDS": "3"}
    with ServerProcess(env) as a, ServerProcess(env) as b:
        async with httpx.AsyncClient(base_url=a.base_url, timeout=30) as on_a, \
                httpx.AsyncClient(base_url=b.base_url, timeout=30) as on_b:
            sid = (await on_a.post(f"{API}/sessions", json={"store_id": "durable"})).json()["session_id"]
            mid, _ = await _start_and_leave(on_a, sid, "a long answer please", 4)
            a.proc.send_signal(signal.SIGKILL)
            a.proc.wait(10)
            started = time.monotonic()
            rejoined = await _rejoin(on_b, sid, mid, 4)
            assert rejoined[-1][1] == "error" and rejoined[-1][2]["code"] == "abandoned", rejoined[-1]
            assert all(n > 4 for n, _, _ in rejoined)
            assert time.monotonic() - started < 3 + 5 + 3  # the deadline, the follower's margin, slack



# -- a message sent while a turn runs (on_busy) ----------------------------------------------------------

async def _stream_all(c: httpx.AsyncClient, sid: str, body: dict[str, Any]) -> tuple[int, list[Any]]:
    async with c.stream("POST", f"{API}/sessions/{sid}/chat/stream", json=body) as r:
        if r.status_code != 200:
            return r.status_code, [json.loads(await r.aread())]
        return 200, [item async for item in read_sse(r)]


async def test_three_messages_sent_at_once_are_answered_in_order(
        quick_replicas: tuple[ServerProcess, ServerProcess], database_url: str, quick_model: FakeOpenAIServer) -> None:
    """on_busy=enqueue (the default): the second and third messages are stored at once, told their place, and
    answered after the first, in order, each model request carrying the conversation before it — the third
    one sent to the other replica, which hears through NOTIFY when the session is free."""
    a, b = quick_replicas
    async with httpx.AsyncClient(base_url=a.base_url, timeout=60) as on_a, \
            httpx.AsyncClient(base_url=b.base_url, timeout=60) as on_b:
        sid = (await on_a.post(f"{API}/sessions", json={"store_id": "durable"})).json()["session_id"]
        before = len(quick_model.chat_requests)

        async def send(c: httpx.AsyncClient, text: str, delay: float) -> tuple[int, list[Any]]:
            await asyncio.sleep(delay)
            return await _stream_all(c, sid, {"message": text})

        results = await asyncio.gather(send(on_a, "first", 0), send(on_a, "second", 0.04),
                                       send(on_b, "third", 0.08))
    assert [status for status, _ in results] == [200, 200, 200]
    streams = [events for _, events in results]
    assert [e for _, e, _ in streams[0]][-1] == "done"
    for events, position in ((streams[1], 1), (streams[2], 2)):
        assert [(e, d) for _, e, d in events[1:2]] == [("queued", {"position": position})]
        assert events[-1][1] == "done"
    rows = _rows(database_url, sid)
    assert [(r["role"], r["status"]) for r in rows] == [("user", "complete"), ("assistant", "complete")] * 3
    assert [r["content"] for r in rows if r["role"] == "user"] == ["first", "second", "third"]
    asked = [[m["content"] for m in req["body"]["messages"] if m["role"] == "user"]
             for req in quick_model.chat_requests[before:]]
    assert asked == [["first"], ["first", "second"], ["first", "second", "third"]]


async def test_reject_interrupt_and_a_full_queue(
        replicas: tuple[ServerProcess, ServerProcess], database_url: str, slow_model: FakeOpenAIServer) -> None:
    a, b = replicas
    async with httpx.AsyncClient(base_url=a.base_url, timeout=60) as on_a, \
            httpx.AsyncClient(base_url=b.base_url, timeout=60) as on_b:
        sid = (await on_a.post(f"{API}/sessions", json={"store_id": "durable"})).json()["session_id"]
        first = asyncio.create_task(_stream_all(on_a, sid, {"message": "tell me everything"}))
        await asyncio.sleep(1.0)  # it is streaming (6 s in all)
        rejected = await on_b.post(f"{API}/sessions/{sid}/chat", json={"message": "no", "on_busy": "reject"})
        assert rejected.status_code == 409 and rejected.json()["code"] == "session_busy"

        queued = [asyncio.create_task(_stream_all(on_b, sid, {"message": f"later {i}"})) for i in range(3)]
        await asyncio.sleep(0.5)
        full = await on_a.post(f"{API}/sessions/{sid}/chat/stream", json={"message": "one too many"})
        assert full.status_code == 429 and full.json()["code"] == "queue_full"
        waiting = fetch_all(database_url, "select message_id::text as id from chat_messages where status = "
                                          "'queued' and role = 'assistant' and session_id = %s order by seq", (sid,))
        assert len(waiting) == 3
        for row in waiting:  # the queued ones are cancelled, from the replica that does not hold them
            r = await on_a.post(f"{API}/sessions/{sid}/messages/{row['id']}/cancel")
            assert r.status_code == 202, r.text
        for task in queued:
            status, events = await task
            assert status == 200 and events[-1][1] == "error" and events[-1][2]["code"] == "cancelled"

        before = len(slow_model.chat_requests)
        status, events = await _stream_all(on_b, sid, {"message": "actually, this", "on_busy": "interrupt"})
        assert status == 200 and events[-1][1] == "done"
        _, stopped = await first
        assert stopped[-1][1] == "error" and stopped[-1][2]["code"] == "cancelled"
    rows = _rows(database_url, sid)
    assert [(r["role"], r["status"]) for r in rows] == [
        ("user", "complete"), ("assistant", "cancelled"),
        *[("user", "complete"), ("assistant", "cancelled")] * 3,
        ("user", "complete"), ("assistant", "complete")]
    assert rows[1]["content"].startswith("tok0")  # the interrupted answer keeps what it had said
    # the new message was answered with the whole conversation, the interrupted exchange included
    sent = slow_model.chat_requests[before]["body"]["messages"]
    assert [m["content"] for m in sent if m["role"] == "user"] == ["tell me everything", "actually, this"]
    assert any(m["role"] == "assistant" and m["content"].startswith("tok0") for m in sent)
