"""Operators sign in to /admin: a server-side session in PostgreSQL behind an HttpOnly, Secure, SameSite=Strict
cookie; writes made with that cookie need the CSRF token (server/http/csrf.py)."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import Cookie, State
from litestar.di import Provide

from server.http.access import OPERATOR_COOKIE, access, client_address
from server.http.deps import OperatorDep, provide_operator, resources_of
from server.schemas import decode_body


class SignIn(msgspec.Struct, forbid_unknown_fields=True):
    email: str = msgspec.field()
    password: str = msgspec.field()


def _cookie(value: str, max_age: int) -> Cookie:
    return Cookie(key=OPERATOR_COOKIE, value=value, path="/", httponly=True, secure=True, samesite="strict",
                  max_age=max_age)


class OperatorSignInController(Controller):
    path = "/admin"
    tags = ["operators"]

    @post("/login", status_code=200, opt=access("public"))
    async def login(self, request: Request[Any, Any, Any], state: State) -> Response[dict[str, Any]]:
        """Email and password → a sign-in session (cookie). 401 for wrong ones; 429 after too many failures for
        the account or the address."""
        body = decode_body(await request.body(), SignIn)
        res = resources_of(state)
        token = await res.operators.sign_in(body.email[:254], body.password[:1024], client_address(request))
        found = await res.operators.principal(token)
        assert found is not None
        principal, email = found
        lifetime = int(res.operators.session_lifetime.total_seconds())
        return Response({"email": email, "stores": sorted(principal.stores or [])},
                        cookies=[_cookie(token, lifetime)], headers={"Cache-Control": "no-store"})

    @post("/logout", status_code=200, opt=access("operator"), dependencies={"operator": Provide(provide_operator)})
    async def logout(self, request: Request[Any, Any, Any], state: State,
                     operator: OperatorDep) -> Response[dict[str, Any]]:
        """End this sign-in session (the cookie is cleared too)."""
        token = request.cookies.get(OPERATOR_COOKIE)
        if token:
            await resources_of(state).operators.sign_out(token)
        return Response({"signed_out": True}, cookies=[_cookie("", 0)])

    @get("/me", opt=access("operator"), dependencies={"operator": Provide(provide_operator)})
    async def me(self, operator: OperatorDep) -> dict[str, Any]:
        """Who is signed in and which stores they reach (null: every store)."""
        stores = operator.principal.stores
        return {"name": operator.name, "stores": sorted(stores) if stores is not None else None,
                "signed_in": operator.principal.kind == "operator"}
