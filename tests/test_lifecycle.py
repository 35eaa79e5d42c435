"""Session lifecycle: expiry, the purge of old sessions with their messages and checkpoints, one job at a time.

Time is moved in SQL: the tests set last_activity_at / deleted_at / expired_at in the past.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest

from server.errors import SessionExpired
from server.resources import Resources, open_resources
from server.services.lifecycle import LifecycleJob
from server.settings import Settings
from tests.conftest import ROOT, execute, fetch_all

ORPHANS_SQL = """
select (select count(*) from checkpoints where thread_id not in (select session_id::text from chat_sessions))
     + (select count(*) from checkpoint_blobs where thread_id not in (select session_id::text from chat_sessions))
     + (select count(*) from checkpoint_writes where thread_id not in (select session_id::text from chat_sessions))
       as n
"""


@pytest.fixture(scope="module")
async def res(database_url: str) -> AsyncIterator[Resources]:
    settings = Settings(database_url=database_url, session_cleanup_interval_minutes=0,  # type: ignore[arg-type]
                        capacity_sample_seconds=0)
    async with open_resources(settings) as resources:
        yield resources


async def _session_with_turns(res: Resources, store: str, turns: int = 2) -> UUID:
    session = await res.sessions.create(store, None, {})
    for i in range(turns):
        turn = await res.chat.start_turn(session.session_id, f"How much is shipping? ({i})", {})
        events = [e async for e in turn.stream()]
        assert events[-1][0] == "done"
    return session.session_id


def _count(url: str, sql: str, *params: Any) -> int:
    return int(fetch_all(url, sql, params or None)[0]["n"])


async def test_expire_and_purge_with_checkpoints(res: Resources, database_url: str) -> None:
    idle = await _session_with_turns(res, "life")
    deleted_long_ago = await _session_with_turns(res, "life")
    expired_long_ago = await _session_with_turns(res, "life")
    deleted_recently = await _session_with_turns(res, "life")
    fresh = await _session_with_turns(res, "life")
    messages = fetch_all(database_url, "select message_id from chat_messages where session_id = %s and "
                                       "role = 'assistant' limit 1", (deleted_long_ago,))
    await res.messages.upsert_feedback(messages[0]["message_id"], 1.0, "great")
    execute(database_url, "update chat_sessions set last_activity_at = now() - interval '25 hours' "
                          "where session_id = %s", (idle,))
    execute(database_url, "update chat_sessions set deleted_at = now() - interval '91 days' where session_id = %s",
            (deleted_long_ago,))
    execute(database_url, "update chat_sessions set status = 'expired', expired_at = now() - interval '91 days' "
                          "where session_id = %s", (expired_long_ago,))
    execute(database_url, "update chat_sessions set deleted_at = now() - interval '10 days' where session_id = %s",
            (deleted_recently,))
    assert _count(database_url, "select count(*) as n from checkpoints where thread_id = %s", str(deleted_long_ago)) > 0

    job = LifecycleJob(res.pool, res.settings)
    dry = await job.run_once(dry_run=True)
    assert (dry.expired, dry.purged_sessions, dry.purged_messages) == (1, 2, 8)
    assert dry.purged_checkpoints > 0
    assert _count(database_url, "select count(*) as n from chat_sessions where session_id = %s", deleted_long_ago) == 1

    done = await job.run_once()
    assert (done.expired, done.purged_sessions, done.purged_messages) == (1, 2, 8)
    assert done.purged_checkpoints == dry.purged_checkpoints
    left = {r["session_id"]: r for r in fetch_all(database_url, "select session_id, status from chat_sessions")}
    assert deleted_long_ago not in left and expired_long_ago not in left
    assert left[idle]["status"] == "expired" and left[fresh]["status"] == "active"
    assert deleted_recently in left  # soft-deleted, but not yet 90 days ago
    assert _count(database_url, ORPHANS_SQL) == 0  # no checkpoint row without its session
    assert _count(database_url, "select count(*) as n from chat_messages where session_id = any(%s)",
                  [deleted_long_ago, expired_long_ago]) == 0
    assert _count(database_url, "select count(*) as n from message_feedback where message_id = %s",
                  messages[0]["message_id"]) == 0
    for kept in (idle, fresh, deleted_recently):
        assert _count(database_url, "select count(*) as n from checkpoints where thread_id = %s", str(kept)) > 0

    # the expired session reads fine and refuses a new turn
    assert (await res.sessions.get(idle)).status == "expired"
    with pytest.raises(SessionExpired):
        await res.chat.start_turn(idle, "still there?", {})
    again = await job.run_once()
    assert (again.expired, again.purged_sessions) == (0, 0)


async def test_purge_goes_in_batches(res: Resources, database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("""insert into chat_sessions (session_id, store_id, deleted_at)
                        select gen_random_uuid(), 'bulk', now() - interval '100 days' from generate_series(1, 1200)""")
    report = await LifecycleJob(res.pool, res.settings, batch=500).run_once()
    assert (report.purged_sessions, report.batches) == (1200, 3)


async def test_only_one_process_runs_the_job(res: Resources, database_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": database_url}
    # another process is mid-job: its claim is in background_jobs, started and not finished
    execute(database_url, "insert into background_jobs (name, started_at, owner) values ('lifecycle', now(), 'x:1') "
                          "on conflict (name) do update set started_at = now(), finished_at = null, owner = 'x:1'")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "server.cli", "purge", cwd=ROOT, env=env,
                                                stdout=asyncio.subprocess.PIPE)
    out = (await proc.communicate())[0].decode()
    assert proc.returncode == 0 and "skipped: another process" in out
    # that process died mid-job: once its lease has run out, the job is taken over
    execute(database_url, "update background_jobs set started_at = now() - interval '1 hour' where name = 'lifecycle'")

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("""insert into chat_sessions (session_id, store_id, status, expired_at)
                        select gen_random_uuid(), 'race', 'expired', now() - interval '100 days'
                          from generate_series(1, 3000)""")
    racers = [await asyncio.create_subprocess_exec(sys.executable, "-m", "server.cli", "purge", cwd=ROOT, env=env,
                                                   stdout=asyncio.subprocess.PIPE) for _ in range(2)]
    outputs = [(await p.communicate())[0].decode() for p in racers]
    assert all(p.returncode == 0 for p in racers)
    purged = [int(o.split("purged ")[1].split(" sessions")[0]) for o in outputs if "purged " in o]
    assert sum(purged) == 3000  # each session purged once, by whichever process held the lock
    assert _count(database_url, "select count(*) as n from chat_sessions where store_id = 'race'") == 0


def test_purge_cli_dry_run(database_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": database_url}
    execute(database_url, "insert into chat_sessions (session_id, store_id, deleted_at) "
                          "values (gen_random_uuid(), 'dry', now() - interval '95 days')")
    out = subprocess.run([sys.executable, "-m", "server.cli", "purge", "--dry-run"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "would purge 1 sessions" in out.stdout
    assert _count(database_url, "select count(*) as n from chat_sessions where store_id = 'dry'") == 1


async def test_messages_queued_on_a_process_that_died_are_closed_by_recovery(res: Resources,
                                                                             database_url: str) -> None:
    """A queued message's waiter lived in a process that died: once the longest a queue can take has passed,
    recovery closes its answer (`error`/`abandoned`, the shopper's message stays) so the queue moves on."""
    sid = await _session_with_turns(res, "queue", turns=1)
    user_id, answer_id = uuid4(), uuid4()
    result, _ = await res.messages.enqueue_turn(session_id=sid, user_msg_id=user_id, asst_msg_id=answer_id,
                                                content="waiting", model="m", metadata={}, max_queued=3,
                                                expire_after=timedelta(hours=1))
    assert result.outcome == "queued"  # the session is free, but nobody here waits for it: as after a crash
    job = LifecycleJob(res.pool, res.settings)
    assert await job.recover() == (0, 0)  # not yet: a queue may legitimately take that long
    execute(database_url, "update chat_messages set created_at = created_at - %s where message_id = any(%s)",
            (job.queue_timeout + timedelta(seconds=1), [user_id, answer_id]))
    assert (await job.recover())[0] == 1
    rows = {r["message_id"]: r for r in fetch_all(
        database_url, "select message_id, status, error_code from chat_messages where message_id = any(%s)",
        ([user_id, answer_id],))}
    assert (rows[user_id]["status"], rows[answer_id]["status"], rows[answer_id]["error_code"]) == (
        "complete", "error", "abandoned")
