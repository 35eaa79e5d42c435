"""chat_messages: the turn's two round trips (begin_turn / finish_turn), history and feedback."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from persistence.db import Pipelined, Pool

Row = dict[str, Any]

MESSAGE_COLUMNS = (
    "message_id, session_id, store_id, role, content, status, model, prompt_variant, input_tokens, "
    "output_tokens, latency_ms, first_token_ms, sources, run_id, error_code, created_at, seq, author"
)
# the session's audience comes back in the same statement (its metadata is not changed by the call)
def session_audience(session: str) -> str:
    """The subquery reading a session's audience (metadata.audience) in the statement that claims its turn."""
    return f"(select s.metadata ->> 'audience' from chat_sessions s where s.session_id = {session})"


SESSION_AUDIENCE = session_audience("%(session_id)s")
BEGIN_TURN_SQL = f"""
select outcome, store_id, user_id, {SESSION_AUDIENCE} as audience from begin_turn(
    %(session_id)s, %(user_msg_id)s, %(asst_msg_id)s, %(content)s, %(model)s, %(prompt_variant)s,
    %(metadata)s, %(stale_after)s, %(expire_after)s)
"""
ENQUEUE_TURN_SQL = f"""
select outcome, store_id, user_id, queue_position, {SESSION_AUDIENCE} as audience from enqueue_turn(
    %(session_id)s, %(user_msg_id)s, %(asst_msg_id)s, %(content)s, %(model)s, %(metadata)s, %(max_queued)s,
    %(expire_after)s)
"""
BEGIN_QUEUED_TURN_SQL = """
select outcome, store_id, user_id from begin_queued_turn(
    %(session_id)s, %(user_msg_id)s, %(asst_msg_id)s, %(prompt_variant)s, %(stale_after)s)
"""
RUNNING_TURN_SQL = "select active_run_id from chat_sessions where session_id = %s"
CLOSE_QUEUED_TURN_SQL = "select close_queued_turn(%(user_msg_id)s, %(asst_msg_id)s, %(status)s, %(error_code)s)"
FINISH_TURN_SQL = f"""
select {MESSAGE_COLUMNS} from finish_turn(
    %(message_id)s, %(status)s, %(content)s, %(model)s, %(input_tokens)s, %(output_tokens)s,
    %(latency_ms)s, %(first_token_ms)s, %(sources)s, %(error_code)s, %(stream_index)s, %(run_id)s)
"""
# one statement per replica every TURN_LEASE_SECONDS/3 for all its running turns: the ones it still holds
RENEW_LEASES_SQL = """
update chat_messages set lease_until = now() + %(lease)s
 where message_id = any(%(ids)s) and status = 'streaming' and run_id = any(%(runs)s)
returning message_id
"""
RECLAIM_TURNS_SQL = f"""
select r.message_id, r.session_id, r.store_id, r.user_id, r.user_message_id, r.content, r.model, r.prompt_variant,
       r.attempt, r.run_id, {session_audience("r.session_id")} as audience
  from reclaim_turns(%(lease)s, %(max_attempts)s, %(limit)s) r
"""
GET_MESSAGE_SQL = f"""
select {', '.join('m.' + c.strip() for c in MESSAGE_COLUMNS.split(','))}
  from chat_messages m join chat_sessions s using (session_id)
 where m.message_id = %s and m.deleted_at is null and s.deleted_at is null
"""
# a message with what its stream is rebuilt from (rejoining a finished turn)
GET_STREAM_SQL = f"""
select {', '.join('m.' + c.strip() for c in MESSAGE_COLUMNS.split(','))}, m.stream_index, m.attempt,
       (select u.message_id from chat_messages u
         where u.session_id = m.session_id and u.role = 'user' and u.seq < m.seq
         order by u.seq desc limit 1) as user_message_id
  from chat_messages m join chat_sessions s using (session_id)
 where m.message_id = %s and m.deleted_at is null and s.deleted_at is null
"""
# an Agent Protocol run is a turn: its answer's row, with the time and metadata of the question it answers
RUN_SQL = """
select a.message_id, a.session_id, a.status, a.error_code, coalesce(u.created_at, a.created_at) as created_at,
       coalesce(a.completed_at, a.created_at) as updated_at, coalesce(u.metadata, '{}') as metadata
  from chat_messages a
  join chat_sessions s using (session_id)
  left join lateral (select q.created_at, q.metadata from chat_messages q
                      where q.session_id = a.session_id and q.role = 'user' and q.seq < a.seq
                      order by q.seq desc limit 1) u on true
 where a.role = 'assistant' and a.deleted_at is null and s.deleted_at is null
"""
GET_RUN_SQL = RUN_SQL + " and a.message_id = %(run_id)s"
LIST_RUNS_SQL = RUN_SQL + """
   and a.session_id = %(session_id)s
   and (%(status)s::text is null or a.status = %(status)s)
   and (%(timeout)s::boolean is null or (a.error_code = 'timeout') = %(timeout)s)
 order by a.seq desc limit %(limit)s offset %(offset)s
"""
# newest `limit` before the cursor, returned oldest first
LIST_MESSAGES_SQL = f"""
select * from (
    select {MESSAGE_COLUMNS} from chat_messages
     where session_id = %(session_id)s and deleted_at is null
       and (%(before)s::uuid is null
            or seq < (select seq from chat_messages where message_id = %(before)s::uuid
                                                    and session_id = %(session_id)s))
     order by seq desc
     limit %(limit)s
) page order by seq
"""
UPSERT_FEEDBACK_SQL = """
insert into message_feedback (message_id, store_id, score, comment)
select m.message_id, m.store_id, %(score)s, %(comment)s
  from chat_messages m join chat_sessions s using (session_id)
 where m.message_id = %(message_id)s and m.deleted_at is null and s.deleted_at is null
   and (%(scope)s::text is null or m.store_id = %(scope)s)
on conflict (message_id) do update set score = excluded.score, comment = excluded.comment
returning message_id, score, comment, (xmax = 0) as created,
          (select run_id from chat_messages where message_id = %(message_id)s) as run_id
"""


