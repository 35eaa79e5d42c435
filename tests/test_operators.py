"""Operators sign in: accounts made by the CLI (a one-time password, an argon2 hash kept), a sign-in session in
PostgreSQL behind an HttpOnly, Secure, SameSite=Strict cookie, CSRF on every cookie-authenticated write, sign-out
and expiry, failed sign-ins limited per account and per address, and an operator reaching their own stores only
(404 for any other) — against a real server process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, fetch_all
from tests.server_process import ServerProcess
from tests.test_e2e import assert_error
from tests.test_shoppers import ADMIN, _as, _key, server_env

API = "/api/session-chat"


PREPARED_DATABASE = True  # conftest.database_url: a copy of a database a keyless `serve` has prepared


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[ServerProcess]:
    with ServerProcess(server_env(database_url)) as proc:
        yield proc


def operator(database_url: str, email: str, *stores: str) -> str:
    """A new operator's one-time password, as `sixshop-agent operators create` prints it."""
    args = [a for s in stores for a in ("--store", s)]
    done = subprocess.run([sys.executable, "-m", "server.cli", "operators", "create", "--email", email, *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "DATABASE_URL": database_url})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and len(lines[0]) >= 16
    return lines[0]


class Browser:
    """What a browser does with the cookies of /admin (httpx keeps no Secure cookie over http: sent by hand)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.c = client
        self.cookies: dict[str, str] = {}

    def _headers(self, extra: dict[str, str] | None) -> dict[str, str]:
        return {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items()), **(extra or {})}

    def _keep(self, r: httpx.Response) -> httpx.Response:
        for cookie in r.headers.get_list("set-cookie"):
            name, _, rest = cookie.partition("=")
            value = rest.split(";", 1)[0]
            if value:
                self.cookies[name] = value
            else:
                self.cookies.pop(name, None)
        return r

    async def get(self, path: str, **kw: Any) -> httpx.Response:
        return self._keep(await self.c.get(path, headers=self._headers(kw.pop("headers", None)), **kw))

    async def post(self, path: str, csrf: bool = True, **kw: Any) -> httpx.Response:
        extra = kw.pop("headers", None) or {}
        if csrf and "sixshop_csrf" in self.cookies:
            extra["x-csrf-token"] = self.cookies["sixshop_csrf"]
        return self._keep(await self.c.post(path, headers=self._headers(extra), **kw))

    async def put(self, path: str, **kw: Any) -> httpx.Response:
        extra = {"x-csrf-token": self.cookies.get("sixshop_csrf", "")}
        return self._keep(await self.c.put(path, headers=self._headers(extra), **kw))


async def _handoff(c: httpx.AsyncClient, store: str, key: str) -> str:
    sid = (await c.post(f"{API}/sessions", json={"store_id": store}, headers=_as(key))).json()["session_id"]
    r = await c.post(f"{API}/sessions/{sid}/chat", json={"message": "상담원 연결해 주세요"}, headers=_as(key))
    assert r.status_code == 200, r.text
    return str(sid)


async def test_an_operator_signs_in_and_reaches_their_stores_only(server: ServerProcess, database_url: str) -> None:
    password = operator(database_url, "mina@shop-o.example", "shop-o", "shop-o2")
    rows = fetch_all(database_url, "select password_hash from operators where email = 'mina@shop-o.example'")
    assert rows[0]["password_hash"].startswith("$argon2id$") and password not in rows[0]["password_hash"]
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as c:
        key = _key(database_url, "--admin")
        mine, theirs = await _handoff(c, "shop-o", key), await _handoff(c, "shop-x", key)
        b = Browser(c)
        assert_error(await b.get("/api/admin/handoffs?store_id=shop-o"), 401, "unauthorized")
        r = await b.post("/admin/login", json={"email": "Mina@shop-o.example", "password": password})
        assert r.status_code == 200 and r.json() == {"email": "mina@shop-o.example", "stores": ["shop-o", "shop-o2"]}
        cookie = next(h for h in r.headers.get_list("set-cookie") if h.startswith("sixshop_operator="))
        flags = {f.strip().lower() for f in cookie.split(";")[1:]}
        assert {"httponly", "secure", "samesite=strict", "path=/"} <= flags, cookie
        assert fetch_all(database_url, "select count(*) as n from operator_sessions")[0]["n"] == 1

        me = await b.get("/admin/me")
        assert me.json() == {"name": "mina@shop-o.example", "stores": ["shop-o", "shop-o2"], "signed_in": True}
        assert "sixshop_csrf" in b.cookies  # a safe request hands the page its CSRF token
        waiting = (await b.get("/api/admin/handoffs?store_id=shop-o")).json()["items"]
        assert [w["session_id"] for w in waiting] == [mine]
        assert_error(await b.get("/api/admin/handoffs"), 400, "validation_error")  # two stores: name one
        assert [s["store_id"] for s in (await b.get("/api/admin/stores")).json()["items"]] == ["shop-o", "shop-o2"]
        assert (await b.get(f"/api/admin/sessions/{mine}/transcript")).status_code == 200
        assert (await b.get("/api/admin/stats?store_id=shop-o")).status_code == 200
        assert (await b.get("/api/admin/stores/shop-o/settings")).status_code == 200

        # every other store: 404, as if it did not exist
        for path in ("/api/admin/handoffs?store_id=shop-x", f"/api/admin/sessions/{theirs}/transcript",
                     "/api/admin/stats?store_id=shop-x", "/api/admin/stores/shop-x/settings",
                     "/api/admin/sessions?store_id=shop-x", "/api/admin/stores/shop-x/webhooks"):
            assert (await b.get(path)).status_code == 404, path
        assert (await b.post(f"/api/admin/sessions/{theirs}/reply", json={"content": "hi"})).status_code == 404
        assert_error(await b.get("/api/admin/capacity"), 403, "forbidden")  # the deployment's, not a store's
        # the cookie is no credential on the shoppers' or the Agent Protocol's routes
        assert_error(await b.get(f"{API}/sessions/{mine}"), 401, "unauthorized")  # keys exist: a key is needed
        assert_error(await b.get(f"/threads/{mine}"), 401, "unauthorized")

        # writes need the CSRF token
        r = await b.post(f"/api/admin/sessions/{mine}/reply", csrf=False, json={"content": "안녕하세요"})
        assert_error(r, 403, "forbidden")
        r = await b.post(f"/api/admin/sessions/{mine}/reply", csrf=False, json={"content": "안녕하세요"},
                         headers={"x-csrf-token": "forged"})
        assert_error(r, 403, "forbidden")
        assert fetch_all(database_url, "select count(*) as n from chat_messages where role = 'operator'")[0]["n"] == 0
        r = await b.post(f"/api/admin/sessions/{mine}/reply", json={"content": "안녕하세요, 미나입니다"})
        assert r.status_code == 201 and r.json()["author"] == "mina"  # shoppers see a name, not an email
        assert (await b.put("/api/admin/stores/shop-o/settings", json={"greeting": "어서 오세요"})).status_code == 200
        changes = fetch_all(database_url, "select changed_by from store_settings_changes where store_id = 'shop-o'")
        assert [r["changed_by"] for r in changes] == ["mina@shop-o.example"]
        # a bearer credential is not cookie-authenticated: no CSRF token needed (automation)
        r = await c.post(f"/api/admin/sessions/{mine}/release", headers=_as(ADMIN))
        assert r.status_code == 200

        # keys through the admin API: an operator makes publishable keys for their own stores only
        made = await b.post("/api/admin/keys", json={"store_id": "shop-o", "publishable": True, "name": "site"})
        assert made.status_code == 201 and made.json()["key"].startswith("pk-sixshop-"), made.text
        assert made.json()["kind"] == "publishable"
        assert (await b.post("/api/admin/keys", json={"store_id": "shop-x", "publishable": True})).status_code == 404
        assert_error(await b.post("/api/admin/keys", json={"store_id": "shop-o"}), 403, "forbidden")
        assert_error(await b.post("/api/admin/keys", json={"publishable": True}), 400, "validation_error")
        admin_made = await c.post("/api/admin/keys", json={}, headers=_as(ADMIN))
        assert admin_made.status_code == 201 and admin_made.json()["store_id"] is None
        stored = fetch_all(database_url, "select key_hash from api_keys where key_id = %s",
                           (made.json()["key_id"],))
        assert made.json()["key"] not in stored[0]["key_hash"]  # only its hash is kept

        # sign-out ends the session on the server; an expired one is refused the same way
        assert (await b.post("/admin/logout")).status_code == 200
        assert_error(await c.get("/admin/me", headers={"Cookie": f"sixshop_operator={cookie.split(';')[0][17:]}"}),
                     401, "unauthorized")
        # signing in again over an ended session's cookie needs no CSRF token
        stale = await c.post("/admin/login", json={"email": "mina@shop-o.example", "password": password},
                             headers={"Cookie": f"sixshop_operator={cookie.split(';')[0][17:]}"})
        assert stale.status_code == 200, stale.text
        again = Browser(c)
        await again.post("/admin/login", json={"email": "mina@shop-o.example", "password": password})
        assert (await again.get("/admin/me")).status_code == 200
        fetch_all(database_url, "update operator_sessions set expires_at = now() - interval '1 second' "
                                "returning 1")
        assert_error(await again.get("/admin/me"), 401, "unauthorized")


async def test_failed_sign_ins_are_limited_per_account_and_per_address(server: ServerProcess,
                                                                       database_url: str) -> None:
    password = operator(database_url, "jun@shop-l.example", "shop-l")
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as c:
        for _ in range(5):
            r = await c.post("/admin/login", json={"email": "jun@shop-l.example", "password": "wrong"})
            assert_error(r, 401, "unauthorized")
        r = await c.post("/admin/login", json={"email": "jun@shop-l.example", "password": password})
        assert_error(r, 429, "rate_limited")  # even the right password, until the window passes
        assert 1 <= int(r.headers["retry-after"]) <= 900
        # an address trying many accounts is stopped too (20 failures in the window, this one's 5 included)
        for i in range(15):
            await c.post("/admin/login", json={"email": f"nobody{i}@x.example", "password": "wrong"})
        other = operator(database_url, "ara@shop-l.example", "shop-l")
        r = await c.post("/admin/login", json={"email": "ara@shop-l.example", "password": other})
        assert_error(r, 429, "rate_limited")
        rows = fetch_all(database_url, "select kind, sum(failures)::int as n from sign_in_failures group by kind")
        assert {r["kind"]: r["n"] for r in rows}["address"] == 20
        assert_error(await c.post("/admin/login", json={"email": "x"}), 400, "validation_error")
