"""Store webhooks (sql/013): deliveries queued by start_handoff, claimed by one replica at a time, every attempt
logged."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from uuid import UUID

from persistence.db import Pool

Row = dict[str, Any]
WEBHOOKS = "sixshop_webhooks"  # NOTIFY when a delivery is queued (start_handoff)

# due deliveries, each taken by one replica for `hold` (it is attempting it): with the store's URL and secret as
# they are now (a secret rotated while a delivery waits signs its next attempt)
CLAIM_SQL = """
update webhook_deliveries d
   set locked_until = now() + %(hold)s, attempts = d.attempts + 1
  from (select w.delivery_id from webhook_deliveries w
         where w.status = 'pending' and w.next_attempt_at <= now()
           and (w.locked_until is null or w.locked_until < now())
         order by w.next_attempt_at
         limit %(limit)s
         for update skip locked) due
 where d.delivery_id = due.delivery_id
returning d.delivery_id, d.store_id, d.event, d.payload, d.attempts, d.created_at,
          (select s.settings ->> 'webhook_url' from store_settings s where s.store_id = d.store_id) as url,
          (select s.settings ->> 'webhook_secret' from store_settings s where s.store_id = d.store_id) as secret
"""
RECORD_SQL = """
with attempt as (
    insert into webhook_attempts (delivery_id, attempt, status_code, error, duration_ms)
    values (%(delivery_id)s, %(attempt)s, %(status_code)s, %(error)s, %(duration_ms)s)
)
update webhook_deliveries d
   set status = case when %(delivered)s then 'delivered'
                     when now() + %(wait)s > d.created_at + %(retry_for)s then 'failed'
                     else 'pending' end,
       next_attempt_at = now() + %(wait)s,
       locked_until = null,
       finished_at = case when %(delivered)s or now() + %(wait)s > d.created_at + %(retry_for)s then now() end
 where d.delivery_id = %(delivery_id)s
"""
LOG_SQL = """
select d.delivery_id, d.session_id, d.event, d.status, d.attempts, d.created_at, d.next_attempt_at, d.finished_at,
       coalesce((select json_agg(json_build_object('attempt', a.attempt, 'at', a.attempted_at,
                                                   'status_code', a.status_code, 'error', a.error,
                                                   'duration_ms', a.duration_ms) order by a.attempt)
                   from webhook_attempts a where a.delivery_id = d.delivery_id), '[]') as attempt_log
  from webhook_deliveries d
 where d.store_id = %(store_id)s
 order by d.created_at desc
 limit %(limit)s
"""


class WebhookRepository:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def claim_due(self, hold: timedelta, limit: int = 10) -> list[Row]:
        async with self.pool.connection() as conn:
            return await (await conn.execute(CLAIM_SQL, {"hold": hold, "limit": limit})).fetchall()

    async def record(self, delivery_id: UUID, attempt: int, *, status_code: int | None, error: str | None,
                     duration_ms: int, delivered: bool, wait: timedelta, retry_for: timedelta) -> None:
        """Log an attempt; the delivery is delivered, or waits `wait` for the next, or (past `retry_for` since it
        was queued) failed."""
        async with self.pool.connection() as conn:
            await conn.execute(RECORD_SQL, {"delivery_id": delivery_id, "attempt": attempt,
                                            "status_code": status_code, "error": error, "duration_ms": duration_ms,
                                            "delivered": delivered, "wait": wait, "retry_for": retry_for})

    async def log(self, store_id: str, limit: int = 50) -> list[Row]:
        async with self.pool.connection() as conn:
            return await (await conn.execute(LOG_SQL, {"store_id": store_id, "limit": limit})).fetchall()
