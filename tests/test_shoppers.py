"""Shoppers in the browser (API.md): publishable keys that only pick a store from its allowed origins, session
tokens that reach exactly their own session (404 for any other, on the REST and Agent Protocol doors), verified
shoppers vouched for by a store's backend, new chats limited per address — against a real server process, with the
tokens' claims, expiry, rotation and constant-time comparison checked as units."""

from __future__ import annotations

import hmac
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.errors import InvalidIdentity, InvalidToken, TokenExpired
from server.services.stores import validate
from server.services.tokens import SessionTokens, kid_of, parse_secrets, verify_identity
from tests.conftest import ROOT, fetch_all
from tests.server_process import ServerProcess
from tests.test_e2e import assert_error

API = "/api/session-chat"
SECRET = "shoppers-session-token-secret-0123456789abcdef"
ADMIN = "shoppers-admin-token-0123456789"
SHOP_A, SHOP_B = "https://shop-a.example", "https://shop-b.example"
IDENTITY_K1, IDENTITY_K2 = "identity-secret-one-0123456789abcdef", "identity-secret-two-0123456789abcdef"


# -- units -------------------------------------------------------------------------------------------------------

PREPARED_DATABASE = True  # conftest.database_url: a copy of a database a keyless `serve` has prepared


def test_session_token_claims_expiry_and_forgery() -> None:
    tokens = SessionTokens(parse_secrets(f"k2:{SECRET}"), issuer="sixshop-ai-agent", ttl_s=3600)
    sid = uuid.uuid4()
    token = tokens.issue("store-a", sid)
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "kid": "k2", "typ": "JWT"}
    raw = jwt.decode(token, options={"verify_signature": False})
    assert set(raw) == {"iss", "aud", "sub", "kind", "iat", "exp", "jti"}
    assert (raw["iss"], raw["aud"], raw["sub"], raw["kind"]) == ("sixshop-ai-agent", "store-a", str(sid), "anonymous")
    assert raw["exp"] - raw["iat"] == 3600
    claims = tokens.verify(token)
    assert (claims.store_id, claims.session_id, claims.kind, claims.user_id) == ("store-a", sid, "anonymous", None)
    verified = tokens.verify(tokens.issue("store-a", sid, "user-7"))
    assert (verified.kind, verified.user_id) == ("verified", "user-7")
    assert tokens.issue("store-a", sid) != token  # a new jti each time

    expired = SessionTokens(parse_secrets(f"k2:{SECRET}"), issuer="sixshop-ai-agent", ttl_s=-10).issue("store-a", sid)
    with pytest.raises(TokenExpired):
        tokens.verify(expired)
    forged = jwt.encode({**raw, "aud": "store-b"}, "another-secret-that-is-long-enough-000", algorithm="HS256",
                        headers={"kid": "k2"})
    unsigned = token.rsplit(".", 1)[0] + "."  # the signature dropped
    other_issuer = jwt.encode({**raw, "iss": "someone-else"}, SECRET, algorithm="HS256", headers={"kid": "k2"})
    made_up_kind = jwt.encode({**raw, "kind": "verified"}, SECRET, algorithm="HS256", headers={"kid": "k2"})
    for bad in (forged, unsigned, other_issuer, made_up_kind, token[:-4] + "AAAA", "eyJ.x.y"):
        with pytest.raises(InvalidToken):
            tokens.verify(bad)


