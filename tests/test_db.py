"""Integration on the embedded PostgreSQL: migrations, triggers, turn functions, indexes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import timedelta
from uuid import UUID, uuid4

import psycopg

from persistence.db import Pool
from persistence.messages import MessageRepository
from persistence.migrations import apply_migrations, load_migrations, migrate
from persistence.sessions import SessionRepository
from tests.conftest import ROOT, create_database, execute, fetch_all

CHECKPOINT_TABLES = {"checkpoints", "checkpoint_blobs", "checkpoint_writes", "checkpoint_migrations"}


def _tables(conninfo: str) -> set[str]:
    rows = fetch_all(conninfo, "select tablename from pg_tables where schemaname = 'public'")
    return {r["tablename"] for r in rows}


async def test_migrate_is_idempotent(pool: Pool, database_url: str) -> None:
    # the fixture already migrated once
    assert await migrate(pool) == []
    assert {"chat_sessions", "chat_messages", "message_feedback", "knowledge_chunks"} <= _tables(database_url)
    assert CHECKPOINT_TABLES <= _tables(database_url)
    versions = [r["version"] for r in fetch_all(database_url, "select version from schema_migrations order by 1")]
    assert versions == [m.version for m in load_migrations()]


def test_two_processes_migrating_at_once(pg_server_conninfo: str) -> None:
    url = create_database(pg_server_conninfo, "race")
    env = {**os.environ, "DATABASE_URL": url, "INGEST_SAMPLE_IF_EMPTY": "false"}
    procs = [
        subprocess.Popen([sys.executable, "-m", "server.cli", "migrate"], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    # exactly one of them applied the files, the other found them applied
    assert sorted(o[0].strip() for o in outs) == sorted(
        ["applied: nothing (up to date)", "applied: " + ", ".join(m.name for m in load_migrations())]
    )
    assert len(fetch_all(url, "select * from schema_migrations")) == len(load_migrations())
    assert CHECKPOINT_TABLES <= _tables(url)


async def test_apply_migrations_under_concurrency_in_one_process(pg_server_conninfo: str) -> None:
    url = create_database(pg_server_conninfo, "race_async")

    async def one() -> list[str]:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            from psycopg.rows import dict_row

            conn.row_factory = dict_row  # type: ignore[assignment]
            return await apply_migrations(conn)  # type: ignore[arg-type]

    results = await asyncio.gather(*(one() for _ in range(4)))
    assert sorted(len(r) for r in results) == [0, 0, 0, len(load_migrations())]


async def _turn(repo: MessageRepository, session_id: UUID, text: str = "hi") -> tuple[str, UUID]:
    asst = uuid4()
    start = await repo.begin_turn(
        session_id=session_id, user_msg_id=uuid4(), asst_msg_id=asst, content=text, model="m",
        prompt_variant="v1", metadata={}, stale_after=timedelta(minutes=2), expire_after=timedelta(hours=24),
    )
    return start.outcome, asst


async def _finish(repo: MessageRepository, asst: UUID, tin: int, tout: int, status: str = "complete") -> None:
    await repo.finish_turn(message_id=asst, status=status, content="answer", model="m", input_tokens=tin,
                           output_tokens=tout, latency_ms=10, first_token_ms=5, sources=[], error_code=None)


async def test_triggers_keep_session_counters(pool: Pool, database_url: str) -> None:
    sessions, messages = SessionRepository(pool), MessageRepository(pool)
    sid = uuid4()
    created = await sessions.create(sid, "store-t", "u", {})
    outcome, a1 = await _turn(messages, sid)
    assert outcome == "ok"
    await _finish(messages, a1, 100, 20)
    outcome, a2 = await _turn(messages, sid)
    await _finish(messages, a2, 50, 5, status="error")
    row = await sessions.get(sid)
    assert row is not None
    assert (row["message_count"], row["input_tokens"], row["output_tokens"]) == (4, 150, 25)
    assert row["last_activity_at"] > created["last_activity_at"]
    assert row["active_run_id"] is None
    # a direct edit and a delete are counted too: the trigger, not the code path, keeps the sums
    execute(database_url, "update chat_messages set output_tokens = output_tokens + 10 where message_id = %s", (a1,))
    execute(database_url, "delete from chat_messages where message_id = %s", (a2,))
    row = await sessions.get(sid)
    assert row is not None
    assert (row["message_count"], row["input_tokens"], row["output_tokens"]) == (3, 100, 30)
    stamps = fetch_all(database_url, "select created_at, updated_at from chat_messages where message_id = %s", (a1,))
    assert stamps[0]["updated_at"] > stamps[0]["created_at"]


async def test_begin_turn_outcomes(pool: Pool, database_url: str) -> None:
    sessions, messages = SessionRepository(pool), MessageRepository(pool)
    assert (await _turn(messages, uuid4()))[0] == "not_found"
    sid = uuid4()
    await sessions.create(sid, "store-t", None, {})
    outcome, a1 = await _turn(messages, sid)
    assert outcome == "ok"
    assert (await _turn(messages, sid))[0] == "busy"  # no row written for the refused turn
    assert len(fetch_all(database_url, "select 1 from chat_messages where session_id = %s", (sid,))) == 2
    # a claim older than the turn timeout is taken over and the dead turn's row is closed
    execute(database_url, "update chat_sessions set active_run_started_at = now() - interval '1 hour' "
                            "where session_id = %s", (sid,))
    outcome, a2 = await _turn(messages, sid)
    assert outcome == "ok"
    dead = fetch_all(database_url, "select status, error_code from chat_messages where message_id = %s", (a1,))
    assert dead == [{"status": "error", "error_code": "abandoned"}]
    # finishing the dead turn later changes nothing and does not release the new claim
    await _finish(messages, a1, 9, 9)
    late = fetch_all(database_url, "select status from chat_messages where message_id = %s", (a1,))
    assert late[0]["status"] == "error"
    claim = fetch_all(database_url, "select active_run_id from chat_sessions where session_id = %s", (sid,))
    assert claim[0]["active_run_id"] == a2
    await _finish(messages, a2, 1, 1)
    # inactivity past the expiry makes the session expired (410), readable still
    execute(database_url, "update chat_sessions set last_activity_at = now() - interval '25 hours' "
                            "where session_id = %s", (sid,))
    assert (await _turn(messages, sid))[0] == "expired"
    row = await sessions.get(sid)
    assert row is not None and row["status"] == "expired"
    await sessions.soft_delete(sid)
    assert (await _turn(messages, sid))[0] == "not_found"


def test_hot_queries_use_indexes(pool: Pool, database_url: str) -> None:
    # enough rows that a sequential scan would be chosen without a fitting index
    execute(database_url, """
        insert into chat_sessions (session_id, store_id, user_id)
        select gen_random_uuid(), 'bulk-' || (i % 50), 'u' || (i % 500) from generate_series(1, 20000) i;
        analyze chat_sessions; analyze chat_messages;
    """)
    from persistence.messages import LIST_MESSAGES_SQL
    from persistence.sessions import LIST_SESSIONS_SQL

    def plan(sql: str, params: dict) -> str:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("set enable_seqscan = off")  # tiny tables: ask whether an index CAN serve it
            rows = conn.execute("explain " + sql, params).fetchall()
        return "\n".join(r[0] for r in rows)

    base = {"store_id": "bulk-1", "user_id": None, "status": None, "after_ts": None, "after_id": None, "limit": 21,
            "metadata": None, "busy": None, "session_id": None}
    assert "chat_sessions_store_list_idx" in plan(LIST_SESSIONS_SQL, base)
    assert "chat_sessions_pkey" in plan(LIST_SESSIONS_SQL, {**base, "session_id": uuid4()})  # a session token's own
    assert "chat_sessions_store_user_list_idx" in plan(LIST_SESSIONS_SQL, {**base, "user_id": "u1"})
    msgs = plan(LIST_MESSAGES_SQL, {"session_id": uuid4(), "limit": 50, "before": None})
    assert "chat_messages_session_seq_idx" in msgs
