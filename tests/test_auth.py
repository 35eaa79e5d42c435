"""API keys, store isolation over every endpoint, per-key rate limits, revocation, production auth."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, fetch_all
from tests.server_process import ServerProcess
from tests.test_e2e import stream_turn

API = "/api/session-chat"


PREPARED_DATABASE = True  # conftest.database_url: a copy of a database a keyless `serve` has prepared


def _cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "server.cli", "keys", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "DATABASE_URL": database_url})


def _new_key(database_url: str, *args: str) -> str:
    out = _cli(database_url, "create", *args)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sk-sixshop-")  # the key alone, on its own line
    return lines[0]


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[ServerProcess]:
    env = {"DATABASE_URL": database_url, "KEYS_CACHE_SECONDS": "0", "CAPACITY_SAMPLE_SECONDS": "0"}
    with ServerProcess(env) as proc:
        yield proc


def _h(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_keys_isolation_and_limits(server: ServerProcess, database_url: str) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as c:
        # development, no key yet: open
        assert (await c.post(f"{API}/sessions", json={"store_id": "store-a"})).status_code == 201

        key_a = _new_key(database_url, "--store", "store-a", "--name", "shop A")
        key_b = _new_key(database_url, "--store", "store-b")
        admin = _new_key(database_url, "--admin")
        slow = _new_key(database_url, "--store", "store-a", "--turns-per-minute", "2")

        # from now on a key is required, and only a valid one
        missing = await c.get(f"{API}/sessions")
        assert (missing.status_code, missing.json()["code"]) == (401, "unauthorized")
        assert missing.headers["www-authenticate"].startswith("Bearer")
        bogus = await c.get(f"{API}/sessions", headers=_h("sk-sixshop-not-a-real-key"))
        assert bogus.status_code == 401

        a = (await c.post(f"{API}/sessions", json={"store_id": "store-a"}, headers=_h(key_a))).json()
        b = (await c.post(f"{API}/sessions", json={"store_id": "store-b"}, headers=_h(key_b))).json()
        wrong_store = await c.post(f"{API}/sessions", json={"store_id": "store-b"}, headers=_h(key_a))
        assert (wrong_store.status_code, wrong_store.json()["code"]) == (403, "forbidden")
        events = await _stream(c, b["session_id"], key_b)
        b_message = events[-1][2]["message"]["message_id"]

        # store A's key on every endpoint that can reach store B's data: 404, as for what does not exist
        sid, ghost = b["session_id"], "00000000-0000-4000-8000-000000000000"
        calls: list[tuple[str, str, dict[str, Any] | None, str]] = [
            ("GET", f"{API}/sessions/{{}}", None, "session_not_found"),
            ("GET", f"{API}/sessions/{{}}/messages", None, "session_not_found"),
            ("POST", f"{API}/sessions/{{}}/chat", {"message": "hi"}, "session_not_found"),
            ("POST", f"{API}/sessions/{{}}/chat/stream", {"message": "hi"}, "session_not_found"),
            ("GET", f"{API}/sessions/{{}}/stats", None, "session_not_found"),
            ("DELETE", f"{API}/sessions/{{}}", None, "session_not_found"),
        ]
        for method, path, body, code in calls:
            theirs = await c.request(method, path.format(sid), json=body, headers=_h(key_a))
            nobody = await c.request(method, path.format(ghost), json=body, headers=_h(key_a))
            assert (theirs.status_code, theirs.json()["code"]) == (404, code), (method, path)
            assert (nobody.status_code, nobody.json()["code"]) == (404, code), (method, path)
        fb = await c.post(f"{API}/messages/{b_message}/feedback", json={"score": 1}, headers=_h(key_a))
        assert (fb.status_code, fb.json()["code"]) == (404, "message_not_found")
        stats = await c.get(f"{API}/stats", params={"store_id": "store-b"}, headers=_h(key_a))
        assert stats.status_code == 404
        listing = await c.get(f"{API}/sessions", params={"store_id": "store-b"}, headers=_h(key_a))
        assert listing.status_code == 404
        own = (await c.get(f"{API}/sessions", headers=_h(key_a))).json()["items"]
        assert own and {s["store_id"] for s in own} == {"store-a"} and a["session_id"] in {s["session_id"] for s in own}
        # B's data is untouched, and B (and the admin key) still see it
        assert (await c.get(f"{API}/sessions/{sid}", headers=_h(key_b))).status_code == 200
        assert (await c.get(f"{API}/sessions/{sid}/messages", headers=_h(admin))).json()["items"]
        assert (await c.post(f"{API}/messages/{b_message}/feedback", json={"score": 1},
                             headers=_h(key_b))).status_code == 201
        assert (await c.get(f"{API}/stats", params={"store_id": "store-b"}, headers=_h(key_b))).json()[
            "message_count"] == 2

        # per-key turn rate limit
        s = (await c.post(f"{API}/sessions", json={"store_id": "store-a"}, headers=_h(slow))).json()
        for _ in range(2):
            assert (await c.post(f"{API}/sessions/{s['session_id']}/chat", json={"message": "hi"},
                                 headers=_h(slow))).status_code == 200
        limited = await c.post(f"{API}/sessions/{s['session_id']}/chat", json={"message": "hi"}, headers=_h(slow))
        assert (limited.status_code, limited.json()["code"]) == (429, "rate_limited")
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert (await c.post(f"{API}/sessions/{s['session_id']}/chat", json={"message": "hi"},
                             headers=_h(key_a))).status_code == 200  # another key's budget is its own

        # revocation
        prefix = key_b[: len("sk-sixshop-") + 6]
        listed = _cli(database_url, "list")
        assert prefix in listed.stdout and key_b not in listed.stdout
        assert _cli(database_url, "revoke", prefix).returncode == 0
        assert (await c.get(f"{API}/sessions/{sid}", headers=_h(key_b))).status_code == 401

    stored = fetch_all(database_url, "select key_hash, prefix from api_keys")
    assert {r["key_hash"] for r in stored} >= {hashlib.sha256(k.encode()).hexdigest() for k in (key_a, key_b)}
    assert not any(k in str(stored) for k in (key_a, key_b, admin))  # never the key itself
    assert not any(k in server.output() for k in (key_a, key_b, admin))


async def _stream(c: httpx.AsyncClient, session_id: str, key: str) -> list[tuple[str, str, Any]]:
    c.headers.update(_h(key))
    try:
        return await stream_turn(c, session_id, "How much is shipping?")
    finally:
        del c.headers["Authorization"]


def test_keys_cli_needs_a_scope(database_url: str) -> None:
    out = _cli(database_url, "create")
    assert out.returncode == 2 and "--store" in out.stderr
    assert _cli(database_url, "revoke", "no-such-key").returncode == 2


async def test_production_requires_a_key(database_url: str) -> None:
    from litestar.testing import AsyncTestClient

    from server.http.app import create_app
    from server.settings import Settings

    app = create_app(Settings(app_env="production", database_url=database_url,  # type: ignore[arg-type]
                              capacity_sample_seconds=0, session_cleanup_interval_minutes=0,
                              session_token_secret="production-session-token-secret-0123456789"))  # type: ignore[arg-type]
    async with AsyncTestClient(app) as client:
        r = await client.post(f"{API}/sessions", json={"store_id": "store-a"})
        assert (r.status_code, r.json()["code"]) == (401, "unauthorized")
        assert (await client.get("/health")).status_code == 200  # operations stay open


async def test_cli_and_serve_share_the_embedded_database(tmp_path: Any) -> None:
    env = {"EMBEDDED_PG_DIR": str(tmp_path / "pg"), "KEYS_CACHE_SECONDS": "0", "CAPACITY_SAMPLE_SECONDS": "0",
           "DATABASE_URL": ""}
    proc = ServerProcess(env)
    try:
        proc.wait_ready()
        async with httpx.AsyncClient(base_url=proc.base_url, timeout=30) as c:
            assert (await c.get(f"{API}/sessions")).status_code == 200  # no key yet
            out = await asyncio.to_thread(
                subprocess.run, [sys.executable, "-m", "server.cli", "keys", "create", "--store", "s1"], cwd=ROOT,
                capture_output=True, text=True, timeout=120, env={**os.environ, **env})
            assert out.returncode == 0, out.stderr
            key = out.stdout.strip()
            assert (await c.get(f"{API}/sessions")).status_code == 401  # the server saw the new key
            assert (await c.get(f"{API}/sessions", headers=_h(key))).status_code == 200
    finally:
        proc.stop()
