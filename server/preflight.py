"""Start-up checks that end in one line a person can act on, naming the setting to change.

A wrong password, TLS required but off, an unreachable host, a database not migrated yet, an app role
without the privileges it needs, MIGRATE_ON_START through a transaction pooler: each is a StartupError
with one line; the CLI prints it and exits 2, without a stack trace.
"""

from __future__ import annotations

import psycopg
from psycopg.conninfo import conninfo_to_dict

from persistence.db import Pool, ServerFacts, TimedPool, probe
from persistence.migrations import load_migrations, migrate
from server.settings import Settings

TABLES = ("chat_sessions", "chat_messages", "message_feedback", "knowledge_documents", "knowledge_chunks",
          "api_keys", "api_rate_windows", "capacity_samples", "background_jobs", "checkpoints", "checkpoint_blobs",
          "checkpoint_writes")


class StartupError(RuntimeError):
    """The process cannot start as configured; the message is one line naming the setting."""


def _url_setting(settings: Settings, direct: bool) -> str:
    if direct and settings.database_direct_url is not None:
        return "DATABASE_DIRECT_URL"
    return "DATABASE_URL" if settings.database_url is not None else "DB_HOST/DB_PORT/DB_USER/DB_PASSWORD"


def describe(exc: psycopg.Error, settings: Settings, conninfo: str, *, direct: bool = False) -> StartupError:
    """A connection failure as one line: what happened, and which setting to look at."""
    where = conninfo_to_dict(conninfo)
    target = f"{where.get('host') or 'localhost'}:{where.get('port') or 5432}"
    user, url = where.get("user") or "?", _url_setting(settings, direct)
    said = " ".join(str(exc).split())
    reason = said.rsplit("FATAL:", 1)[-1].strip() if "FATAL:" in said else said
    text = said.lower()
    if "password authentication failed" in text or "sasl authentication failed" in text or (
            "password" in text and "no password supplied" in text):
        return StartupError(f"database {target} refused the password for role {user!r}: check the password "
                            f"in {url}")
    if "no encryption" in text or "ssl required" in text or ("pg_hba.conf" in text and "ssl off" in text):
        return StartupError(f"database {target} requires TLS and the connection has it off: set "
                            f"DB_SSLMODE=require (verify-full with DB_SSLROOTCERT=the CA bundle)")
    if "server does not support ssl" in text:
        return StartupError(f"database {target} does not offer TLS but DB_SSLMODE asks for it: check DB_SSLMODE "
                            f"and the server's ssl setting")
    if "certificate verify failed" in text or "root certificate file" in text or "server certificate" in text:
        return StartupError(f"the TLS certificate of database {target} could not be verified: set DB_SSLROOTCERT "
                            f"to the CA bundle that signed it (RDS: the region's bundle)")
    if "does not exist" in text and "database" in text:
        return StartupError(f"database {target}: {reason}: check the database name in {url}")
    if "does not exist" in text and "role" in text:
        return StartupError(f"database {target}: role {user!r} does not exist: check the user in {url}")
    if any(s in text for s in ("connection refused", "could not translate host", "timeout expired",
                               "name or service not known", "no route to host", "connection timed out")):
        return StartupError(f"cannot reach database {target}: check the host and port in {url} (and that the "
                            f"server or pooler is up)")
    return StartupError(f"cannot connect to database {target} as {user!r}: {reason[:200]} (check {url})")


async def probe_database(settings: Settings, conninfo: str, *, direct: bool = False) -> ServerFacts:
    try:
        return await probe(conninfo, timeout_s=settings.db_connection_timeout / 1000)
    except psycopg.Error as exc:
        raise describe(exc, settings, conninfo, direct=direct) from None


