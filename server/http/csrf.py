"""CSRF protection on every write an operator makes with their sign-in cookie: Litestar's CSRF middleware
(CSRFConfig: a token cookie the page reads, sent back in a header), applied where that cookie is the credential.
Requests that carry a bearer credential (keys, the admin token, shoppers' tokens) are not cookie-authenticated,
and a cross-site page cannot make a browser send them, so they pass as they are."""

from __future__ import annotations

import hashlib
import hmac

from litestar.config.csrf import CSRFConfig
from litestar.middleware.csrf import CSRFMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from server.http.access import OPERATOR_COOKIE, OPERATOR_PATHS

CSRF_COOKIE, CSRF_HEADER = "sixshop_csrf", "x-csrf-token"


class OperatorCsrf:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.checked: CSRFMiddleware | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # signing in needs no token: a stale cookie must not keep an operator out (and SameSite=Strict already
        # keeps other sites' forms from carrying cookies)
        if scope["type"] == "http" and scope["path"].startswith(OPERATOR_PATHS) and scope["path"] != "/admin/login":
            headers = dict(scope["headers"])
            cookies = headers.get(b"cookie", b"").decode("latin-1")
            if f"{OPERATOR_COOKIE}=" in cookies and b"authorization" not in headers:
                if self.checked is None:  # the secret comes from the resources, open once the app has started
                    signing = scope["app"].state.resources.auth.tokens.signing_secret
                    secret = hmac.new(signing.encode(), b"operator-csrf", hashlib.sha256).hexdigest()
                    self.checked = CSRFMiddleware(self.app, CSRFConfig(
                        secret=secret, cookie_name=CSRF_COOKIE, header_name=CSRF_HEADER, cookie_secure=True,
                        cookie_samesite="strict", cookie_path="/"))
                await self.checked(scope, receive, send)
                return
        await self.app(scope, receive, send)
