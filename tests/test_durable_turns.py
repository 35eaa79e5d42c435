"""Turns that do not belong to their connection (API.md, "Durable turns"): cancelled on request from any
replica, and rejoined with Last-Event-ID on any replica while they run or after they ended — the request
reaches the replica running the turn through PostgreSQL NOTIFY, and its events come back the same way."""

from __future__ import annotations

import asyncio
import json
import random
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from uuid import uuid4

import httpx
import jsonschema
import pytest
from langgraph_sdk import get_client
from langgraph_sdk.errors import ConflictError, NotFoundError

from tests.conftest import create_database, execute, fetch_all
from tests.fake_langsmith import API_KEY as LANGSMITH_KEY
from tests.fake_langsmith import FakeLangSmithServer
from tests.fake_openai import FakeOpenAIServer, Pace
from tests.server_process import ServerProcess
from tests.sse import read_sse, stream_and_cancel
from tests.tcp_proxy import DroppingProxy
from tests.test_agent_protocol import conforms, response_schema

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
        # cancelled through B, not where it runs
        events, r = await stream_and_cancel(on_a, on_b, sid, "a long answer please")
        assert r.status_code == 202, r.text
        mid = events[0][1]["message_id"]
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


# -- a replica that dies mid-turn: its lease runs out and another replica re-runs the turn ------------------

@pytest.fixture(scope="module")
def langsmith() -> Iterator[FakeLangSmithServer]:
    with FakeLangSmithServer() as srv:
        yield srv


@pytest.fixture
def lease_database(pg_server_conninfo: str) -> str:
    """A database of the test's own (`serve` migrates it): the module's two replicas (lease 15 s, a sweep every 5 s)
    share the module's database, and one of them could take a dead replica's turn before the replica under test
    does — then the re-run is theirs, untraced (CI saw it: the re-run's trace never reached the fake LangSmith)."""
    return create_database(pg_server_conninfo, "durable_leases")


def _leased_env(database_url: str, model: FakeOpenAIServer, langsmith: FakeLangSmithServer) -> dict[str, str]:
    return {"DATABASE_URL": database_url, "OPENAI_API_KEY": "sk-local-test", "OPENAI_BASE_URL": model.base_url,
            "OPENAI_MAX_RETRIES": "0", "CAPACITY_SAMPLE_SECONDS": "0", "TURN_LEASE_SECONDS": "3",
            "LANGSMITH_API_KEY": LANGSMITH_KEY, "LANGSMITH_ENDPOINT": langsmith.api_url,
            "LANGSMITH_PROJECT": "sixshop-durable"}


def _after_restart(events: list[tuple[int, str, dict[str, Any]]]) -> list[tuple[int, str, dict[str, Any]]]:
    starts = [i for i, (_, e, _) in enumerate(events) if e == "restart"]
    return events[starts[-1]:] if starts else events


async def test_a_dead_replicas_turn_is_re_run_by_another(
        lease_database: str, slow_model: FakeOpenAIServer, langsmith: FakeLangSmithServer) -> None:
    """TURN_LEASE_SECONDS=3: a turn of 6 s keeps its lease on a live replica; after SIGKILL of its replica the
    other one re-runs it from the checkpoint before it, and the rejoined stream says `restart` then gives the
    whole new answer. One user row, one assistant row (the new answer, with the re-run's run_id), and the re-run
    traced with its attempt."""
    database_url = lease_database
    env = _leased_env(database_url, slow_model, langsmith)
    with ServerProcess(env) as a, ServerProcess(env) as b:
        async with httpx.AsyncClient(base_url=a.base_url, timeout=30) as on_a, \
                httpx.AsyncClient(base_url=b.base_url, timeout=30) as on_b:
            sid = (await on_a.post(f"{API}/sessions", json={"store_id": "durable"})).json()["session_id"]
            # alive, it keeps its turn: 6 s is two leases, and B sweeps all along
            first = await _stream_all(on_a, sid, {"message": "a long answer please"})
            assert first[1][-1][1] == "done" and all(e != "restart" for _, e, _ in first[1])
            assert first[1][-1][2]["message"]["run_id"] == first[1][0][2]["message_id"]

            mid, seen = await _start_and_leave(on_a, sid, "and another long one", 5)
            a.proc.send_signal(signal.SIGKILL)
            a.proc.wait(10)
            rejoined = await _rejoin(on_b, sid, mid, seen[-1][0])
        ids = [n for n, _, _ in rejoined]
        assert ids == sorted(set(ids)) and ids[0] > seen[-1][0]
        rerun = _after_restart(rejoined)
        restart = rerun[0]
        assert restart[:2] == (2_000_000, "restart") and restart[2]["attempt"] == 2, rejoined[:3]
        run_id = restart[2]["run_id"]
        assert [e for _, e, _ in rerun[1:3]] == ["metadata", "sources"] and rerun[1][2]["run_id"] == run_id, rerun
        assert rerun[-1][1] == "done", rerun[-1]
        rows = fetch_all(database_url, "select role, status, content, run_id, attempt from chat_messages "
                                       "where session_id = %s order by seq", (sid,))
        assert [(r["role"], r["status"]) for r in rows] == [("user", "complete"), ("assistant", "complete")] * 2
        assert rows[3]["content"] == "".join(d["delta"] for _, e, d in rerun if e == "token")
        assert str(rows[3]["run_id"]) == run_id != mid and rows[3]["attempt"] == 2
        # the re-run asked the model with the history before the turn: the question once, the first exchange
        asked = [r["body"]["messages"] for r in slow_model.answer_requests
                 if r["body"]["messages"][-1]["content"] == "and another long one"]
        assert 1 <= len(asked) <= 2, asked  # the re-run's, after the dead replica's when it got that far
        rerun_request = asked[-1]
        user_turns = [m["content"] for m in rerun_request if m["role"] == "user"]
        assert user_turns.count("and another long one") == 1 and "a long answer please" in user_turns
        # rejoining the ended turn from anywhere before the re-run gives the same: restart, then the new answer
        async with httpx.AsyncClient(base_url=b.base_url, timeout=30) as on_b:
            replay = await _rejoin(on_b, sid, mid, 3)
        assert [e for _, e, _ in replay] == ["restart", "metadata", "sources", "token", "done"]
        assert replay[3][2]["delta"] == rows[3]["content"] and replay[0][0] == 2_000_000
    assert "re-running a turn whose replica died (attempt 2)" in b.output()  # B itself, no other process
    # B has stopped (SIGTERM: its tracing queue is flushed on the way out), so its traces are all sent
    assert langsmith.wait_for(lambda s: run_id in s.runs and s.runs[run_id].get("end_time"), timeout=15), \
        (langsmith.runs.get(run_id), f"B killed after SIGTERM: {b.killed}", b.output()[-4000:])
    meta = langsmith.runs[run_id]["extra"]["metadata"]
    assert meta["attempt"] == 2 and meta["session_id"] == sid
    assert any(r["run_type"] == "llm" for r in langsmith.runs_of_trace(run_id))


