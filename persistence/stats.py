"""Per-session and per-store statistics, computed in SQL over chat_messages."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from persistence.db import Pool

Row = dict[str, Any]

# The price of a model is the table's longest key equal to its name or a dated snapshot of it
# ("gpt-4o-mini-2024-07-18" is priced as "gpt-4o-mini", not as "gpt-4o").
_PRICE_JOIN = """
  left join lateral (
      select (value ->> 'input')::numeric as input, (value ->> 'output')::numeric as output
        from jsonb_each(%(prices)s::jsonb)
       where m.model = key or m.model like key || '-%%'
       order by length(key) desc
       limit 1
  ) p on true
"""

# Latency figures are over completed assistant turns; the error rate is over finished assistant
# turns (complete, error, cancelled); cost uses the price table (USD per million tokens) by model.
_AGGREGATES = """
    count(*)::int                                                           as message_count,
    count(distinct m.session_id)::int                                       as session_count,
    coalesce(sum(m.input_tokens), 0)::bigint                                as input_tokens,
    coalesce(sum(m.output_tokens), 0)::bigint                               as output_tokens,
    coalesce(sum((m.input_tokens * p.input + m.output_tokens * p.output) / 1000000), 0)::float8
                                                                            as cost_usd,
    avg(m.latency_ms) filter (where m.role = 'assistant' and m.status = 'complete')::float8
                                                                            as avg_latency_ms,
    percentile_cont(0.95) within group (order by m.latency_ms)
        filter (where m.role = 'assistant' and m.status = 'complete')       as p95_latency_ms,
    avg(m.first_token_ms) filter (where m.role = 'assistant' and m.status = 'complete')::float8
                                                                            as avg_first_token_ms,
    coalesce(
        (count(*) filter (where m.role = 'assistant' and m.status = 'error'))::float8
        / nullif(count(*) filter (where m.role = 'assistant' and m.status <> 'streaming'), 0),
    0)                                                                      as error_rate,
    count(f.score)::int                                                     as feedback_count,
    avg(f.score)::float8                                                    as avg_feedback_score
"""
SESSION_STATS_SQL = f"""
select {_AGGREGATES}
  from chat_messages m left join message_feedback f using (message_id) {_PRICE_JOIN}
 where m.session_id = %(session_id)s and m.deleted_at is null
"""
STORE_STATS_SQL = f"""
select {_AGGREGATES}
  from chat_messages m left join message_feedback f using (message_id) {_PRICE_JOIN}
 where m.store_id = %(store_id)s and m.deleted_at is null
   and m.created_at >= coalesce(%(from)s::timestamptz, '-infinity')
   and m.created_at < coalesce(%(to)s::timestamptz, 'infinity')
"""


class StatsRepository:
    def __init__(self, pool: Pool, prices: dict[str, dict[str, float]]) -> None:
        self.pool = pool
        self.prices = Jsonb(prices)

    async def session_stats(self, session_id: UUID) -> Row:
        async with self.pool.connection() as conn:
            cur = await conn.execute(SESSION_STATS_SQL, {"session_id": session_id, "prices": self.prices})
            row = await cur.fetchone()
        assert row is not None
        return row

    async def store_stats(self, store_id: str, start: datetime | None, end: datetime | None) -> Row:
        params = {"store_id": store_id, "from": start, "to": end, "prices": self.prices}
        async with self.pool.connection() as conn:
            cur = await conn.execute(STORE_STATS_SQL, params)
            row = await cur.fetchone()
        assert row is not None
        return row