@dataclass(frozen=True)
class Reclaimed:
    """A dead replica's turn, taken by this one to be re-run (reclaim_turns in sql/010)."""
    message_id: UUID
    session_id: UUID
    store_id: str
    user_id: str | None
    user_message_id: UUID
    content: str
    model: str
    prompt_variant: str | None
    attempt: int
    run_id: UUID
    audience: str | None = None


@dataclass(frozen=True)
class TurnStart:
    outcome: str  # ok | not_found | expired | busy
    store_id: str | None
    user_id: str | None
    audience: str | None = None  # the session's metadata.audience


MESSAGE_SESSION_SQL = """
select s.session_id, s.store_id, s.user_id from chat_messages m join chat_sessions s using (session_id)
 where m.message_id = %s and m.deleted_at is null and s.deleted_at is null
"""


class MessageRepository:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def begin_turn(
        self,
        *,
        session_id: UUID,
        user_msg_id: UUID,
        asst_msg_id: UUID,
        content: str,
        model: str,
        prompt_variant: str,
        metadata: dict[str, Any],
        stale_after: timedelta,
        expire_after: timedelta,
        then: Pipelined | None = None,
    ) -> TurnStart:
        """Claim the session and store the question and its answer-to-be; `then`, a read sent in the same round
        trip, after the claim (the thread's checkpoint)."""
        params = {
            "session_id": session_id,
            "user_msg_id": user_msg_id,
            "asst_msg_id": asst_msg_id,
            "content": content,
            "model": model,
            "prompt_variant": prompt_variant,
            "metadata": Jsonb(metadata),
            "stale_after": stale_after,
            "expire_after": expire_after,
        }
        async with self.pool.connection() as conn:
            if then is None:
                row = await (await conn.execute(BEGIN_TURN_SQL, params)).fetchone()
            else:
                async with conn.pipeline():
                    cur = await conn.execute(BEGIN_TURN_SQL, params)
                    await then.send(conn)
                    row = await cur.fetchone()
                    await then.receive()
        assert row is not None
        return TurnStart(row["outcome"], row["store_id"], row["user_id"], row["audience"])

    async def enqueue_turn(self, *, session_id: UUID, user_msg_id: UUID, asst_msg_id: UUID, content: str,
                           model: str, metadata: dict[str, Any], max_queued: int, expire_after: timedelta
                           ) -> tuple[TurnStart, int]:
        """Store a message (and its answer to come) as 'queued' behind the running turn: (outcome, position)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(ENQUEUE_TURN_SQL, {
                "session_id": session_id, "user_msg_id": user_msg_id, "asst_msg_id": asst_msg_id,
                "content": content, "model": model, "metadata": Jsonb(metadata), "max_queued": max_queued,
                "expire_after": expire_after})
            row = await cur.fetchone()
        assert row is not None
        return TurnStart(row["outcome"], row["store_id"], row["user_id"], row["audience"]), int(row["queue_position"])

    async def begin_queued_turn(self, *, session_id: UUID, user_msg_id: UUID, asst_msg_id: UUID,
                                prompt_variant: str, stale_after: timedelta) -> TurnStart:
        async with self.pool.connection() as conn:
            cur = await conn.execute(BEGIN_QUEUED_TURN_SQL, {
                "session_id": session_id, "user_msg_id": user_msg_id, "asst_msg_id": asst_msg_id,
                "prompt_variant": prompt_variant, "stale_after": stale_after})
            row = await cur.fetchone()
        assert row is not None
        return TurnStart(row["outcome"], row["store_id"], row["user_id"])

    async def close_queued_turn(self, *, user_msg_id: UUID, asst_msg_id: UUID, status: str, error_code: str) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(CLOSE_QUEUED_TURN_SQL, {"user_msg_id": user_msg_id, "asst_msg_id": asst_msg_id,
                                                       "status": status, "error_code": error_code})

    async def set_prompt_variant(self, message_id: UUID, variant: str) -> None:
        async with self.pool.connection() as conn:
            await conn.execute("update chat_messages set prompt_variant = %s where message_id = %s",
                               (variant, message_id))

    async def running_turn(self, session_id: UUID) -> UUID | None:
        async with self.pool.connection() as conn:
            row = await (await conn.execute(RUNNING_TURN_SQL, (session_id,))).fetchone()
        return row["active_run_id"] if row else None

    async def finish_turn(
        self,
        *,
        message_id: UUID,
        status: str,
        content: str,
        model: str | None,
        input_tokens: int,
        output_tokens: int,
        latency_ms: int | None,
        first_token_ms: int | None,
        sources: list[dict[str, Any]],
        error_code: str | None,
        stream_index: dict[str, Any] | None = None,
        run_id: UUID | None = None,
    ) -> Row:
        """Store the end of the run `run_id` (by default the first, whose id is the message's): nothing is
        written when the answer is already ended or held by another run; the stored row is returned either way."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                FINISH_TURN_SQL,
                {
                    "message_id": message_id,
                    "status": status,
                    "content": content,
                    "model": model,
                    "input_tokens": input_tokens,
                    "output_tokens": output_tokens,
                    "latency_ms": latency_ms,
                    "first_token_ms": first_token_ms,
                    "sources": Jsonb(sources),
                    "error_code": error_code,
                    "stream_index": Jsonb(stream_index) if stream_index is not None else None,
                    "run_id": run_id or message_id,
                },
            )
            row = await cur.fetchone()
        assert row is not None
        return row

    async def renew_leases(self, runs: dict[UUID, UUID], lease: timedelta) -> set[UUID]:
        """Extend the leases of these running turns (message id → run id): the message ids still held."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(RENEW_LEASES_SQL, {"ids": list(runs), "runs": list(runs.values()),
                                                        "lease": lease})
            return {row["message_id"] for row in await cur.fetchall()}

    async def reclaim_turns(self, lease: timedelta, max_attempts: int, limit: int) -> list[Reclaimed]:
        """Take turns whose lease ran out to re-run them (those past `max_attempts` are closed abandoned)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(RECLAIM_TURNS_SQL, {"lease": lease, "max_attempts": max_attempts,
                                                         "limit": limit})
            return [Reclaimed(**row) for row in await cur.fetchall()]

    async def get(self, message_id: UUID) -> Row | None:
        async with self.pool.connection() as conn:
            cur = await conn.execute(GET_MESSAGE_SQL, (message_id,))
            return await cur.fetchone()

    async def get_stream(self, message_id: UUID) -> Row | None:
        async with self.pool.connection() as conn:
            cur = await conn.execute(GET_STREAM_SQL, (message_id,))
            return await cur.fetchone()

    async def run(self, run_id: UUID) -> Row | None:
        """An answer as a run (RUN_SQL), or None."""
        async with self.pool.connection() as conn:
            return await (await conn.execute(GET_RUN_SQL, {"run_id": run_id})).fetchone()

    async def runs(self, session_id: UUID, *, limit: int, offset: int, status: str | None = None,
                   timed_out: bool | None = None) -> list[Row]:
        """A session's answers as runs, newest first; `status` a message status, `timed_out` whether it timed out."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(LIST_RUNS_SQL, {"session_id": session_id, "limit": limit, "offset": offset,
                                                     "status": status, "timeout": timed_out})
            return await cur.fetchall()

    async def list(self, session_id: UUID, *, limit: int, before: UUID | None) -> list[Row]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(LIST_MESSAGES_SQL, {"session_id": session_id, "limit": limit, "before": before})
            return await cur.fetchall()

    async def session_of(self, message_id: UUID) -> Row | None:
        """The session a message belongs to: session_id, store_id, user_id (None: no such message)."""
        async with self.pool.connection() as conn:
            return await (await conn.execute(MESSAGE_SESSION_SQL, (message_id,))).fetchone()

    async def upsert_feedback(self, message_id: UUID, score: float, comment: str | None,
                              scope: str | None = None) -> Row | None:
        """None when the message does not exist (or belongs to a store other than `scope`)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                UPSERT_FEEDBACK_SQL, {"message_id": message_id, "score": score, "comment": comment, "scope": scope}
            )
            return await cur.fetchone()
