"""The lifecycle job's SQL: expire idle sessions, purge old ones with their messages and checkpoints.

Everything runs in batches (one short transaction each), so no statement holds locks for long; one
process runs the job at a time because it runs only under a claim in background_jobs (persistence/jobs.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from psycopg import AsyncConnection

EXPIRE_SQL = """
with due as (
    select session_id from chat_sessions
     where status = 'active' and deleted_at is null and active_run_id is null
       and last_activity_at < now() - %(idle)s::interval
     order by last_activity_at
     limit %(batch)s
     for update skip locked
)
update chat_sessions s set status = 'expired', expired_at = now()
  from due where s.session_id = due.session_id
returning s.session_id
"""
COUNT_EXPIRE_SQL = """
select count(*) as n from chat_sessions
 where status = 'active' and deleted_at is null and active_run_id is null
   and last_activity_at < now() - %(idle)s::interval
"""
# A turn whose process died: its assistant row stays 'streaming' and its session stays claimed. After
# the turn timeout both are closed (begin_turn also takes over such a claim when a new turn comes). A message
# queued on a process that died waits for nobody: after the longest a queue can take, its answer is closed
# (the shopper's message stays) so that the messages behind it can go.
RECOVER_SQL = """
with dead as (
    update chat_messages set status = 'error', error_code = 'abandoned', completed_at = now()
     where (status = 'streaming' and created_at < now() - %(timeout)s::interval)
        or (status = 'queued' and role = 'assistant' and created_at < now() - %(queue_timeout)s::interval)
    returning session_id, message_id
), asked as (
    update chat_messages set status = 'complete'
     where status = 'queued' and role = 'user' and created_at < now() - %(queue_timeout)s::interval
), released as (
    update chat_sessions s set active_run_id = null, active_run_started_at = null
      from dead where s.session_id = dead.session_id and s.active_run_id = dead.message_id
    returning s.session_id
)
select (select count(*) from dead) as turns, (select count(*) from released) as claims
"""
PURGE_CANDIDATES_SQL = """
select session_id from (
    select session_id from chat_sessions where deleted_at < now() - %(keep)s::interval
    union
    select session_id from chat_sessions where status = 'expired' and expired_at < now() - %(keep)s::interval
) c limit %(batch)s
"""
COUNT_PURGE_SQL = """
with c as (
    select session_id from chat_sessions where deleted_at < now() - %(keep)s::interval
    union
    select session_id from chat_sessions where status = 'expired' and expired_at < now() - %(keep)s::interval
)
select (select count(*) from c) as sessions,
       (select count(*) from chat_messages m where m.session_id in (select session_id from c)) as messages,
       (select count(*) from checkpoints k where k.thread_id in (select session_id::text from c)) as checkpoints
"""
# checkpoint tables are keyed by thread_id (text) = session_id; messages and feedback go by cascade
PURGE_BATCH_SQL = (
    "delete from checkpoint_writes where thread_id = any(%(ids)s::text[])",
    "delete from checkpoint_blobs where thread_id = any(%(ids)s::text[])",
    "delete from checkpoints where thread_id = any(%(ids)s::text[])",
)
PURGE_MESSAGES_SQL = "delete from chat_messages where session_id = any(%(ids)s::uuid[])"  # feedback by cascade
PURGE_SESSIONS_SQL = "delete from chat_sessions where session_id = any(%(ids)s::uuid[])"


@dataclass
class LifecycleReport:
    ran: bool = True  # False: another process is running the job (background_jobs)
    dry_run: bool = False
    expired: int = 0
    purged_sessions: int = 0
    purged_messages: int = 0
    purged_checkpoints: int = 0
    batches: int = 0

    def summary(self) -> str:
        if not self.ran:
            return "skipped: another process is running the lifecycle job"
        verb = "would expire" if self.dry_run else "expired"
        purge = "would purge" if self.dry_run else "purged"
        return (f"{verb} {self.expired} sessions; {purge} {self.purged_sessions} sessions, "
                f"{self.purged_messages} messages, {self.purged_checkpoints} checkpoints"
                + ("" if self.dry_run else f" in {self.batches} batches"))


async def recover_abandoned_turns(conn: AsyncConnection[dict[str, Any]], older_than: timedelta,
                                  queued_longer_than: timedelta) -> tuple[int, int]:
    """Close turns left 'streaming' longer than `older_than` (and queued ones waiting longer than
    `queued_longer_than`) and release their claims: (turns, claims)."""
    params = {"timeout": older_than, "queue_timeout": queued_longer_than}
    row = await (await conn.execute(RECOVER_SQL, params)).fetchone()
    return (int(row["turns"]), int(row["claims"])) if row else (0, 0)


async def run_lifecycle(conn: AsyncConnection[dict[str, Any]], *, idle: timedelta, keep: timedelta,
                        batch: int = 500, dry_run: bool = False) -> LifecycleReport:
    """Run the job on `conn` (autocommit); the caller makes sure one process runs it at a time."""
    report = LifecycleReport(dry_run=dry_run)
    if dry_run:
        row = await (await conn.execute(COUNT_EXPIRE_SQL, {"idle": idle})).fetchone()
        report.expired = int(row["n"]) if row else 0
        counts = await (await conn.execute(COUNT_PURGE_SQL, {"keep": keep})).fetchone()
        if counts:
            report.purged_sessions = int(counts["sessions"])
            report.purged_messages = int(counts["messages"])
            report.purged_checkpoints = int(counts["checkpoints"])
        return report
    while True:
        async with conn.transaction():
            rows = await (await conn.execute(EXPIRE_SQL, {"idle": idle, "batch": batch})).fetchall()
        report.expired += len(rows)
        if len(rows) < batch:
            break
    while True:
        ids = [r["session_id"] for r in
               await (await conn.execute(PURGE_CANDIDATES_SQL, {"keep": keep, "batch": batch})).fetchall()]
        if not ids:
            break
        async with conn.transaction():
            params = {"ids": [str(i) for i in ids]}
            for sql in PURGE_BATCH_SQL:
                cur = await conn.execute(sql, params)
                if sql.startswith("delete from checkpoints "):
                    report.purged_checkpoints += cur.rowcount
            report.purged_messages += (await conn.execute(PURGE_MESSAGES_SQL, {"ids": ids})).rowcount
            report.purged_sessions += (await conn.execute(PURGE_SESSIONS_SQL, {"ids": ids})).rowcount
        report.batches += 1
    return report