def test_rotation_accepts_an_old_kid_until_it_is_removed() -> None:
    old = SessionTokens(parse_secrets(f"k1:{SECRET}"), issuer="sixshop-ai-agent", ttl_s=60)
    token = old.issue("store-a", uuid.uuid4())
    rotated = SessionTokens(parse_secrets(f"k2:{SECRET[::-1]},k1:{SECRET}"), issuer="sixshop-ai-agent", ttl_s=60)
    assert rotated.verify(token).store_id == "store-a"  # the old kid still verifies
    assert jwt.get_unverified_header(rotated.issue("store-a", uuid.uuid4()))["kid"] == "k2"  # the new one signs
    removed = SessionTokens(parse_secrets(f"k2:{SECRET[::-1]}"), issuer="sixshop-ai-agent", ttl_s=60)
    with pytest.raises(InvalidToken):
        removed.verify(token)
    assert parse_secrets(SECRET) == [(kid_of(SECRET), SECRET)]  # a bare secret gets a kid that says nothing of it
    with pytest.raises(ValueError, match="shorter than 32"):
        parse_secrets("k1:short")


def _identity(sub: str, secret: str, kid: str | None = None, life_s: int = 300, **extra: Any) -> str:
    now = int(time.time())
    return jwt.encode({"sub": sub, "iat": now, "exp": now + life_s, **extra}, secret, algorithm="HS256",
                      headers={"kid": kid} if kid else None)


def test_identity_tokens() -> None:
    secrets = {"k1": IDENTITY_K1, "k2": IDENTITY_K2}
    assert verify_identity(_identity("user-1", IDENTITY_K1, "k1"), secrets) == "user-1"
    assert verify_identity(_identity("user-1", IDENTITY_K2, "k2"), secrets) == "user-1"
    assert verify_identity(_identity("user-1", IDENTITY_K1), {"default": IDENTITY_K1}) == "user-1"  # one, no kid
    now = int(time.time())
    bad = [
        _identity("user-1", IDENTITY_K2, "k1"),  # signed with another kid's secret
        _identity("user-1", IDENTITY_K1, "k9"),  # a kid the store does not hold
        _identity("user-1", IDENTITY_K1),  # no kid, two secrets
        _identity("user-1", IDENTITY_K1, "k1", life_s=601),  # longer than 10 minutes
        jwt.encode({"sub": "user-1", "iat": now - 900, "exp": now - 300}, IDENTITY_K1, algorithm="HS256",
                   headers={"kid": "k1"}),  # expired
        jwt.encode({"sub": "user-1", "exp": now + 60}, IDENTITY_K1, algorithm="HS256", headers={"kid": "k1"}),  # iat
        jwt.encode({"sub": "user-1", "iat": now, "exp": now + 60}, IDENTITY_K1 * 2, algorithm="HS512",
                   headers={"kid": "k1"}),  # another algorithm
        jwt.encode({"sub": "user-1", "iat": now, "exp": now + 60}, None, algorithm="none", headers={"kid": "k1"}),
        "not-a-jwt",
    ]
    for token in bad:
        with pytest.raises(InvalidIdentity):
            verify_identity(token, secrets)
    with pytest.raises(InvalidIdentity, match="no identity_secret"):
        verify_identity(_identity("user-1", IDENTITY_K1, "k1"), {})


