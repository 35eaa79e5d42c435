"""Who can do what: every operation of the OpenAPI document has an owner rule (server/http/access.py), the rules are
the table the docs show (docs/concepts/your-store.md), and a real server refuses every credential a rule does not
take with 403 `forbidden` on every operation — so a new route without a rule, or one reachable with a browser's key
where it should not be, fails here."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.http.access import RULES, rule_of
from server.services.tokens import SessionTokens, parse_secrets
from tests.server_process import ServerProcess
from tests.test_shoppers import SECRET, SHOP_A, _as, _key, _settings, server_env

ROOT = Path(__file__).resolve().parent.parent

# the contract: each operation's rule. A route added without a line here fails the first test.
EXPECTED: dict[str, str] = {
    "GET /api/widget/{store_id}/config": "widget",
    "POST /api/session-chat/sessions": "open-session",
    "POST /api/session-chat/identify": "identify",
    "GET /api/session-chat/sessions": "shopper",
    "GET /api/session-chat/sessions/{session_id}": "shopper",
    "DELETE /api/session-chat/sessions/{session_id}": "shopper",
    "GET /api/session-chat/sessions/{session_id}/messages": "shopper",
    "POST /api/session-chat/sessions/{session_id}/chat": "shopper",
    "POST /api/session-chat/sessions/{session_id}/chat/stream": "shopper",
    "GET /api/session-chat/sessions/{session_id}/messages/{message_id}/stream": "shopper",
    "POST /api/session-chat/sessions/{session_id}/messages/{message_id}/cancel": "shopper",
    "GET /api/session-chat/sessions/{session_id}/events": "shopper",
    "GET /api/session-chat/sessions/{session_id}/stats": "shopper",
    "POST /api/session-chat/messages/{message_id}/feedback": "shopper",
    "GET /api/session-chat/stats": "store",
    "GET /info": "public",
    "POST /admin/login": "public", "POST /admin/logout": "operator", "GET /admin/me": "operator",
    "GET /health": "public", "GET /health/live": "public", "GET /health/ready": "public", "GET /metrics": "public",
}
AGENT = re.compile(r"^(GET|POST|DELETE|PATCH) /(threads|runs|assistants)")
OPERATOR = re.compile(r"^(GET|POST|PUT) /api/admin/")


PREPARED_DATABASE = True  # conftest.database_url: a copy of a database a keyless `serve` has prepared


def _operations(app: Any) -> dict[str, str | None]:
    """'METHOD /path' of every operation the OpenAPI document lists, with the rule of the route serving it."""
    handlers: dict[str, Any] = {}
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            for method in handler.http_methods - {"OPTIONS", "HEAD"}:
                path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
                handlers[f"{method} {path}"] = handler
    doc = app.openapi_schema.to_schema()
    operations = {}
    for path, item in doc["paths"].items():
        for method in item:
            if method.upper() in ("GET", "POST", "PUT", "PATCH", "DELETE"):
                key = f"{method.upper()} {path.rstrip('/') or '/'}"
                handler = handlers.get(key) or handlers.get(f"{method.upper()} {path}")
                assert handler is not None, key
                operations[key] = rule_of(handler)
    return operations


@pytest.fixture(scope="module")
def app() -> Any:
    from server.http.app import create_app
    from server.settings import Settings

    return create_app(Settings())


def test_every_operation_has_the_rule_the_contract_gives(app: Any) -> None:
    operations = _operations(app)
    assert len(operations) > 40
    missing = sorted(op for op, rule in operations.items() if rule is None)
    assert missing == [], f"routes without an access rule: {missing}"
    expected = {op: EXPECTED.get(op) or ("agent" if AGENT.match(op) else "operator" if OPERATOR.match(op) else None)
                for op in operations}
    assert {op: r for op, r in expected.items() if r is None} == {}, "operations the contract does not name"
    assert operations == expected
    # every handler the app serves, in the document or not (pages, static files), has a rule
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            if handler.http_methods != {"OPTIONS"}:
                assert rule_of(handler) is not None, route.path


# the docs' columns (docs/concepts/your-store.md): each credential a caller may hold, and the kind the guard reads it as
COLUMNS = [("no credential (development)", "none"), ("publishable key", "publishable"),
           ("own session token", "session"), ("another session's token", "session"),
           ("verified shopper's token", "session"), ("operator cookie", "cookie"), ("store key", "key"),
           ("admin key or `ADMIN_TOKEN`", "key")]
# what a credential the rule takes then reaches (the services' checks; tests/test_shoppers.py, test_operators.py)
REACH = {
    "widget": ["any store", "its store's", "its store's", "its store's", "its store's", "", "its store's", "any"],
    "open-session": ["any store", "its store, from allowed origins, limited per address", "403", "403",
                     "a new one of the shopper's", "", "its store", "any store"],
    "identify": ["any store", "its store", "", "", "", "", "its store", "any store"],
    "shopper": ["all", "", "its session", "404", "the shopper's sessions of its store", "", "its store's", "all"],
    "agent": ["all", "", "its session's thread only", "404", "the shopper's threads", "", "its store's", "all"],
    "store": ["all", "", "", "", "", "", "its store's", "all"],
    "operator": ["all", "", "", "", "", "their stores (404 for others)", "its store's handoffs, settings, webhooks",
                 "all"],
}


def rules_table() -> str:
    lines = ["| rule | " + " | ".join(name for name, _ in COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    for rule, taken in RULES.items():
        reach = REACH.get(rule, ["yes"] * len(COLUMNS))
        cells = [(reach[i] or "yes") if kind in taken else "ignored" if kind == "cookie" else "403"
                 for i, (_, kind) in enumerate(COLUMNS)]
        lines.append(f"| `{rule}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def test_the_docs_show_the_rules_as_they_are() -> None:
    page = ROOT / "docs" / "concepts" / "your-store.md"
    assert rules_table() in page.read_text(encoding="utf-8"), rules_table()


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[ServerProcess]:
    with ServerProcess(server_env(database_url)) as proc:
        yield proc


def _fill(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: "store-m" if m.group(1) == "store_id" else str(uuid.uuid4()), path)


async def test_a_server_refuses_what_each_rule_does_not_take(app: Any, server: ServerProcess,
                                                              database_url: str) -> None:
    """Each operation called with a publishable key and with a session token: 403 forbidden exactly where its rule
    does not take that credential; elsewhere whatever the route answers, never that refusal and never a 5xx."""
    operations = _operations(app)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as c:
        await _settings(c, "store-m", allowed_origins=[SHOP_A])
        pk = _key(database_url, "--store", "store-m", "--publishable")
        token = SessionTokens(parse_secrets(f"k1:{SECRET}"), issuer="sixshop-ai-agent", ttl_s=600).issue(
            "store-m", uuid.uuid4())
        refused: dict[str, list[str]] = {"publishable": [], "session": []}
        for op in sorted(operations):
            method, path = op.split(" ", 1)
            for credential, value in (("publishable", pk), ("session", token)):
                r = await c.request(method, _fill(path), headers=_as(value, SHOP_A),
                                    json={} if method in ("POST", "PUT", "PATCH") else None,
                                    params={"store_id": "store-m"} if path.endswith("/stats") else None)
                assert r.status_code < 500, (op, credential, r.status_code, r.text[:300])
                if r.status_code == 403 and r.json().get("code") == "forbidden" and \
                        r.json().get("detail", {}).get("credential") == credential:
                    refused[credential].append(op)
        for credential in ("publishable", "session"):
            want = sorted(op for op, rule in operations.items() if credential not in RULES[str(rule)])
            assert sorted(refused[credential]) == want, credential

        # a signed-in operator's cookie: a credential on the operator routes, ignored everywhere else (keys exist
        # here, so a request with no credential is 401 there)
        from tests.test_operators import operator

        password = operator(database_url, "matrix@store-m.example", "store-m")
        login = await c.post("/admin/login", json={"email": "matrix@store-m.example", "password": password})
        cookie = login.headers["set-cookie"].split(";", 1)[0]
        for op in sorted(operations):
            method, path = op.split(" ", 1)
            r = await c.request(method, _fill(path), headers={"Cookie": cookie},
                                json={} if method in ("POST", "PUT", "PATCH") else None,
                                params={"store_id": "store-m"} if path.endswith("/stats") else None)
            assert r.status_code < 500, (op, r.status_code, r.text[:300])
            if operations[op] in ("shopper", "agent", "store", "widget", "open-session", "identify"):
                assert r.status_code == 401, (op, r.status_code)
            elif operations[op] == "operator" and method == "GET":
                assert r.status_code != 401, (op, r.status_code)  # the cookie was taken
