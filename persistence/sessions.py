"""chat_sessions: create, read, list (keyset pagination) and soft-delete."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from persistence.db import Pool

Row = dict[str, Any]

SESSION_COLUMNS = (
    "session_id, store_id, user_id, status, metadata, message_count, input_tokens, output_tokens, "
    "active_run_id, created_at, updated_at, last_activity_at"
)
INSERT_SESSION_SQL = f"""
insert into chat_sessions (session_id, store_id, user_id, metadata)
values (%(session_id)s, %(store_id)s, %(user_id)s, %(metadata)s)
returning {SESSION_COLUMNS}
"""
GET_SESSION_SQL = f"select {SESSION_COLUMNS} from chat_sessions where session_id = %s and deleted_at is null"
SOFT_DELETE_SQL = """
update chat_sessions set deleted_at = now()
 where session_id = %s and deleted_at is null
returning session_id
"""
# one statement for every filter combination; each combination has an index whose leading
# columns are the equality filters, then (created_at, session_id) for the keyset
LIST_SESSIONS_SQL = f"""
select {SESSION_COLUMNS} from chat_sessions
 where deleted_at is null
   and (%(store_id)s::text is null or store_id = %(store_id)s)
   and (%(user_id)s::text is null or user_id = %(user_id)s)
   and (%(session_id)s::uuid is null or session_id = %(session_id)s)
   and (%(status)s::text is null or status = %(status)s)
   and (%(metadata)s::jsonb is null or metadata @> %(metadata)s::jsonb)
   and (%(busy)s::boolean is null or (active_run_id is not null) = %(busy)s)
   and (%(after_ts)s::timestamptz is null or (created_at, session_id) < (%(after_ts)s, %(after_id)s::uuid))
 order by created_at desc, session_id desc
 limit %(limit)s
"""


class SessionRepository:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def create(self, session_id: UUID, store_id: str, user_id: str | None, metadata: dict[str, Any]) -> Row:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                INSERT_SESSION_SQL,
                {"session_id": session_id, "store_id": store_id, "user_id": user_id, "metadata": Jsonb(metadata)},
            )
            row = await cur.fetchone()
        assert row is not None
        return row

    async def get(self, session_id: UUID) -> Row | None:
        async with self.pool.connection() as conn:
            cur = await conn.execute(GET_SESSION_SQL, (session_id,))
            return await cur.fetchone()

    async def soft_delete(self, session_id: UUID) -> bool:
        async with self.pool.connection() as conn:
            cur = await conn.execute(SOFT_DELETE_SQL, (session_id,))
            return await cur.fetchone() is not None

    async def list(
        self,
        *,
        store_id: str | None,
        user_id: str | None,
        status: str | None,
        limit: int,
        after: tuple[datetime, UUID] | None,
        metadata: dict[str, Any] | None = None,
        busy: bool | None = None,
        session_id: UUID | None = None,
    ) -> list[Row]:
        params = {
            "session_id": session_id,
            "store_id": store_id,
            "user_id": user_id,
            "status": status,
            "after_ts": after[0] if after else None,
            "after_id": after[1] if after else None,
            "limit": limit,
            "metadata": Jsonb(metadata) if metadata else None,
            "busy": busy,
        }
        async with self.pool.connection() as conn:
            cur = await conn.execute(LIST_SESSIONS_SQL, params)
            return await cur.fetchall()