def test_signatures_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both checks reach hmac.compare_digest (through PyJWT's HMAC verify), never ==."""
    import jwt.algorithms

    calls: list[int] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(jwt.algorithms.hmac, "compare_digest", spy)
    tokens = SessionTokens(parse_secrets(f"k1:{SECRET}"), issuer="sixshop-ai-agent", ttl_s=60)
    tokens.verify(tokens.issue("store-a", uuid.uuid4()))
    assert len(calls) == 1
    verify_identity(_identity("user-1", IDENTITY_K1, "k1"), {"k1": IDENTITY_K1})
    assert len(calls) == 2


def test_production_needs_a_session_token_secret() -> None:
    from server.preflight import StartupError
    from server.resources import session_token_secrets
    from server.settings import Settings

    with pytest.raises(StartupError, match="SESSION_TOKEN_SECRET is required in production"):
        session_token_secrets(Settings(app_env="production"))
    with pytest.raises(StartupError, match="shorter than 32"):
        session_token_secrets(Settings(app_env="production", session_token_secret="k1:short"))  # type: ignore[arg-type]
    assert session_token_secrets(Settings(app_env="development")) is None  # made and kept in the database
    assert session_token_secrets(Settings(session_token_secret=f"new:{SECRET[::-1]},old:{SECRET}")  # type: ignore
                                 ) == [("new", SECRET[::-1]), ("old", SECRET)]


def test_store_settings_for_the_browser() -> None:
    got = validate({"allowed_origins": ["https://Shop-A.example", "http://127.0.0.1:8080", "https://shop-a.example"],
                    "identity_secret": IDENTITY_K1})
    assert got == {"allowed_origins": ["http://127.0.0.1:8080", "https://shop-a.example"],
                   "identity_secret": {"default": IDENTITY_K1}}
    for bad in ({"allowed_origins": ["https://shop.example/path"]}, {"allowed_origins": ["shop.example"]},
                {"allowed_origins": "https://shop.example"}, {"allowed_origins": ["ftp://shop.example"]},
                {"identity_secret": "short"}, {"identity_secret": {"bad kid!": IDENTITY_K1}}):
        with pytest.raises(Exception) as refused:
            validate(bad)
        assert getattr(refused.value, "code", None) == "validation_error", bad


# -- a real server ----------------------------------------------------------------------------------------------

def server_env(database_url: str, **more: str) -> dict[str, str]:
    """A server for the browser credentials' tests: keys looked up at once, the admin token and the token secret."""
    return {"DATABASE_URL": database_url, "KEYS_CACHE_SECONDS": "0", "CAPACITY_SAMPLE_SECONDS": "0",
            "ADMIN_TOKEN": ADMIN, "SESSION_TOKEN_SECRET": f"k1:{SECRET}", **more}


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[ServerProcess]:
    with ServerProcess(server_env(database_url, SESSIONS_PER_IP_PER_HOUR="12")) as proc:
        yield proc


def _key(database_url: str, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "server.cli", "keys", "create", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "DATABASE_URL": database_url})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _as(credential: str, origin: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}", **({"Origin": origin} if origin else {})}


async def _settings(c: httpx.AsyncClient, store: str, **values: Any) -> None:
    r = await c.put(f"/api/admin/stores/{store}/settings", json=values, headers=_as(ADMIN))
    assert r.status_code == 200, r.text


async def _open(c: httpx.AsyncClient, pk: str, store: str = "store-a", origin: str = SHOP_A,
                **body: Any) -> dict[str, Any]:
    r = await c.post(f"{API}/sessions", json={"store_id": store, **body}, headers=_as(pk, origin))
    assert r.status_code == 201, r.text
    return dict(r.json())


async def _turn(c: httpx.AsyncClient, token: str, session_id: str) -> str:
    r = await c.post(f"{API}/sessions/{session_id}/chat", json={"message": "배송비는 얼마인가요?"},
                     headers=_as(token, SHOP_A))
    assert r.status_code == 200, r.text
    return str(r.json()["message"]["message_id"])


