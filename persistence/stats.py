"""Per-session and per-store statistics, computed in SQL over chat_messages.

A store's figures for a date range come from one scan of its messages (index on store_id,
created_at), aggregated with GROUPING SETS into the total, one row per day (in the caller's time
zone), per prompt variant and per model. Variant and model breakdowns are over assistant messages
(a user message has neither). Cost is tokens × the price table (USD per million tokens), matched by
model name or a dated snapshot of it.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from persistence.db import Pool

Row = dict[str, Any]

# The price of a model is the table's longest key equal to its name or a dated snapshot of it
# ("gpt-4o-mini-2024-07-18" is priced as "gpt-4o-mini", not as "gpt-4o"); looked up once per
# distinct model, not per message.
_PRICED = """
  priced as (
      select mm.model, p.input, p.output
        from (select distinct model from scoped where model is not null) mm
        left join lateral (
            select (value ->> 'input')::numeric as input, (value ->> 'output')::numeric as output
              from jsonb_each(%(prices)s::jsonb)
             where mm.model = key or mm.model like key || '-%%'
             order by length(key) desc
             limit 1
        ) p on true
  )
"""

# Latency figures are over completed assistant turns; the error rate is over finished assistant
# turns (complete, error, cancelled).
_AGGREGATES = """
    count(*)::int                                                           as message_count,
    (count(*) filter (where m.role = 'assistant'))::int                     as turn_count,
    count(distinct m.session_id)::int                                       as session_count,
    coalesce(sum(m.input_tokens), 0)::bigint                                as input_tokens,
    coalesce(sum(m.output_tokens), 0)::bigint                               as output_tokens,
    coalesce(sum((m.input_tokens * p.input + m.output_tokens * p.output) / 1000000), 0)::float8
                                                                            as cost_usd,
    avg(m.latency_ms) filter (where m.role = 'assistant' and m.status = 'complete')::float8
                                                                            as avg_latency_ms,
    percentile_cont(0.5) within group (order by m.latency_ms)
        filter (where m.role = 'assistant' and m.status = 'complete')       as p50_latency_ms,
    percentile_cont(0.95) within group (order by m.latency_ms)
        filter (where m.role = 'assistant' and m.status = 'complete')       as p95_latency_ms,
    avg(m.first_token_ms) filter (where m.role = 'assistant' and m.status = 'complete')::float8
                                                                            as avg_first_token_ms,
    coalesce(
        (count(*) filter (where m.role = 'assistant' and m.status = 'error'))::float8
        / nullif(count(*) filter (where m.role = 'assistant' and m.status <> 'streaming'), 0),
    0)                                                                      as error_rate,
    (count(*) filter (where m.role = 'operator'))::int                      as operator_message_count,
    count(m.feedback_score)::int                                            as feedback_count,
    avg(m.feedback_score)::float8                                           as avg_feedback_score
"""

_COLUMNS = """m.session_id, m.role, m.status, m.model, m.prompt_variant, m.input_tokens, m.output_tokens,
           m.latency_ms, m.first_token_ms, f.score as feedback_score"""  # never the content: keep rows narrow

SESSION_STATS_SQL = f"""
with scoped as (
    select {_COLUMNS}
      from chat_messages m left join message_feedback f using (message_id)
     where m.session_id = %(session_id)s and m.deleted_at is null
), {_PRICED}
select {_AGGREGATES}
  from scoped m left join priced p using (model)
"""

STORE_STATS_SQL = f"""
with scoped as (
    select {_COLUMNS}, (m.created_at at time zone %(tz)s)::date as day
      from chat_messages m left join message_feedback f using (message_id)
     where m.store_id = %(store_id)s and m.deleted_at is null
       and m.created_at >= coalesce(%(from)s::timestamptz, '-infinity')
       and m.created_at < coalesce(%(to)s::timestamptz, 'infinity')
), {_PRICED}
select grouping(m.day)::int as g_day, grouping(m.prompt_variant)::int as g_variant, grouping(m.model)::int as g_model,
       m.day, m.prompt_variant, m.model,
       {_AGGREGATES}
  from scoped m left join priced p using (model)
 group by grouping sets ((), (m.day), (m.prompt_variant), (m.model))
"""

# handoffs to a person (sql/013) started in the range: how many, and how long shoppers waited for the first
# operator reply (those still unanswered are counted, not timed)
HANDOFF_STATS_SQL = """
with scoped as (
    select h.started_at, h.first_reply_at, (h.started_at at time zone %(tz)s)::date as day
      from handoffs h
     where h.store_id = %(store_id)s
       and h.started_at >= coalesce(%(from)s::timestamptz, '-infinity')
       and h.started_at < coalesce(%(to)s::timestamptz, 'infinity')
)
select grouping(day)::int as g_day, day, count(*)::int as handoff_count,
       percentile_cont(0.5) within group (order by extract(epoch from first_reply_at - started_at))
           filter (where first_reply_at is not null) as p50_first_reply_s,
       percentile_cont(0.95) within group (order by extract(epoch from first_reply_at - started_at))
           filter (where first_reply_at is not null) as p95_first_reply_s
  from scoped
 group by grouping sets ((), (day))
"""

WORK_MEM_SQL = "select set_config('work_mem', '64MB', true)"


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

    async def store_stats(self, store_id: str, start: datetime | None, end: datetime | None, tz: str = "UTC"
                          ) -> dict[str, Any]:
        """{"total": Row, "daily": [Row with "date"], "by_prompt_variant": [...], "by_model": [...]}."""
        params = {"store_id": store_id, "from": start, "to": end, "tz": tz, "prices": self.prices}
        async with self.pool.connection() as conn, conn.transaction():
            # sorts for the percentiles and distinct counts stay in memory instead of spilling to disk
            await conn.execute(WORK_MEM_SQL)
            cur = await conn.execute(STORE_STATS_SQL, params)
            rows = await cur.fetchall()
            handoffs = await (await conn.execute(HANDOFF_STATS_SQL, params)).fetchall()
        out: dict[str, Any] = {"total": None, "daily": [], "by_prompt_variant": [], "by_model": []}
        for row in rows:
            g_day, g_variant, g_model = row.pop("g_day"), row.pop("g_variant"), row.pop("g_model")
            day: date | None = row.pop("day")
            variant, model = row.pop("prompt_variant"), row.pop("model")
            if g_day and g_variant and g_model:
                out["total"] = row
            elif not g_day:
                out["daily"].append({"date": day, **row})
            elif not g_variant and variant is not None:  # the null group is the user messages
                out["by_prompt_variant"].append({"prompt_variant": variant, **row})
            elif not g_model and model is not None:
                out["by_model"].append({"model": model, **row})
        assert out["total"] is not None  # the () grouping set yields a row even over no messages
        by_day = {r["date"]: r for r in out["daily"]}
        for h in handoffs:
            figures = {k: h[k] for k in ("handoff_count", "p50_first_reply_s", "p95_first_reply_s")}
            if h["g_day"]:
                out["total"].update(figures)
            elif h["day"] in by_day:
                by_day[h["day"]].update(figures)
        out["daily"].sort(key=lambda r: r["date"])
        out["by_prompt_variant"].sort(key=lambda r: r["prompt_variant"])
        out["by_model"].sort(key=lambda r: r["model"])
        return out