async def test_a_turn_that_dies_twice_ends_abandoned_and_frees_its_session(
        lease_database: str, quick_model: FakeOpenAIServer, langsmith: FakeLangSmithServer) -> None:
    """A turn whose re-run's replica died too (attempt 2, lease run out) is not run a third time: the sweep
    stores it error/abandoned, a rejoin ends with that error, and the session answers the next message."""
    database_url = lease_database
    with ServerProcess(_leased_env(database_url, quick_model, langsmith)) as b:
        async with httpx.AsyncClient(base_url=b.base_url, timeout=30) as on_b:
            sid = (await on_b.post(f"{API}/sessions", json={"store_id": "durable"})).json()["session_id"]
            mid, asked = uuid4(), uuid4()
            # the state a second death leaves: claimed, streaming on its second attempt, the lease long run out
            execute(database_url, "select begin_turn(%s, %s, %s, 'twice dead', 'offline', 'v1', '{}', "
                                  "'1 hour', '1 day')", (sid, asked, mid))
            execute(database_url, "update chat_messages set attempt = 2, lease_until = now() - interval '1 s' "
                                  "where message_id = %s", (mid,))
            rejoined = await _rejoin(on_b, sid, str(mid), 0)
            assert rejoined[-1][1] == "error" and rejoined[-1][2]["code"] == "abandoned", rejoined
            row = fetch_all(database_url, "select status, error_code, attempt from chat_messages "
                                          "where message_id = %s", (mid,))[0]
            assert (row["status"], row["error_code"], row["attempt"]) == ("error", "abandoned", 2)
            after = await on_b.post(f"{API}/sessions/{sid}/chat", json={"message": "still there?", "on_busy": "reject"})
            assert after.status_code == 200, after.text


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
        before = len(quick_model.answer_requests)

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
             for req in quick_model.answer_requests[before:]]
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

        before = len(slow_model.answer_requests)
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
    sent = slow_model.answer_requests[before]["body"]["messages"]
    assert [m["content"] for m in sent if m["role"] == "user"] == ["tell me everything", "actually, this"]
    assert any(m["role"] == "assistant" and m["content"].startswith("tok0") for m in sent)


# -- the Agent Protocol's runs, through LangGraph's SDK ---------------------------------------------------

def _content_of(parts: list[Any]) -> str:
    return "".join(p.data[0]["content"] for p in parts if p.event == "messages")


