"""Every route's owner rule: which kinds of credential may call it (API.md, "Shoppers in the browser").

Each route handler names its rule in `opt={"access": RULE}` (a controller for all its routes). One guard,
installed on the app, refuses a credential the rule does not take with 403 `forbidden` before the handler runs;
what a taken credential then sees (its store, its session) is the handler's and the services' check, which answers
404 for what is not its own. A route with no rule is refused (500 here, and tests/test_access.py fails on it), so
a new route cannot be reached before someone has said who may call it.

The credential's kind is read from the header's shape alone (no lookup): a `pk-sixshop-` key is publishable, a JWT
is a session token, anything else is a server's key or the admin token; its validity is checked afterwards by the
route's own dependency.
"""

from __future__ import annotations

from typing import Any, Literal

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from persistence.keys import PUBLISHABLE_PREFIX
from server.errors import AppError, Forbidden
from server.services.tokens import looks_like_jwt

OPERATOR_COOKIE = "sixshop_operator"  # a signed-in operator's session (server/http/operator_auth.py)
OPERATOR_PATHS = ("/api/admin", "/admin/")  # where that cookie is a credential; elsewhere it is ignored
Credential = Literal["none", "key", "publishable", "session", "cookie"]
CREDENTIALS: tuple[Credential, ...] = ("none", "key", "publishable", "session", "cookie")

# rule -> the credentials it takes ("key": a store key, an admin key or the admin token; "none": no credential,
# which the route's dependency then allows only where keys are not required, i.e. development before any key)
RULES: dict[str, frozenset[Credential]] = {
    "public": frozenset(CREDENTIALS),  # pages, the widget's script, health, metrics, the OpenAPI document, sign-in
    "widget": frozenset({"none", "key", "publishable", "session"}),  # a store's widget configuration
    "open-session": frozenset({"none", "key", "publishable", "session"}),  # POST /sessions
    "identify": frozenset({"none", "key", "publishable"}),  # a store's shopper vouched for by its backend
    "shopper": frozenset({"none", "key", "session"}),  # a session and its messages, turns and events
    "agent": frozenset({"none", "key", "session"}),  # the Agent Protocol (threads are sessions)
    "store": frozenset({"none", "key"}),  # a store's statistics and session lists, for its servers
    "operator": frozenset({"none", "key", "cookie"}),  # /api/admin: handoffs, transcripts, settings
}


class RuleMissing(AppError):
    code, default_message = "internal_error", "This route has no access rule"


def authorization_of(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """The request's Authorization header; the LangGraph SDK's `x-api-key` counts as a bearer credential."""
    header = connection.headers.get("authorization")
    if not header and (api_key := connection.headers.get("x-api-key")):
        return f"Bearer {api_key}"
    return header


def client_address(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    """The caller's address, what per-address limits count (uvicorn puts a trusted proxy's X-Forwarded-For
    there)."""
    return connection.client.host if connection.client else "unknown"


def credential_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Credential:
    header = authorization_of(connection) or ""
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value:
        if value.startswith(PUBLISHABLE_PREFIX):
            return "publishable"
        if looks_like_jwt(value):
            return "session"
        return "key"
    if header:
        return "key"  # malformed: the route's dependency answers 401 for it
    if connection.cookies.get(OPERATOR_COOKIE) and connection.url.path.startswith(OPERATOR_PATHS):
        return "cookie"
    return "none"


def rule_of(handler: BaseRouteHandler) -> str | None:
    rule = handler.opt.get("access")
    return rule if rule in RULES else None


def check_access(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """The app's guard: the route's rule must take the request's kind of credential. OPTIONS (Litestar's own
    handler: the allowed methods, CORS) reveals nothing and is answered to anyone."""
    if connection.scope.get("method") == "OPTIONS":
        return
    rule = rule_of(handler)
    if rule is None:
        raise RuleMissing(detail={"route": connection.scope.get("path_template") or connection.url.path})
    credential = credential_of(connection)
    if credential not in RULES[rule]:
        raise Forbidden(f"This credential ({credential}) cannot be used here", {"credential": credential})


def access(rule: str) -> dict[str, Any]:
    """`opt` for a route handler or controller: its rule."""
    assert rule in RULES, rule
    return {"access": rule}
