"""CORS: the origins CORS_ALLOW_ORIGINS names (Agent Chat UI, a store's own tools) on every route, and on the
shoppers' routes the origins stores list in `allowed_origins`, so a store's page can call them from its own domain.

Which store a request is for is known only once its credential is read, and a preflight carries none: so CORS is
answered for any origin some store allows, and the route's credential check then refuses a publishable key or
session token from an origin its own store does not allow (403 origin_not_allowed). The widget's configuration
answers CORS to any origin: it is the first call a widget makes, and on a page its store does not allow, the widget
must be able to read that refusal to say so. No route takes cookies across origins (credentials stay off), so an
allowed origin gains nothing a page could not do with the bearer credential it already holds.
"""

from __future__ import annotations

import re
from typing import Any

from litestar.types import ASGIApp, Message, Receive, Scope, Send

SHOPPER_PATHS = ("/api/session-chat/", "/api/widget/")
ANY_ORIGIN_PATHS = ("/api/widget/",)
ALLOW_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
ALLOW_HEADERS = "authorization, x-api-key, content-type, last-event-id, x-request-id"
EXPOSE_HEADERS = "Content-Location, Location, Retry-After"


class Cors:
    def __init__(self, app: ASGIApp, origins: tuple[list[str], str | None]) -> None:
        """`origins`: Settings.cors_origins(), the listed origins and a pattern (any localhost in development)."""
        listed, pattern = origins
        self.app = app
        self.origins = set(listed)
        self.any = "*" in self.origins
        self.pattern = re.compile(pattern) if pattern else None

    async def allowed(self, scope: Scope, origin: str) -> bool:
        if self.any or origin in self.origins or (self.pattern is not None and self.pattern.match(origin)):
            return True
        path: str = scope.get("path", "")
        if path.startswith(ANY_ORIGIN_PATHS):
            return True
        if path.startswith(SHOPPER_PATHS):
            resources = getattr(scope["app"].state, "resources", None)
            return resources is not None and origin in await resources.store_settings.browser_origins()
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        origin = headers.get(b"origin", b"").decode("latin-1")
        if not origin or not await self.allowed(scope, origin):
            await self.app(scope, receive, send)
            return
        if scope.get("method") == "OPTIONS" and b"access-control-request-method" in headers:
            preflight: list[tuple[bytes, bytes]] = [
                (b"access-control-allow-origin", origin.encode()), (b"vary", b"Origin"),
                (b"access-control-allow-methods", ALLOW_METHODS.encode()),
                (b"access-control-allow-headers", ALLOW_HEADERS.encode()), (b"access-control-max-age", b"600"),
                (b"content-length", b"0")]
            await send({"type": "http.response.start", "status": 204, "headers": preflight})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return

        async def with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra: list[Any] = [(b"access-control-allow-origin", origin.encode()), (b"vary", b"Origin"),
                                    (b"access-control-expose-headers", EXPOSE_HEADERS.encode())]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, with_cors)
