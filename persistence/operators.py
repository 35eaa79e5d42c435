"""Operators' accounts, their sign-in sessions (a token's SHA-256) and failed sign-ins (sql/015)."""

from __future__ import annotations

import hashlib
import uuid
from datetime import timedelta
from typing import Any

from persistence.db import Pool

Row = dict[str, Any]

INSERT_SQL = """
insert into operators (operator_id, email, stores, password_hash) values (%s, %s, %s, %s)
returning operator_id, email, stores, created_at
"""
BY_EMAIL_SQL = """
select operator_id, email, stores, password_hash from operators where lower(email) = lower(%s) and disabled_at is null
"""
LIST_SQL = "select operator_id, email, stores, created_at, disabled_at from operators order by created_at"
DISABLE_SQL = """
with gone as (update operators set disabled_at = now() where lower(email) = lower(%(email)s) and disabled_at is null
              returning operator_id)
delete from operator_sessions where operator_id in (select operator_id from gone)
"""
DISABLED_SQL = "select count(*) as n from operators where lower(email) = lower(%s) and disabled_at is not null"
REHASH_SQL = "update operators set password_hash = %s where operator_id = %s"
SESSION_INSERT_SQL = """
insert into operator_sessions (token_hash, operator_id, expires_at) values (%s, %s, now() + %s)
"""
# the session's operator, if it is current; expired sessions go on the way
SESSION_SQL = """
with gone as (delete from operator_sessions where expires_at < now() - interval '1 day')
select o.operator_id, o.email, o.stores from operator_sessions s join operators o using (operator_id)
 where s.token_hash = %s and s.expires_at > now() and o.disabled_at is null
"""
SESSION_DELETE_SQL = "delete from operator_sessions where token_hash = %s"
# one round trip: a failure counted in this window, windows older than a day forgotten
FAILURE_SQL = """
with gone as (delete from sign_in_failures where kind = %(kind)s and key = %(key)s
                and window_start < now() - interval '1 day')
insert into sign_in_failures (kind, key, window_start, failures) values (%(kind)s, %(key)s, %(window)s, 1)
on conflict (kind, key, window_start) do update set failures = sign_in_failures.failures + 1
returning failures
"""
FAILURES_SQL = """
select kind, failures, extract(epoch from (window_start + %(length)s - now())) as retry_after
  from sign_in_failures
 where window_start = %(window)s
   and ((kind = 'account' and key = %(account)s) or (kind = 'address' and key = %(address)s))
"""
WINDOW_SQL = "select to_timestamp(floor(extract(epoch from now()) / %s) * %s) as window"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class OperatorRepository:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def create(self, email: str, stores: list[str], password_hash: str) -> Row:
        async with self.pool.connection() as conn:
            row = await (await conn.execute(INSERT_SQL, (uuid.uuid4(), email, stores, password_hash))).fetchone()
        assert row is not None
        return row

    async def by_email(self, email: str) -> Row | None:
        async with self.pool.connection() as conn:
            return await (await conn.execute(BY_EMAIL_SQL, (email,))).fetchone()

    async def all(self) -> list[Row]:
        async with self.pool.connection() as conn:
            return await (await conn.execute(LIST_SQL)).fetchall()

    async def disable(self, email: str) -> bool:
        """The account disabled and its sessions ended; False when no active account has that email."""
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(DISABLE_SQL, {"email": email})
            row = await (await conn.execute(DISABLED_SQL, (email,))).fetchone()
        return bool(row and row["n"])

    async def rehash(self, operator_id: uuid.UUID, password_hash: str) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(REHASH_SQL, (password_hash, operator_id))

    async def open_session(self, operator_id: uuid.UUID, token: str, lifetime: timedelta) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(SESSION_INSERT_SQL, (token_hash(token), operator_id, lifetime))

    async def session(self, token: str) -> Row | None:
        async with self.pool.connection() as conn:
            return await (await conn.execute(SESSION_SQL, (token_hash(token),))).fetchone()

    async def close_session(self, token: str) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(SESSION_DELETE_SQL, (token_hash(token),))

    async def _window(self, conn: Any, length: timedelta) -> Any:
        seconds = length.total_seconds()
        row = await (await conn.execute(WINDOW_SQL, (seconds, seconds))).fetchone()
        return row["window"]

    async def failures(self, account: str, address: str, length: timedelta) -> dict[str, tuple[int, float]]:
        """This window's failed sign-ins of the account and of the address: kind -> (failures, seconds left)."""
        async with self.pool.connection() as conn:
            window = await self._window(conn, length)
            rows = await (await conn.execute(FAILURES_SQL, {"window": window, "length": length, "account": account,
                                                            "address": address})).fetchall()
        return {r["kind"]: (int(r["failures"]), float(r["retry_after"])) for r in rows}

    async def fail(self, account: str, address: str, length: timedelta) -> None:
        async with self.pool.connection() as conn:
            window = await self._window(conn, length)
            for kind, key in (("account", account), ("address", address)):
                await conn.execute(FAILURE_SQL, {"kind": kind, "key": key, "window": window})