async def test_sdk_background_runs_joined_from_another_replica_waited_and_cancelled(
        replicas: tuple[ServerProcess, ServerProcess], database_url: str) -> None:
    """runs.create on one replica; runs.join_stream on the other, left after a few events and joined again with
    last_event_id: the two parts are exactly the stored answer. runs.get/list/wait/join/cancel, and the shapes
    checked against the Agent Protocol document."""
    a, b = replicas
    on_a, on_b = get_client(url=a.base_url, api_key=None), get_client(url=b.base_url, api_key=None)
    thread = await on_a.threads.create(metadata={"store_id": "durable"})
    tid = thread["thread_id"]
    run = await on_a.runs.create(tid, "agent", input={"messages": [{"role": "user", "content": "a long answer"}]},
                                 metadata={"via": "sdk"})
    assert run["status"] in ("pending", "running") and run["metadata"] == {"via": "sdk"}
    rid = run["run_id"]
    ap_run = {**run, "status": "success"}  # the Agent Protocol's RunStatus has no `running`
    conforms(ap_run, "Run")

    first: list[Any] = []
    async for part in on_b.runs.join_stream(tid, rid, stream_mode="messages-tuple"):
        first.append(part)
        if len([p for p in first if p.event == "messages"]) == 5:
            break
    last_id = first[-1].id
    assert last_id and int(last_id) > 0
    rest = [p async for p in on_b.runs.join_stream(tid, rid, stream_mode="messages-tuple", last_event_id=last_id)]
    assert (await on_b.runs.get(tid, rid))["status"] == "success"
    stored = fetch_all(database_url, "select content, status from chat_messages where message_id = %s", (rid,))[0]
    assert stored["status"] == "complete" and _content_of(first) + _content_of(rest) == stored["content"]
    assert first[0].event == "metadata" and first[0].data["run_id"] == rid
    ids = [int(p.id) for p in first + rest if p.id]
    assert ids == sorted(set(ids))

    # wait: a run answered whole; join of an ended run answers at once; list newest first, filtered
    values = await on_b.runs.wait(tid, "agent", input={"messages": [["user", "and a second one"]]})
    assert [m["type"] for m in values["messages"]] == ["human", "ai"] * 2
    listed = await on_a.runs.list(tid)
    assert [r["status"] for r in listed] == ["success", "success"] and listed[1]["run_id"] == rid
    assert [r["run_id"] for r in await on_a.runs.list(tid, status="success", limit=1)] == [listed[0]["run_id"]]
    assert (await on_a.runs.join(tid, rid))["messages"][-1]["content"] == values["messages"][-1]["content"]

    # cancel a run started on A from B: it stops, is stored `cancelled` with its partial answer
    run = await on_a.runs.create(tid, "agent", input={"messages": [["user", "one more"]]})
    async for part in on_b.runs.join_stream(tid, run["run_id"], stream_mode="messages-tuple"):
        if part.event == "messages":
            break
    await on_b.runs.cancel(tid, run["run_id"])
    assert (await on_a.runs.join(tid, run["run_id"]))["__error__"]["error"] == "cancelled"
    assert (await on_a.runs.get(tid, run["run_id"]))["status"] == "interrupted"
    with pytest.raises(ConflictError):
        await on_b.runs.cancel(tid, run["run_id"])
    with pytest.raises(NotFoundError):
        await on_b.runs.get(tid, str(uuid4()))

    # the Agent Protocol's own paths: GET /runs/{id}, /runs/{id}/wait, POST /runs/search
    async with httpx.AsyncClient(base_url=b.base_url, timeout=30) as http:
        got = (await http.get(f"/runs/{rid}")).json()
        conforms(got, "Run")
        waited = (await http.get(f"/runs/{rid}/wait")).json()
        jsonschema.validate(waited, response_schema("/runs/{run_id}/wait", "get"))
        assert waited["messages"][1] == {"role": "assistant", "content": stored["content"], "id": rid}
        found = (await http.post("/runs/search", json={"thread_id": tid, "status": "interrupted"})).json()
        jsonschema.validate(found, response_schema("/runs/search", "post"))
        assert [r["run_id"] for r in found] == [run["run_id"]]


async def test_sdk_resumable_stream_reconnects_through_a_dropped_connection(
        replicas: tuple[ServerProcess, ServerProcess], database_url: str) -> None:
    """runs.stream(stream_resumable=True) through a proxy that cuts the connection mid-answer: the SDK reconnects
    by itself to the Location the service gave, with the last event id, and the answer it assembles is exactly
    the stored one."""
    a, _ = replicas
    with DroppingProxy(int(a.base_url.rsplit(":", 1)[1])) as proxy:
        client = get_client(url=proxy.base_url, api_key=None)
        thread = await client.threads.create(metadata={"store_id": "durable"})
        parts: list[Any] = []
        async for part in client.runs.stream(thread["thread_id"], "agent", stream_resumable=True,
                                             input={"messages": [["user", "a long answer please"]]},
                                             stream_mode=["messages-tuple", "values"]):
            parts.append(part)
            if len([p for p in parts if p.event == "messages"]) == 5:
                assert proxy.drop() >= 1
        run_id = parts[0].data["run_id"]
    stored = fetch_all(database_url, "select content from chat_messages where message_id = %s", (run_id,))[0]
    assert _content_of(parts) == stored["content"]
    assert parts[-1].event == "values" and parts[-1].data["messages"][-1]["content"] == stored["content"]