async def test_publishable_keys_and_session_tokens(server: ServerProcess, database_url: str) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as c:
        await _settings(c, "store-a", allowed_origins=[SHOP_A], display_name="가게 A", greeting="안녕하세요")
        pk = _key(database_url, "--store", "store-a", "--publishable")
        assert pk.startswith("pk-sixshop-")
        store_b_key = _key(database_url, "--store", "store-b")

        # the widget's configuration: from the allowed origin only
        r = await c.get("/api/widget/store-a/config", headers=_as(pk, SHOP_A))
        assert r.json() == {"store_id": "store-a", "display_name": "가게 A", "greeting": "안녕하세요",
                            "language": "ko"}
        assert_error(await c.get("/api/widget/store-a/config", headers=_as(pk, SHOP_B)), 403, "origin_not_allowed")
        assert_error(await c.get("/api/widget/store-a/config", headers=_as(pk)), 403, "origin_not_allowed")
        assert_error(await c.get("/api/widget/store-b/config", headers=_as(pk, SHOP_A)), 404, "store_not_found")
        assert_error(await c.post(f"{API}/sessions", json={"store_id": "store-a"}, headers=_as(pk, SHOP_B)),
                     403, "origin_not_allowed")

        # a publishable key opens a session and does nothing else
        opened = await _open(c, pk, user_id="someone-else")
        assert opened["user_id"] is None  # a browser's user_id is not trusted
        token, sid = opened["session_token"], opened["session_id"]
        assert_error(await c.post(f"{API}/sessions", json={"store_id": "store-b"}, headers=_as(pk, SHOP_A)),
                     403, "forbidden")
        for method, path in (("GET", f"{API}/sessions"), ("GET", f"{API}/sessions/{sid}"),
                             ("GET", f"{API}/stats?store_id=store-a"), ("POST", "/threads/search"),
                             ("GET", f"/threads/{sid}"), ("GET", "/api/admin/handoffs")):
            r = await c.request(method, path, headers=_as(pk, SHOP_A), json={} if method == "POST" else None)
            assert_error(r, 403, "forbidden")

        # the token reaches its own session, everywhere a shopper needs
        mine = _as(token, SHOP_A)
        assert (await c.get(f"{API}/sessions/{sid}", headers=mine)).json()["store_id"] == "store-a"
        answer_id = await _turn(c, token, sid)
        assert [m["role"] for m in (await c.get(f"{API}/sessions/{sid}/messages", headers=mine)).json()["items"]] \
            == ["user", "assistant"]
        r = await c.get(f"{API}/sessions/{sid}/messages/{answer_id}/stream", headers=mine)
        assert r.status_code == 200 and "event: done" in r.text
        assert (await c.post(f"{API}/messages/{answer_id}/feedback", json={"score": 1}, headers=mine)).status_code \
            == 201
        assert_error(await c.post(f"{API}/sessions/{sid}/messages/{answer_id}/cancel", headers=mine), 409,
                     "turn_ended")
        assert [s["session_id"] for s in (await c.get(f"{API}/sessions", headers=mine)).json()["items"]] == [sid]
        assert (await c.get(f"/threads/{sid}", headers=mine)).status_code == 200
        found = (await c.post("/threads/search", json={"metadata": {"store_id": "store-a"}}, headers=mine)).json()
        assert [t["thread_id"] for t in found] == [sid]
        assert (await c.get(f"{API}/sessions/{sid}", headers=_as(token))).status_code == 200  # no Origin: a server
        assert_error(await c.get(f"{API}/sessions/{sid}", headers=_as(token, SHOP_B)), 403, "origin_not_allowed")

        # another shopper's token, and another store's session: 404, as if they did not exist
        other = await _open(c, pk)
        theirs = _as(other["session_token"], SHOP_A)
        r_b = await c.post(f"{API}/sessions", json={"store_id": "store-b"}, headers=_as(store_b_key))
        sid_b = r_b.json()["session_id"]
        for target in (sid, sid_b):
            for method, path in (("GET", f"{API}/sessions/{target}"), ("GET", f"{API}/sessions/{target}/messages"),
                                 ("GET", f"{API}/sessions/{target}/stats"), ("GET", f"/threads/{target}"),
                                 ("GET", f"/threads/{target}/state"), ("DELETE", f"{API}/sessions/{target}"),
                                 ("GET", f"{API}/sessions/{target}/events")):
                assert (await c.request(method, path, headers=theirs)).status_code == 404, (method, path)
            r = await c.post(f"{API}/sessions/{target}/chat", json={"message": "hi"}, headers=theirs)
            assert r.status_code == 404
        assert_error(await c.get(f"{API}/sessions/{sid}/messages/{answer_id}/stream", headers=theirs), 404,
                     "session_not_found")
        assert_error(await c.post(f"{API}/messages/{answer_id}/feedback", json={"score": 0}, headers=theirs), 404,
                     "message_not_found")
        found = (await c.post("/threads/search", json={}, headers=theirs)).json()
        assert [t["thread_id"] for t in found] == [other["session_id"]]
        assert (await c.get(f"{API}/sessions", headers=theirs)).json()["items"][0]["session_id"] \
            == other["session_id"]
        assert_error(await c.post("/threads", json={}, headers=theirs), 403, "forbidden")  # no new threads
        assert_error(await c.post(f"{API}/sessions", json={"store_id": "store-a"}, headers=theirs), 403, "forbidden")
        assert_error(await c.get(f"{API}/stats?store_id=store-a", headers=theirs), 403, "forbidden")
        assert_error(await c.get("/api/admin/handoffs", headers=theirs), 403, "forbidden")
        rated = fetch_all(database_url, "select score from message_feedback where message_id = %s", (answer_id,))
        assert [float(r["score"]) for r in rated] == [1.0]  # the other shopper's rating changed nothing

        # forged, expired, another store's
        tokens = SessionTokens(parse_secrets(f"k1:{SECRET}"), issuer="sixshop-ai-agent", ttl_s=-5)
        assert_error(await c.get(f"{API}/sessions/{sid}", headers=_as(tokens.issue("store-a", uuid.UUID(sid)))),
                     401, "token_expired")
        forged = SessionTokens(parse_secrets(f"k1:{SECRET[::-1]}"), issuer="sixshop-ai-agent", ttl_s=60)
        assert_error(await c.get(f"{API}/sessions/{sid}", headers=_as(forged.issue("store-a", uuid.UUID(sid)))),
                     401, "invalid_token")
        real = SessionTokens(parse_secrets(f"k1:{SECRET}"), issuer="sixshop-ai-agent", ttl_s=60)
        assert_error(await c.get(f"{API}/sessions/{sid}", headers=_as(real.issue("store-b", uuid.UUID(sid)))),
                     401, "invalid_token")  # a token naming this session for another store
        assert (await c.get(f"{API}/sessions/{sid}", headers=_as(real.issue("store-b", uuid.uuid4())))
                ).status_code == 404  # another store's token for another session: as if this one did not exist

        # a store key's session hands its page a token too (the server-side way in)
        assert r_b.json()["session_token"]
        assert (await c.delete(f"{API}/sessions/{sid}", headers=mine)).status_code == 204
        # its own session deleted, the token reaches nothing (a turn on it is not looked up first: begin_turn says so)
        assert_error(await c.post(f"{API}/sessions/{sid}/chat", json={"message": "hi"}, headers=mine), 404,
                     "session_not_found")
        assert (await c.get(f"{API}/sessions/{sid}", headers=mine)).status_code == 404


