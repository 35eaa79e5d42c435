"""API keys: created once (the key is shown once), kept as a SHA-256 hash, revoked by id or prefix."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from typing import Any

from persistence.db import Pool

Row = dict[str, Any]
KEY_PREFIX = "sk-sixshop-"
PUBLISHABLE_PREFIX = "pk-sixshop-"  # may be public: it picks a store, and can only open a session there

INSERT_SQL = """
insert into api_keys (key_id, store_id, name, prefix, key_hash, turns_per_minute, kind)
values (%s, %s, %s, %s, %s, %s, %s)
returning key_id, store_id, name, prefix, turns_per_minute, kind, created_at
"""
# the key, if active; last_used_at refreshed at most once a minute, in the same round trip
FIND_SQL = """
with found as (
    select key_id, store_id, turns_per_minute, kind, last_used_at from api_keys
     where key_hash = %(hash)s and revoked_at is null
), touched as (
    update api_keys k set last_used_at = now()
      from found f
     where k.key_id = f.key_id and (f.last_used_at is null or f.last_used_at < now() - interval '1 minute')
)
select key_id, store_id, turns_per_minute, kind from found
"""
LIST_SQL = """
select key_id, store_id, name, prefix, turns_per_minute, kind, created_at, revoked_at, last_used_at
  from api_keys order by created_at
"""
REVOKE_SQL = """
update api_keys set revoked_at = now()
 where revoked_at is null and (key_id::text = %(ref)s or prefix = %(ref)s)
returning key_id, prefix
"""
ANY_ACTIVE_SQL = "select exists (select 1 from api_keys where revoked_at is null) as any"
# one round trip: count this turn in the current minute, forget windows older than two minutes
TAKE_TURN_SQL = """
with gone as (
    delete from api_rate_windows
     where key_id = %(key)s and window_start < date_trunc('minute', now()) - interval '1 minute'
)
insert into api_rate_windows (key_id, window_start, turns) values (%(key)s, date_trunc('minute', now()), 1)
on conflict (key_id, window_start) do update set turns = api_rate_windows.turns + 1
returning turns, extract(epoch from (date_trunc('minute', now()) + interval '1 minute' - now())) as retry_after
"""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(publishable: bool = False) -> str:
    return (PUBLISHABLE_PREFIX if publishable else KEY_PREFIX) + secrets.token_urlsafe(32)


class KeyRepository:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def create(self, *, store_id: str | None, name: str | None = None,
                     turns_per_minute: int | None = None, publishable: bool = False) -> tuple[str, Row]:
        if publishable and store_id is None:
            raise ValueError("a publishable key belongs to one store")
        key = new_key(publishable)
        async with self.pool.connection() as conn:
            cur = await conn.execute(INSERT_SQL, (uuid.uuid4(), store_id, name, key[: len(KEY_PREFIX) + 6],
                                                  hash_key(key), turns_per_minute,
                                                  "publishable" if publishable else "secret"))
            row = await cur.fetchone()
        assert row is not None
        return key, row

    async def find(self, key: str) -> Row | None:
        async with self.pool.connection() as conn:
            return await (await conn.execute(FIND_SQL, {"hash": hash_key(key)})).fetchone()

    async def all(self) -> list[Row]:
        async with self.pool.connection() as conn:
            return await (await conn.execute(LIST_SQL)).fetchall()

    async def revoke(self, ref: str) -> list[Row]:
        async with self.pool.connection() as conn:
            return await (await conn.execute(REVOKE_SQL, {"ref": ref})).fetchall()

    async def any_active(self) -> bool:
        async with self.pool.connection() as conn:
            row = await (await conn.execute(ANY_ACTIVE_SQL)).fetchone()
        return bool(row and row["any"])

    async def take_turn(self, key_id: uuid.UUID) -> tuple[int, float]:
        """Counts a turn in this minute's window: (turns so far this minute, seconds until the next)."""
        async with self.pool.connection() as conn:
            row = await (await conn.execute(TAKE_TURN_SQL, {"key": key_id})).fetchone()
        assert row is not None
        return int(row["turns"]), float(row["retry_after"])


# one round trip: count a new browser session in this hour's window of (store, client), forget windows over a day old
TAKE_SESSION_SQL = """
with gone as (
    delete from session_rate_windows
     where store_id = %(store)s and client = %(client)s and window_start < date_trunc('hour', now()) - interval '1 day'
)
insert into session_rate_windows (store_id, client, window_start, sessions)
values (%(store)s, %(client)s, date_trunc('hour', now()), 1)
on conflict (store_id, client, window_start) do update set sessions = session_rate_windows.sessions + 1
returning sessions, extract(epoch from (date_trunc('hour', now()) + interval '1 hour' - now())) as retry_after
"""
# the secret named, made once by whichever replica asks first
SERVER_SECRET_SQL = """
with made as (
    insert into server_secrets (name, value) values (%(name)s, %(value)s) on conflict (name) do nothing
    returning value
)
select value from made union all select value from server_secrets where name = %(name)s limit 1
"""


class ShopperLimits:
    """What the browser-facing doors count and keep in PostgreSQL."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def take_session(self, store_id: str, client: str) -> tuple[int, float]:
        """Counts a new session of `client` (an address) in `store_id` this hour: (sessions so far, seconds left)."""
        async with self.pool.connection() as conn:
            row = await (await conn.execute(TAKE_SESSION_SQL, {"store": store_id, "client": client})).fetchone()
        assert row is not None
        return int(row["sessions"]), float(row["retry_after"])

    async def server_secret(self, name: str) -> str:
        """A secret the service made for itself (outside production), the same on every replica and restart."""
        async with self.pool.connection() as conn:
            row = await (await conn.execute(SERVER_SECRET_SQL, {"name": name, "value": secrets.token_urlsafe(48)})
                         ).fetchone()
        assert row is not None
        return str(row["value"])
