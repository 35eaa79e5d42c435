"""Migration runner: sql/NNN_*.sql in order, each once, recorded, under an advisory lock.

The LangGraph checkpoint tables are created by the saver's own setup() in the same step, so
`sixshop-agent migrate` leaves a database ready for the service.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psycopg import AsyncConnection

from persistence.db import Pool

log = logging.getLogger(__name__)

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
# any constant works; it only has to be the same for every process migrating this database
MIGRATION_LOCK_KEY = 0x51C5_0001
_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")

CREATE_TABLE_SQL = """
create table if not exists schema_migrations (
    version    integer primary key,
    name       text not null,
    checksum   text not null,
    applied_at timestamptz not null default now()
)
"""
TRY_LOCK_SQL = "select pg_try_advisory_lock(%s) as locked"
TRY_XACT_LOCK_SQL = "select pg_try_advisory_xact_lock(%s) as locked"
UNLOCK_SQL = "select pg_advisory_unlock(%s)"
APPLIED_SQL = "select version, checksum from schema_migrations"
RECORD_SQL = "insert into schema_migrations (version, name, checksum) values (%s, %s, %s)"


class MigrationError(RuntimeError):
    pass


@asynccontextmanager
async def advisory_lock(conn: AsyncConnection[dict[str, Any]], timeout_s: float = 300.0) -> AsyncIterator[None]:
    """Hold the migration lock on this session.

    Waiters poll with pg_try_advisory_lock instead of blocking in pg_advisory_lock: a blocked
    statement is an open transaction, and the checkpoint saver's CREATE INDEX CONCURRENTLY (run by
    the lock holder on another pooled connection) waits for every open transaction to end, so a
    blocking waiter would deadlock the two processes without PostgreSQL noticing.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        cur = await conn.execute(TRY_LOCK_SQL, (MIGRATION_LOCK_KEY,))
        row = await cur.fetchone()
        if row and row["locked"]:
            break
        if time.monotonic() > deadline:
            raise MigrationError(f"could not take the migration lock in {timeout_s:.0f} s")
        await asyncio.sleep(0.05)
    try:
        yield
    finally:
        await conn.execute(UNLOCK_SQL, (MIGRATION_LOCK_KEY,))


@asynccontextmanager
async def xact_advisory_lock(conn: AsyncConnection[dict[str, Any]], timeout_s: float = 300.0) -> AsyncIterator[None]:
    """The migration lock held by a transaction open on `conn` for the block: works through a transaction-mode
    pooler, where a session lock would stay on whichever server connection took it. Waiters poll in short
    transactions of their own (see advisory_lock). The block's own statements may go to other connections."""
    deadline = time.monotonic() + timeout_s
    while True:
        async with conn.transaction():
            row = await (await conn.execute(TRY_XACT_LOCK_SQL, (MIGRATION_LOCK_KEY,))).fetchone()
            if row and row["locked"]:
                yield
                return
        if time.monotonic() > deadline:
            raise MigrationError(f"could not take the migration lock in {timeout_s:.0f} s")
        await asyncio.sleep(0.05)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(sql_dir: Path = SQL_DIR) -> list[Migration]:
    found: list[Migration] = []
    for path in sorted(sql_dir.glob("*.sql")):
        m = _NAME.match(path.name)
        if not m:
            raise MigrationError(f"migration file name must look like 001_name.sql: {path.name}")
        found.append(Migration(int(m.group(1)), path.name, path.read_text(encoding="utf-8")))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration numbers in {sql_dir}")
    return found


async def apply_migrations(conn: AsyncConnection[dict[str, Any]], sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply pending migrations on an autocommit connection; return the names applied."""
    applied_now: list[str] = []
    async with advisory_lock(conn):
        await conn.execute(CREATE_TABLE_SQL)
        cur = await conn.execute(APPLIED_SQL)
        applied = {int(r["version"]): str(r["checksum"]) for r in await cur.fetchall()}
        for mig in load_migrations(sql_dir):
            if mig.version in applied:
                if applied[mig.version] != mig.checksum:
                    log.warning("migration %s changed after it was applied", mig.name)
                continue
            async with conn.transaction():
                await conn.execute(mig.sql.encode(), prepare=False)  # several statements: simple protocol
                await conn.execute(RECORD_SQL, (mig.version, mig.name, mig.checksum))
            applied_now.append(mig.name)
            log.info("applied migration %s", mig.name)
    return applied_now


async def migrate(pool: Pool) -> list[str]:
    """Our schema, then the LangGraph checkpoint tables (the saver records its own versions)."""
    from persistence.checkpointer import make_checkpointer

    async with pool.connection() as conn:
        applied = await apply_migrations(conn)
        # the saver's setup() is not safe against itself running twice at once: hold our lock
        async with advisory_lock(conn):
            await make_checkpointer(pool).setup()
    return applied