async def test_verified_shoppers(server: ServerProcess, database_url: str) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as c:
        await _settings(c, "store-v", allowed_origins=[SHOP_A], identity_secret={"k1": IDENTITY_K1})
        pk = _key(database_url, "--store", "store-v", "--publishable")
        h = _as(pk, SHOP_A)

        first = await c.post(f"{API}/identify", json={"store_id": "store-v",
                                                      "identity": _identity("member-1", IDENTITY_K1, "k1")}, headers=h)
        assert first.status_code == 200, first.text
        assert first.json()["user_id"] == "member-1"
        token = first.json()["session_token"]
        assert jwt.decode(token, options={"verify_signature": False})["kind"] == "verified"
        sid = first.json()["session_id"]
        assert fetch_all(database_url, "select user_id from chat_sessions where session_id = %s", (sid,)) \
            == [{"user_id": "member-1"}]

        # the store rotates: k2 added, k1 still accepted; then k1 removed
        await _settings(c, "store-v", identity_secret={"k2": IDENTITY_K2})
        view = (await c.get("/api/admin/stores/store-v/settings", headers=_as(ADMIN))).json()
        assert (view["identity_secret_set"], view["identity_secret_kids"]) == (True, ["k1", "k2"])
        assert "identity_secret" not in view
        # another device: the same shopper resumes the same session, and sees it listed
        again = await c.post(f"{API}/identify", json={"store_id": "store-v",
                                                      "identity": _identity("member-1", IDENTITY_K2, "k2")}, headers=h)
        assert again.json()["session_id"] == sid
        device2 = _as(again.json()["session_token"], SHOP_A)
        await _turn(c, again.json()["session_token"], sid)
        newer = await c.post(f"{API}/sessions", json={"store_id": "store-v", "user_id": "member-2"}, headers=device2)
        assert newer.status_code == 201 and newer.json()["user_id"] == "member-1"  # the identity, not the body
        listed = (await c.get(f"{API}/sessions", headers=device2)).json()["items"]
        assert {s["session_id"] for s in listed} == {sid, newer.json()["session_id"]}
        assert (await c.get(f"{API}/sessions/{newer.json()['session_id']}", headers=_as(token, SHOP_A))
                ).status_code == 200  # one verified token reaches the shopper's other sessions of the store

        # an anonymous shopper of the same store, and another member, reach none of it
        anon = await _open(c, pk, store="store-v")
        for credential in (anon["session_token"],):
            assert (await c.get(f"{API}/sessions/{sid}", headers=_as(credential, SHOP_A))).status_code == 404
        await _settings(c, "store-v", identity_secret={"k1": None})
        other = await c.post(f"{API}/identify", json={"store_id": "store-v",
                                                      "identity": _identity("member-2", IDENTITY_K2, "k2")}, headers=h)
        assert (await c.get(f"{API}/sessions/{sid}", headers=_as(other.json()["session_token"], SHOP_A))
                ).status_code == 404
        assert [s["user_id"] for s in (await c.get(f"{API}/sessions", headers=_as(other.json()["session_token"],
                                                                                  SHOP_A))).json()["items"]] \
            == ["member-2"]

        # forged, expired, too long, removed kid, another store's secret: 401 invalid_identity
        now = int(time.time())
        for identity in (_identity("member-1", IDENTITY_K1, "k1"),  # k1 was removed
                         _identity("member-1", "forged-secret-0123456789abcdef-xyz", "k2"),
                         _identity("member-1", IDENTITY_K2, "k2", life_s=3600),
                         jwt.encode({"sub": "member-1", "iat": now - 700, "exp": now - 100}, IDENTITY_K2,
                                    algorithm="HS256", headers={"kid": "k2"})):
            r = await c.post(f"{API}/identify", json={"store_id": "store-v", "identity": identity}, headers=h)
            assert_error(r, 401, "invalid_identity")
        r = await c.post(f"{API}/identify", json={"store_id": "store-a",
                                                  "identity": _identity("member-1", IDENTITY_K2, "k2")}, headers=h)
        assert_error(r, 403, "forbidden")  # this key's store is store-v


