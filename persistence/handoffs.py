"""Handoffs to a person (sql/013): starting one, the operators' queue, their replies, the release, and a session's
event log (what the shopper's page follows)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

from persistence.db import Pool
from persistence.messages import MESSAGE_COLUMNS

Row = dict[str, Any]
EVENTS_PAGE = 100  # session events read per statement
SESSION_EVENTS = "sixshop_session_events"  # NOTIFY {"session", "id"} for every new session event (sql/013)

START_SQL = "select outcome, started_at from start_handoff(%(session_id)s, %(answer_id)s, %(reason)s)"
OPEN_SQL = """
select h.handoff_id, h.session_id, h.store_id, h.reason, h.after_seq, h.started_at, h.first_reply_at
  from handoffs h where h.session_id = %(session_id)s and h.released_at is null
"""
# oldest first: the shopper waiting longest is answered first
WAITING_SQL = """
select h.session_id, h.store_id, s.user_id, h.reason, h.started_at, h.first_reply_at,
       extract(epoch from now() - h.started_at)::float8 as waiting_s,
       (select count(*) from chat_messages m where m.session_id = h.session_id and m.seq > h.after_seq
           and m.role = 'user')::int as shopper_messages,
       (select m.content from chat_messages m where m.session_id = h.session_id and m.role = 'user'
           order by m.seq desc limit 1) as last_shopper_message
  from handoffs h join chat_sessions s using (session_id)
 where h.released_at is null and s.deleted_at is null
   and (%(store_id)s::text is null or h.store_id = %(store_id)s)
 order by h.started_at, h.session_id
 limit %(limit)s
"""
REPLY_SQL = f"""
with open as (
    update handoffs h set first_reply_at = coalesce(h.first_reply_at, now())
     where h.session_id = %(session_id)s and h.released_at is null
    returning h.store_id
), msg as (
    insert into chat_messages (message_id, session_id, store_id, role, content, status, author)
    select %(message_id)s, %(session_id)s, open.store_id, 'operator', %(content)s, 'complete', %(author)s from open
    returning {MESSAGE_COLUMNS}
)
select * from msg
"""
# the release claims the session like a turn, so that no message slips between what the graph is given and
# the status going back to active
CLAIM_RELEASE_SQL = """
update chat_sessions s set active_run_id = %(claim)s, active_run_started_at = now()
 where s.session_id = %(session_id)s and s.status = 'handoff' and s.deleted_at is null
   and (s.active_run_id is null or s.active_run_started_at < now() - %(stale_after)s::interval)
returning s.session_id
"""
SINCE_SQL = """
select m.message_id, m.role, m.content, m.author from chat_messages m
 where m.session_id = %(session_id)s and m.seq > %(after_seq)s and m.role in ('user', 'operator')
   and m.status = 'complete' and m.deleted_at is null
 order by m.seq
"""
END_RELEASE_SQL = """
with released as (
    update handoffs h set released_at = now(), released_by = %(by)s
     where h.session_id = %(session_id)s and h.released_at is null and %(released)s
    returning h.session_id
)
update chat_sessions s
   set active_run_id = null, active_run_started_at = null,
       status = case when %(released)s then 'active' else s.status end,
       last_activity_at = case when %(released)s then now() else s.last_activity_at end
 where s.session_id = %(session_id)s and s.active_run_id = %(claim)s
"""
EVENTS_SQL = f"""
select e.event_id, e.kind, e.status as event_status, {', '.join('m.' + c.strip() for c in MESSAGE_COLUMNS.split(','))}
  from session_events e left join chat_messages m on m.message_id = e.message_id
 where e.session_id = %(session_id)s and e.event_id > %(after)s
 order by e.event_id
 limit %(limit)s
"""


class HandoffRepository:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def start(self, session_id: UUID, answer_id: UUID, reason: str) -> tuple[str, datetime | None]:
        """('handoff', since) — or ('not_active', since of the handoff already open, if any)."""
        async with self.pool.connection() as conn:
            row = await (await conn.execute(START_SQL, {"session_id": session_id, "answer_id": answer_id,
                                                        "reason": reason})).fetchone()
        assert row is not None
        return str(row["outcome"]), row["started_at"]

    async def open(self, session_id: UUID) -> Row | None:
        async with self.pool.connection() as conn:
            return await (await conn.execute(OPEN_SQL, {"session_id": session_id})).fetchone()

    async def waiting(self, store_id: str | None, limit: int = 100) -> list[Row]:
        async with self.pool.connection() as conn:
            return await (await conn.execute(WAITING_SQL, {"store_id": store_id, "limit": limit})).fetchall()

    async def reply(self, session_id: UUID, content: str, author: str) -> Row | None:
        """The operator's message, stored (None: the session is not waiting for a person)."""
        async with self.pool.connection() as conn:
            return await (await conn.execute(REPLY_SQL, {"session_id": session_id, "message_id": uuid4(),
                                                         "content": content, "author": author})).fetchone()

    async def claim_release(self, session_id: UUID, claim: UUID, stale_after: Any) -> Row | None:
        """Claim a session in handoff for its release: the open handoff, or None (not in handoff, or busy)."""
        async with self.pool.connection() as conn:
            claimed = await (await conn.execute(CLAIM_RELEASE_SQL, {
                "session_id": session_id, "claim": claim, "stale_after": stale_after})).fetchone()
            if claimed is None:
                return None
            return await (await conn.execute(OPEN_SQL, {"session_id": session_id})).fetchone()

    async def written_since(self, session_id: UUID, after_seq: int) -> list[Row]:
        """What the shopper and operators wrote during the handoff, in order."""
        async with self.pool.connection() as conn:
            return await (await conn.execute(SINCE_SQL, {"session_id": session_id,
                                                         "after_seq": after_seq})).fetchall()

    async def end_release(self, session_id: UUID, claim: UUID, by: str, *, released: bool) -> None:
        """Let go of the claim: the session active again (released) or still in handoff (the resume failed)."""
        async with self.pool.connection() as conn:
            await conn.execute(END_RELEASE_SQL, {"session_id": session_id, "claim": claim, "by": by,
                                                 "released": released})

    async def events(self, session_id: UUID, after: int, limit: int = EVENTS_PAGE) -> list[Row]:
        async with self.pool.connection() as conn:
            return await (await conn.execute(EVENTS_SQL, {"session_id": session_id, "after": after,
                                                          "limit": limit})).fetchall()
