"""What the operator page reads: stores, a store's sessions found by text, a session's transcript."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from persistence.db import Pool

Row = dict[str, Any]

STORES_SQL = """
select store_id, count(*)::int as session_count, max(last_activity_at) as last_activity_at
  from chat_sessions where deleted_at is null
 group by store_id order by max(last_activity_at) desc limit %(limit)s
"""
# newest activity first; `q` matches a session id prefix, the user id, or any message's text (the
# message side is one indexed scan of the store's messages per search: an operator tool, not a hot path)
SEARCH_SQL = """
select s.session_id, s.store_id, s.user_id, s.status, s.message_count, s.input_tokens, s.output_tokens,
       s.created_at, s.last_activity_at, (s.active_run_id is not null) as turn_running,
       (select left(m.content, 160) from chat_messages m
         where m.session_id = s.session_id and m.role = 'user' and m.deleted_at is null
         order by m.seq limit 1) as first_message
  from chat_sessions s
 where s.deleted_at is null
   and (%(store_id)s::text is null or s.store_id = %(store_id)s)
   and (%(q)s::text is null
        or s.session_id::text like %(prefix)s
        or s.user_id ilike %(like)s
        or exists (select 1 from chat_messages m
                    where m.session_id = s.session_id and m.deleted_at is null and m.content ilike %(like)s))
 order by s.last_activity_at desc, s.session_id desc
 limit %(limit)s
"""
TRANSCRIPT_SQL = """
select m.message_id, m.role, m.content, m.status, m.model, m.prompt_variant, m.input_tokens, m.output_tokens,
       m.latency_ms, m.first_token_ms, m.sources, m.run_id, m.error_code, m.metadata, m.created_at, m.author,
       f.score as feedback_score, f.comment as feedback_comment
  from chat_messages m left join message_feedback f on f.message_id = m.message_id
 where m.session_id = %s and m.deleted_at is null
 order by m.seq
 limit 2000
"""


def _like(q: str) -> str:
    return "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


class AdminRepository:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def stores(self, limit: int = 500) -> list[Row]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(STORES_SQL, {"limit": limit})
            return await cur.fetchall()

    async def search_sessions(self, store_id: str | None, q: str | None, limit: int) -> list[Row]:
        q = (q.strip() or None) if q else None
        like = _like(q) if q else None  # '%text%'; a session id prefix is the same without its leading '%'
        params = {"store_id": store_id, "q": q, "like": like, "prefix": like[1:] if like else None,
                  "limit": limit}
        async with self.pool.connection() as conn:
            cur = await conn.execute(SEARCH_SQL, params)
            return await cur.fetchall()

    async def transcript(self, session_id: UUID) -> list[Row]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(TRANSCRIPT_SQL, (session_id,))
            return await cur.fetchall()