async def test_new_chats_are_limited_per_address_and_store(server: ServerProcess, database_url: str) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as c:
        await _settings(c, "store-r", allowed_origins=[SHOP_A])
        pk = _key(database_url, "--store", "store-r", "--publishable")
        for _ in range(12):
            await _open(c, pk, store="store-r")
        r = await c.post(f"{API}/sessions", json={"store_id": "store-r"}, headers=_as(pk, SHOP_A))
        assert_error(r, 429, "rate_limited")
        assert 1 <= int(r.headers["retry-after"]) <= 3600
        rows = fetch_all(database_url, "select sessions from session_rate_windows where store_id = 'store-r'")
        assert [r["sessions"] for r in rows] == [13]  # counted in PostgreSQL, where every replica counts
        # another store's chats are counted apart
        await _settings(c, "store-r2", allowed_origins=[SHOP_A])
        await _open(c, _key(database_url, "--store", "store-r2", "--publishable"), store="store-r2")


async def test_cors_answers_each_stores_origins_on_the_shoppers_routes(server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as c:
        await _settings(c, "store-cors", allowed_origins=["https://cors-shop.example"])

        async def preflight(path: str, origin: str) -> httpx.Response:
            return await c.options(path, headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                                                  "Access-Control-Request-Headers": "authorization,content-type"})

        ok = await preflight(f"{API}/sessions", "https://cors-shop.example")
        assert ok.status_code == 204 and ok.headers["access-control-allow-origin"] == "https://cors-shop.example"
        assert "authorization" in ok.headers["access-control-allow-headers"]
        assert "access-control-allow-credentials" not in ok.headers
        assert "access-control-allow-origin" not in (await preflight(f"{API}/sessions", "https://evil.example")).headers
        # a store's origin reaches the shoppers' routes only, not the operators' or the Agent Protocol's
        for path in ("/api/admin/handoffs", "/threads/search"):
            assert "access-control-allow-origin" not in (await preflight(path, "https://cors-shop.example")).headers
        # the widget's configuration answers any origin, so a widget on a page its store does not allow can read why
        r = await c.get("/api/widget/store-cors/config", headers={"Origin": "https://evil.example",
                                                                   "Authorization": "Bearer pk-sixshop-unknown"})
        assert r.headers["access-control-allow-origin"] == "https://evil.example"
        # a change on any replica reaches the next preflight (the cached union is dropped)
        await _settings(c, "store-cors", allowed_origins=["https://cors-shop.example", "https://second.example"])
        again = await preflight(f"{API}/sessions", "https://second.example")
        assert again.headers.get("access-control-allow-origin") == "https://second.example"


