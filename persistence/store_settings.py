"""store_settings and their change log (sql/012): read one store's, write a change in one transaction."""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from persistence.db import Pool

STORE_SETTINGS = "sixshop_store_settings"  # NOTIFY channel: {"store": id} after a change
GET_SQL = "select settings, updated_at, updated_by from store_settings where store_id = %s"
LOCK_SQL = "select settings from store_settings where store_id = %s for update"
UPSERT_SQL = """
insert into store_settings (store_id, settings, updated_at, updated_by) values (%(store)s, %(settings)s, now(), %(by)s)
on conflict (store_id) do update set settings = excluded.settings, updated_at = now(), updated_by = excluded.updated_by
"""
LOG_SQL = """
insert into store_settings_changes (store_id, changed_by, field, old_value, new_value)
values (%(store)s, %(by)s, %(field)s, %(old)s, %(new)s)
"""
CHANGES_SQL = """
select changed_at, changed_by, field, old_value, new_value from store_settings_changes
 where store_id = %s order by changed_at desc, id desc limit %s
"""
# every origin some store lets open its chat (CORS answers them on the shoppers' routes)
BROWSER_ORIGINS_SQL = """
select distinct jsonb_array_elements_text(settings -> 'allowed_origins') as origin
  from store_settings where settings ? 'allowed_origins'
"""
NOTIFY_SQL = "select pg_notify(%s, json_build_object('store', %s::text)::text)"
SECRET_FIELDS = frozenset({"webhook_secret", "identity_secret"})


class StoreSettingsRepository:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def get(self, store_id: str) -> dict[str, Any]:
        """The store's stored settings ({} for a store that never changed any: defaults apply)."""
        async with self.pool.connection() as conn:
            row = await (await conn.execute(GET_SQL, (store_id,))).fetchone()
        return dict(row["settings"]) if row else {}

    async def change(self, store_id: str, changes: dict[str, Any], by: str | None) -> dict[str, Any]:
        """Apply `changes` (None removes a field: its default applies), log each field that changed (old → new;
        secrets as set/unset only) and tell the replicas, in one transaction; returns the new settings."""
        async with self.pool.connection() as conn, conn.transaction():
            row = await (await conn.execute(LOCK_SQL, (store_id,))).fetchone()
            old: dict[str, Any] = dict(row["settings"]) if row else {}
            new = {**old, **{k: v for k, v in changes.items() if v is not None}}
            for field in [k for k, v in changes.items() if v is None]:
                new.pop(field, None)
            for field in sorted(changes):
                if old.get(field) == new.get(field):
                    continue
                before, after = old.get(field), new.get(field)
                if field in SECRET_FIELDS:
                    before, after = ("set" if before else None), ("set" if after else None)
                await conn.execute(LOG_SQL, {"store": store_id, "by": by, "field": field,
                                             "old": Jsonb(before) if before is not None else None,
                                             "new": Jsonb(after) if after is not None else None})
            await conn.execute(UPSERT_SQL, {"store": store_id, "settings": Jsonb(new), "by": by})
            await conn.execute(NOTIFY_SQL, (STORE_SETTINGS, store_id))
        return new

    async def browser_origins(self) -> set[str]:
        async with self.pool.connection() as conn:
            return {r["origin"] for r in await (await conn.execute(BROWSER_ORIGINS_SQL)).fetchall()}

    async def changes(self, store_id: str, limit: int = 50) -> list[dict[str, Any]]:
        async with self.pool.connection() as conn:
            return await (await conn.execute(CHANGES_SQL, (store_id, limit))).fetchall()
