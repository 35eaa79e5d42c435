"""Fixtures: one embedded PostgreSQL per test run, a fresh database per test module."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from persistence.db import Pool, PoolConfig, open_pool
from persistence.migrations import migrate
from tests.fake_openai import FakeOpenAIServer

ROOT = Path(__file__).resolve().parent.parent

# no test may reach a real service or pick up a developer's keys
for _var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "LANGSMITH_API_KEY", "PINECONE_API_KEY", "NOTION_INTEGRATION_TOKEN"):
    os.environ.pop(_var, None)
os.environ["LANGSMITH_TRACING"] = "false"
# the tracing tests leave a LangSmith client retrying against a stopped server; its warnings after
# the last test would go to stderr through logging's last resort (tests still see them via caplog)
logging.getLogger("langsmith").addHandler(logging.NullHandler())
os.environ["APP_ENV"] = "test"

# screenshots of the browser tests: a temporary folder, or docs/screenshots/ with UPDATE_SCREENSHOTS=1 (a test run
# does not rewrite tracked files)
SHOTS = ROOT / "docs" / "screenshots" if os.environ.get("UPDATE_SCREENSHOTS") == "1" else \
    Path(tempfile.mkdtemp(prefix="sixshop-screenshots-"))


def chromium_path() -> str:
    """Debian's chromium (Playwright drives it through executable_path; nothing is downloaded), or skip."""
    found = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("Chromium is not installed: .ci/run installs Debian's chromium before the tests")
    pytest.skip("no chromium on this machine (apt-get install chromium fonts-noto-cjk)")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    path = chromium_path()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="session")
def pg_server_conninfo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """TEST_DATABASE_URL if the environment gives one; a throwaway server from the binaries in TEST_PG_BIN (the
    PostgreSQL 15 leg: Debian's /usr/lib/postgresql/15/bin); else a throwaway embedded PostgreSQL."""
    given = os.environ.get("TEST_DATABASE_URL")
    if given:
        yield given
        return
    if os.environ.get("TEST_PG_BIN"):
        from tests.cluster import TlsPostgres

        server = TlsPostgres(tmp_path_factory.mktemp("pg"), Path(os.environ["TEST_PG_BIN"]))
        server.start()
        try:
            yield server.admin_conninfo("postgres")
        finally:
            server.stop("immediate")
        return
    from persistence.embedded import embedded_conninfo, start_embedded

    data_dir = Path(tempfile.mkdtemp(prefix="sixshop-test-pg-")) / "data"
    server = start_embedded(data_dir, delete_on_exit=True)
    try:
        yield embedded_conninfo(server)
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def server_version(pg_server_conninfo: str) -> str:
    with psycopg.connect(pg_server_conninfo, autocommit=True) as conn:
        row = conn.execute("show server_version").fetchone()
    return str(row[0]) if row else "?"


@pytest.fixture(scope="session")
def has_pgvector(pg_server_conninfo: str) -> bool:
    with psycopg.connect(pg_server_conninfo, autocommit=True) as conn:
        return conn.execute("select 1 from pg_available_extensions where name = 'vector'").fetchone() is not None


@pytest.fixture(scope="session")
def pgvector(has_pgvector: bool, server_version: str) -> None:
    """Skips the test where the server has no pgvector (Debian packages none for PostgreSQL 15)."""
    if not has_pgvector:
        pytest.skip(f"no pgvector on this PostgreSQL ({server_version}): vector tests skipped")


def _with_dbname(conninfo: str, dbname: str) -> str:
    return psycopg.conninfo.make_conninfo(conninfo, dbname=dbname)


def create_database(server_conninfo: str, prefix: str, template: str | None = None) -> str:
    name = f"{re.sub(r'[^a-z0-9_]', '_', prefix.lower())[:40]}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_conninfo, autocommit=True) as conn:
        conn.execute(f'create database "{name}"' + (f' template "{template}"' if template else ""))
    return _with_dbname(server_conninfo, name)


@pytest.fixture(scope="module")
def fake_openai() -> Iterator[FakeOpenAIServer]:
    """The local OpenAI-compatible server (tests/fake_openai.py), one per module."""
    with FakeOpenAIServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def database_url(pg_server_conninfo: str, request: pytest.FixtureRequest) -> str:
    """A fresh database for this test module: empty, or, in a module that says `PREPARED_DATABASE = True`, already
    holding what a keyless `serve` makes at its first start, copied from `prepared_template` (CREATE DATABASE …
    TEMPLATE: ~0.1 s, where migrating and embedding the sample help centre at a server's start takes ~6 s). That is
    for modules whose servers run with no model key and whose tests are not about that first start."""
    prefix = request.module.__name__.rsplit(".", 1)[-1]
    if getattr(request.module, "PREPARED_DATABASE", False):
        return create_database(pg_server_conninfo, prefix, template=request.getfixturevalue("prepared_template"))
    return create_database(pg_server_conninfo, prefix)


@pytest.fixture(scope="session")
def prepared_template(pg_server_conninfo: str) -> str:
    """A database prepared once as `serve` prepares an empty one with no key (`sixshop-agent prepare`: migrations,
    then the sample help centre indexed with the local embedding model): the template `database_url` copies where a
    module asks for it."""
    url = create_database(pg_server_conninfo, "prepared_template")
    done = subprocess.run([sys.executable, "-m", "server.cli", "prepare"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "DATABASE_URL": url, "CAPACITY_SAMPLE_SECONDS": "0"})
    assert done.returncode == 0, done.stdout + done.stderr
    return str(psycopg.conninfo.conninfo_to_dict(url)["dbname"])


@pytest.fixture(scope="module")
async def pool(database_url: str) -> AsyncIterator[Pool]:
    """A pool on this module's database with the schema applied."""
    p = await open_pool(PoolConfig(conninfo=database_url, min_size=1, max_size=10))
    await migrate(p)
    try:
        yield p
    finally:
        await p.close()


def fetch_all(conninfo: str, sql: str, params: Any = None) -> list[dict[str, Any]]:
    from psycopg.rows import dict_row

    with psycopg.connect(conninfo, autocommit=True, row_factory=dict_row) as conn:
        return conn.execute(sql, params).fetchall()


def execute(conninfo: str, sql: str, params: Any = None) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql, params)


@pytest.fixture(scope="module")
def migrated_url(database_url: str, pool: Pool) -> str:
    """This module's database URL, once the schema is applied (for sync clients)."""
    return database_url
