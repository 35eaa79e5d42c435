"""What the capacity report reads: connection samples, 30-day volumes and table sizes."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from persistence.db import Pool

SAMPLE_SQL = """
insert into capacity_samples (process, connections, max_connections, pool_size, pool_in_use,
                              db_p50_ms, db_p95_ms, db_samples)
select %(process)s,
       (select count(*) from pg_stat_activity where backend_type = 'client backend'),
       current_setting('max_connections')::int,
       %(pool_size)s, %(pool_in_use)s, %(p50)s, %(p95)s, %(n)s
returning sampled_at, connections, max_connections
"""
PRUNE_SQL = "delete from capacity_samples where sampled_at < now() - %(keep)s::interval"
VOLUME_SQL = """
select (select count(*) from chat_sessions where created_at >= now() - %(window)s::interval)::bigint as sessions,
       (select count(*) from chat_messages where created_at >= now() - %(window)s::interval)::bigint as messages,
       (select count(distinct store_id) from chat_sessions
         where created_at >= now() - %(window)s::interval)::bigint as active_stores
"""
CONNECTIONS_SQL = """
select max(connections) as peak, max(max_connections) as max_connections,
       max(db_p95_ms) as db_p95_ms_peak, count(*) as samples,
       (select count(*) from pg_stat_activity where backend_type = 'client backend') as current,
       current_setting('max_connections')::int as max_connections_now
  from capacity_samples where sampled_at >= now() - %(window)s::interval
"""
RECENT_LATENCY_SQL = """
select distinct on (process) process, db_p95_ms, db_p50_ms, db_samples, sampled_at
  from capacity_samples
 where sampled_at >= now() - interval '1 hour' and db_p95_ms is not null
 order by process, sampled_at desc
"""
TABLE_SIZES_SQL = """
select t.name, pg_total_relation_size(to_regclass(t.name)) as bytes
  from unnest(%(tables)s::text[]) as t(name)
 where to_regclass(t.name) is not null
"""
TABLES = ["chat_sessions", "chat_messages", "message_feedback", "checkpoints", "checkpoint_blobs",
          "checkpoint_writes", "knowledge_documents", "knowledge_chunks", "kb_vectors", "capacity_samples"]


class CapacityRepository:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def sample(self, *, process: str, pool_size: int, pool_in_use: int, p50_ms: float | None,
                     p95_ms: float | None, samples: int, keep: timedelta = timedelta(days=90)) -> dict[str, Any]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(SAMPLE_SQL, {"process": process, "pool_size": pool_size,
                                                  "pool_in_use": pool_in_use, "p50": p50_ms, "p95": p95_ms,
                                                  "n": samples})
            row = await cur.fetchone()
            await conn.execute(PRUNE_SQL, {"keep": keep})
        assert row is not None
        return row

    async def figures(self, window: timedelta) -> dict[str, Any]:
        async with self.pool.connection() as conn:
            volume = await (await conn.execute(VOLUME_SQL, {"window": window})).fetchone()
            connections = await (await conn.execute(CONNECTIONS_SQL, {"window": window})).fetchone()
            latency = await (await conn.execute(RECENT_LATENCY_SQL)).fetchall()
            sizes = await (await conn.execute(TABLE_SIZES_SQL, {"tables": TABLES})).fetchall()
        return {"volume": volume, "connections": connections, "latency": latency,
                "sizes": {r["name"]: int(r["bytes"]) for r in sizes}}