# -- fuzzing the parsing of tokens and identities -----------------------------------------------------------------

def _b64(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).decode().rstrip("=")


_json_values = st.recursive(st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
                            | st.floats(allow_nan=True) | st.text(max_size=40),
                            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                        max_size=3), max_leaves=6)
_claims = st.fixed_dictionaries({}, optional={k: _json_values | st.just(v) for k, v in {
    "iss": "sixshop-ai-agent", "aud": "store-a", "sub": str(uuid.uuid4()), "kind": "verified", "user": "u1",
    "iat": int(time.time()), "exp": int(time.time()) + 60, "jti": "x"}.items()})
_headers = st.fixed_dictionaries({}, optional={"alg": st.sampled_from(["HS256", "none", "RS256", "HS512"])
                                               | _json_values, "kid": st.just("k1") | _json_values,
                                               "typ": _json_values})


@st.composite
def _tokens(draw: st.DrawFn) -> str:
    """JWT-shaped strings: odd headers and claims, signed with the right secret, a wrong one, or not at all."""
    header, claims = draw(_headers), draw(_claims)
    signing = _b64(json.dumps(header, default=str).encode()) + "." + _b64(json.dumps(claims, default=str).encode())
    how = draw(st.sampled_from(["right", "wrong", "none", "garbage"]))
    if how == "garbage":
        return "eyJ" + draw(st.text(alphabet="abcXYZ019-_.=", max_size=60))
    secret = SECRET if how == "right" else "w" * 40
    mac = hmac.new(secret.encode(), signing.encode(), "sha256").digest() if how != "none" else b""
    return f"{signing}.{_b64(mac)}"


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(token=_tokens())
def test_any_token_is_a_401_or_a_session_never_an_error(token: str) -> None:
    tokens = SessionTokens(parse_secrets(f"k1:{SECRET}"), issuer="sixshop-ai-agent", ttl_s=60)
    try:
        tokens.verify(token)
    except (InvalidToken, TokenExpired):
        pass
    try:
        verify_identity(token, {"k1": SECRET})
    except InvalidIdentity:
        pass