async def migrate_schema(pool: Pool) -> list[str]:
    """Apply the migrations; a role without the right to change the schema is told so in one line."""
    try:
        return await migrate(pool)
    except psycopg.errors.InsufficientPrivilege as exc:
        async with pool.connection() as conn:
            row = await (await conn.execute("select current_user as u")).fetchone()
        user = row["u"] if row else "?"
        raise StartupError(f"role {user!r} may not change the schema ({' '.join(str(exc).split())[:120]}): run "
                           f"`sixshop-agent migrate` as the migration role and start replicas with "
                           f"MIGRATE_ON_START=false") from None


def uses_pooler(settings: Settings, facts: ServerFacts) -> bool:
    return settings.database_pooler == "transaction" or (settings.database_pooler == "auto" and facts.pooled)


def check_can_migrate(settings: Settings, pooled: bool) -> None:
    if pooled and settings.auto_migrate and settings.database_direct_url is None:
        raise StartupError("MIGRATE_ON_START=true needs a session for the migration lock, and DATABASE_URL goes "
                           "through a transaction pooler: set DATABASE_DIRECT_URL to PostgreSQL itself, or run "
                           "`sixshop-agent migrate` once per deploy and set MIGRATE_ON_START=false")


async def listen_conninfo(settings: Settings, pool: TimedPool) -> str:
    """Where this process LISTENs: the pool's own server, or PostgreSQL itself (DATABASE_DIRECT_URL) when the
    pool goes through a transaction pooler, which carries no LISTEN."""
    if not pool.behind_pooler:
        assert isinstance(pool.conninfo, str)  # open_pool is given a string
        return pool.conninfo
    conninfo = settings.direct_conninfo() if settings.database_direct_url is not None else None
    if conninfo is None:
        raise StartupError("DATABASE_URL goes through a transaction pooler, which carries no LISTEN, and turns are "
                           "cancelled across replicas through one: set DATABASE_DIRECT_URL to PostgreSQL itself")
    if uses_pooler(settings, await probe_database(settings, conninfo, direct=True)):
        raise StartupError("DATABASE_DIRECT_URL goes through a transaction pooler too: point it at PostgreSQL "
                           "itself (LISTEN needs a session)")
    return conninfo


async def check_schema(pool: Pool) -> None:
    """With MIGRATE_ON_START=false: the schema must be at this release's version, and the role must be able to
    read and write every table the service uses."""
    want = max(m.version for m in load_migrations())
    async with pool.connection() as conn:
        user = str((await (await conn.execute("select current_user as u")).fetchone() or {"u": "?"})["u"])
        rows = await (await conn.execute(
            "select t as name, to_regclass(t) is not null as present, "
            "       to_regclass(t) is not null and has_table_privilege(t, 'select, insert, update, delete') as ok "
            "  from unnest(%s::text[]) as t", (["schema_migrations", *TABLES],))).fetchall()
        present = {r["name"] for r in rows if r["present"]}
        have = 0
        if "schema_migrations" in present and not [r for r in rows if r["present"] and not r["ok"]]:
            got = await (await conn.execute("select coalesce(max(version), 0) as v from schema_migrations")).fetchone()
            have = int(got["v"]) if got else 0
    if "schema_migrations" not in present:
        raise StartupError(f"the database schema is at migration 000 and this release needs {want:03d}: run "
                           f"`sixshop-agent migrate` (as the migration role) before starting with "
                           f"MIGRATE_ON_START=false")
    denied = [r["name"] for r in rows if r["present"] and not r["ok"]]
    if denied:
        raise StartupError(f"role {user!r} may not read and write {', '.join(denied)}: grant it select, insert, "
                           f"update, delete on them (docs/deploying.md, roles)")
    missing = [r["name"] for r in rows if not r["present"]]
    if have < want or missing:
        raise StartupError(f"the database schema is at migration {have:03d} and this release needs {want:03d}"
                           + (f" ({', '.join(missing)} missing)" if missing else "")
                           + ": run `sixshop-agent migrate` (as the migration role) before starting with "
                           "MIGRATE_ON_START=false")
