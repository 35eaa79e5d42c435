"""The capacity report: figures, thresholds, the admin endpoint and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from persistence.capacity import CapacityRepository
from persistence.db import Pool
from server.services.capacity import CapacityService, Limits, status_of
from tests.conftest import ROOT, execute, fetch_all
from tests.server_process import ServerProcess
from tests.stats_data import generate


@pytest.fixture(scope="module")
def history(migrated_url: str) -> int:
    """30 sessions in the last 30 days (3 stores), and 20 older ones that must not count."""
    now = datetime.now(UTC)
    generate(migrated_url, stores=("s1", "s2", "s3"), sessions_per_store=10, turns_per_session=2,
             start=now - timedelta(days=25), days=20, seed=3)
    generate(migrated_url, stores=("old",), sessions_per_store=20, turns_per_session=2,
             start=now - timedelta(days=80), days=30, seed=4)
    return 30


def test_thresholds_status() -> None:
    assert [status_of(v, 100) for v in (None, 10, 79, 80, 99, 100, 250)] == [
        "unknown", "ok", "ok", "near", "near", "crossed", "crossed"]


async def test_report_figures_and_thresholds(pool: Pool, history: int) -> None:
    service = CapacityService(CapacityRepository(pool), pool, Limits(connections=3, sessions_per_month=36))
    for _ in range(20):
        async with pool.connection() as conn:
            await conn.execute("select 1")
    sample = await service.sample()
    assert sample["connections"] >= 1 and sample["max_connections"] >= 10
    report = await service.report()
    assert report["sessions"] == history and report["messages"] == history * 4 and report["active_stores"] == 3
    assert report["connections"]["peak"] >= 1 and report["connections"]["samples"] >= 1
    assert report["table_bytes"]["chat_messages"] > 0 and report["checkpoint_bytes"] >= 0
    assert {"checkpoints", "checkpoint_blobs", "checkpoint_writes", "chat_sessions"} <= set(report["table_bytes"])
    lat = report["db_latency_ms"]
    assert lat["samples_this_process"] >= 20 and lat["p95_this_process"] > 0
    assert lat["recent_by_process"] and lat["recent_by_process"][0]["p95_ms"] > 0
    by_name = {t["name"]: t for t in report["thresholds"]}
    assert by_name["sessions_per_month"]["status"] == "near"  # 30 of 36 (>= 80 %)
    assert by_name["cpu"]["status"] == "unknown"
    peak = report["connections"]["peak"]
    assert by_name["connections"]["status"] == status_of(peak, 3)
    assert "sessions_per_month" in report["attention"]
    crossed = await CapacityService(CapacityRepository(pool), pool, Limits(connections=1000, sessions_per_month=30)
                                    ).report()
    assert {t["name"]: t["status"] for t in crossed["thresholds"]}["sessions_per_month"] == "crossed"


async def test_old_samples_are_pruned(pool: Pool, migrated_url: str) -> None:
    execute(migrated_url, "insert into capacity_samples (sampled_at, process, connections, max_connections, pool_size,"
                          " pool_in_use) values (now() - interval '100 days', 'gone:1', 99, 100, 1, 1)")
    await CapacityService(CapacityRepository(pool), pool, Limits()).sample()
    assert fetch_all(migrated_url, "select count(*) as n from capacity_samples where process = 'gone:1'") == [{"n": 0}]


@pytest.fixture(scope="module")
def server(database_url: str, history: int) -> Iterator[ServerProcess]:
    with ServerProcess({"DATABASE_URL": database_url, "ADMIN_TOKEN": "admin-secret-1",
                          "CAPACITY_SAMPLE_SECONDS": "0.2"}) as proc:
        yield proc


async def test_admin_endpoint(server: ServerProcess, history: int) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as c:
        missing = await c.get("/api/admin/capacity")
        wrong = await c.get("/api/admin/capacity", headers={"Authorization": "Bearer nope"})
        ok = await c.get("/api/admin/capacity", headers={"Authorization": "Bearer admin-secret-1"})
    assert (missing.status_code, missing.json()["code"]) == (401, "unauthorized")
    assert (wrong.status_code, wrong.json()["code"]) == (401, "unauthorized")
    assert ok.status_code == 200
    body = ok.json()
    assert body["sessions"] == history and body["connections"]["samples"] >= 1  # the server's sampler ran
    assert "admin-secret-1" not in server.output()


def test_cli_capacity(database_url: str, history: int) -> None:
    env = {**os.environ, "DATABASE_URL": database_url}
    text = subprocess.run([sys.executable, "-m", "server.cli", "capacity"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert text.returncode == 0, text.stderr
    assert f"sessions {history:,}" in text.stdout and "sessions_per_month" in text.stdout
    assert "[unknown] cpu" in text.stdout
    as_json = subprocess.run([sys.executable, "-m", "server.cli", "capacity", "--json"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
    report = json.loads(as_json.stdout)
    assert report["sessions"] == history and report["window_days"] == 30


async def test_admin_needs_credentials_in_production(database_url: str) -> None:
    from litestar.testing import AsyncTestClient

    from server.http.app import create_app
    from server.settings import Settings

    app = create_app(Settings(app_env="production", database_url=database_url,  # type: ignore[arg-type]
                              capacity_sample_seconds=0,
                              session_token_secret="production-session-token-secret-0123456789"))  # type: ignore[arg-type]
    async with AsyncTestClient(app) as client:
        r = await client.get("/api/admin/capacity")
    assert (r.status_code, r.json()["code"]) == (401, "unauthorized")  # production: a key or the token
