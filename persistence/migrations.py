"""Migration runner: sql/NNN_*.sql in order, each once, recorded, under an advisory lock.

The LangGraph checkpoint tables are created by the saver's own setup() in the same step, so
`sixshop-agent migrate` leaves a database ready for the service.
"""

from __future__ import annotations

import hashlib
import logging
import re
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
LOCK_SQL = "select pg_advisory_lock(%s)"
UNLOCK_SQL = "select pg_advisory_unlock(%s)"
APPLIED_SQL = "select version, checksum from schema_migrations"
RECORD_SQL = "insert into schema_migrations (version, name, checksum) values (%s, %s, %s)"


class MigrationError(RuntimeError):
    pass


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
    await conn.execute(LOCK_SQL, (MIGRATION_LOCK_KEY,))
    try:
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
    finally:
        await conn.execute(UNLOCK_SQL, (MIGRATION_LOCK_KEY,))
    return applied_now


async def migrate(pool: Pool) -> list[str]:
    """Our schema, then the LangGraph checkpoint tables (the saver records its own versions)."""
    from persistence.checkpointer import make_checkpointer

    async with pool.connection() as conn:
        applied = await apply_migrations(conn)
        # the saver's setup() is not safe against itself running twice at once: hold our lock
        await conn.execute(LOCK_SQL, (MIGRATION_LOCK_KEY,))
        try:
            await make_checkpointer(pool).setup()
        finally:
            await conn.execute(UNLOCK_SQL, (MIGRATION_LOCK_KEY,))
    return applied
