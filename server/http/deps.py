"""What the route modules share: the process's resources, id parsing, the caller, the statistics query."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import QueryParameter

from server.errors import StoreNotFound, Unauthorized, ValidationFailed
from server.http.access import OPERATOR_COOKIE
from server.resources import Resources
from server.schemas import Session, StoreId, StoreStats
from server.services.auth import Principal

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def resources_of(state: State) -> Resources:
    return state.resources


def parse_id(value: str, field: str) -> UUID:
    """Ids are UUIDs: a malformed one is the client's mistake (400), never a lookup or a 500."""
    try:
        return UUID(value)
    except ValueError:
        raise ValidationFailed(f"{field} must be a UUID", {"field": field, "value": value[:64]}) from None


def as_utc(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


Caller = NamedDependency[Principal]  # the `principal` dependency: who is calling (server/services/auth.py)


@dataclass(frozen=True)
class StatsQuery:
    """A store's statistics request: the same query string for shoppers' keys and operators."""

    store_id: str
    start: datetime | None
    end: datetime | None
    tz: str | None

    async def run(self, res: Resources) -> StoreStats:
        return await res.analytics.store_stats(self.store_id, as_utc(self.start), as_utc(self.end), self.tz)


async def stats_query(
    store_id: Annotated[StoreId, QueryParameter(name="store_id")],
    start: Annotated[datetime | None, QueryParameter(name="from")] = None,
    end: Annotated[datetime | None, QueryParameter(name="to")] = None,
    tz: Annotated[str | None, QueryParameter(name="tz", max_length=64)] = None,
) -> StatsQuery:
    return StatsQuery(store_id, start, end, tz)


StatsRequest = NamedDependency[StatsQuery]  # the `stats_request` dependency (stats_query)


async def provide_principal(request: Request[Any, Any, Any], state: State) -> Principal:
    return await resources_of(state).auth.principal(request.headers.get("authorization"),
                                                    request.headers.get("origin"), request.headers.get("host"))


async def owned_session(res: Resources, principal: Principal, session_id: str) -> Session:
    """The session, if it exists and this caller's store may see it; otherwise 404, the same way."""
    return await res.sessions.get_visible(parse_id(session_id, "session_id"), principal)


def parse_event_id(value: str | None) -> int:
    """Last-Event-ID: the id of the last event the client has (none: 0, from the start)."""
    if value is None or not value.strip():
        return 0
    if not value.strip().isdigit():
        raise ValidationFailed("Last-Event-ID must be a whole number", {"field": "last_event_id",
                                                                         "value": value[:20]})
    return int(value)


async def provide_after(
    request: Request[Any, Any, Any],
    last_event_id: Annotated[str | None, QueryParameter(name="last_event_id", max_length=20)] = None,
) -> int:
    """A resumed stream's starting point: Last-Event-ID (header), else ?last_event_id=, else 0 (from the start)."""
    return parse_event_id(request.headers.get("last-event-id") or last_event_id)


After = NamedDependency[int]  # the `after` dependency (provide_after)


@dataclass(frozen=True)
class Operator:
    """Who calls an operator route: what they may see, and their name in transcripts and change logs (never a
    secret): admin-token, key:<id>, a signed-in operator's email, or development (no keys yet)."""

    principal: Principal
    name: str

    @property
    def shown_name(self) -> str:
        """The name a shopper sees on a reply: a signed-in operator's email is not shown, only what precedes @."""
        return self.name.split("@", 1)[0] if self.principal.kind == "operator" else self.name

    def require_store(self, store_id: str) -> None:
        """404 store_not_found for a store this caller does not reach."""
        self.principal.require_store(store_id, StoreNotFound(detail={"store_id": store_id}))

    def path_store(self, store_id: str) -> str:
        """A store named in the path: checked (400 naming store_id) and within this caller's reach (404)."""
        store = checked(store_id, StoreId, "store_id")
        self.require_store(store)
        return store

    def scope(self, store_id: str | None) -> str | None:
        """The store a listing is for: the one asked (within reach), else the caller's only store, else every store
        (an admin) — an operator of several stores names one (400)."""
        if store_id is not None:
            self.require_store(store_id)
            return store_id
        if self.principal.stores is not None and self.principal.store_id is None:
            raise ValidationFailed("store_id is required: you reach several stores", {"field": "store_id"})
        return self.principal.store_id


async def operator_of(connection: ASGIConnection[Any, Any, Any, Any], missing: str) -> Operator:
    """Who calls an operator route: the admin token (Bearer ADMIN_TOKEN), else the caller's key (401 for a bad one),
    else a signed-in operator's cookie (401 once it has ended); with an admin token configured, no credential is
    401 (`missing` says what is needed); without one, anonymous in development before any key exists (the
    authenticator's rule)."""
    settings = connection.app.state.settings
    res: Resources = connection.app.state.resources
    header = connection.headers.get("authorization", "")
    if settings.admin_token is not None and hmac.compare_digest(
        header.encode(), f"Bearer {settings.admin_token.get_secret_value()}".encode()
    ):
        return Operator(Principal(), "admin-token")
    cookie = connection.cookies.get(OPERATOR_COOKIE)
    if not header and cookie:
        found = await res.operators.principal(cookie)
        if found is None:
            raise Unauthorized("Your sign-in has ended: sign in again")
        return Operator(*found)
    principal = await res.auth.principal(header or None)
    if principal.anonymous and settings.admin_token is not None:
        raise Unauthorized(missing)
    return Operator(principal, "development" if principal.anonymous else f"key:{principal.key_id}")


async def provide_operator(request: Request[Any, Any, Any]) -> Operator:
    return await operator_of(request, "A valid admin token, API key or operator sign-in is required")


OperatorDep = NamedDependency[Operator]  # the `operator` dependency (provide_operator)


def checked(value: Any, kind: Any, field: str) -> str:
    """`value` converted to `kind` (a constrained str such as StoreId), or 400 naming `field`."""
    try:
        return str(msgspec.convert(value, kind))
    except msgspec.ValidationError as exc:
        raise ValidationFailed(f"{field}: {exc}", {"field": field}) from None
