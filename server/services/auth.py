"""Who is calling: an API key bound to one store (or an admin key), a browser's credential (a store's publishable
key, a session token), or nobody where that is allowed.

- APP_ENV=production: every /api/* request needs `Authorization: Bearer <key>`.
- development/test: keys are optional until the first one is created (then required, as in
  production). The answer to "does any key exist" is cached for a few seconds per process, so a key
  made with `sixshop-agent keys create` while `serve` runs takes effect within KEYS_CACHE_SECONDS.
- A store key sees only its store: another store's sessions, messages, feedback and statistics answer
  404 exactly as if they did not exist.
- A publishable key (`pk-sixshop-…`) only picks its store, from an origin the store allows (`allowed_origins`;
  403 origin_not_allowed otherwise); a session token (a JWT, server/services/tokens.py) reaches its own session,
  and a verified one the shopper's sessions of that store. Which routes take which credential is the routes'
  rule (server/http/access.py); what a credential then sees is `Principal.may_see_session`.
- Turns are rate limited per key (RATE_LIMIT_TURNS_PER_MINUTE, or the key's own figure): 429
  `rate_limited` with Retry-After. Windows live in PostgreSQL, so every server process counts together.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit
from uuid import UUID

from persistence.keys import KeyRepository, ShopperLimits
from server.errors import AppError, NotFound, OriginNotAllowed, RateLimited, Unauthorized
from server.services.stores import StoreSettingsService
from server.services.tokens import SessionTokens, looks_like_jwt

Kind = Literal["none", "key", "publishable", "session", "operator"]


@dataclass(frozen=True)
class Principal:
    key_id: UUID | None = None
    store_id: str | None = None  # the only store this caller may touch; None with a key: admin
    turns_per_minute: int | None = None
    kind: Kind = "none"  # none: no credential (development before any key; or the admin token, see deps.py)
    session_id: UUID | None = None  # a session token's session
    user_id: str | None = None  # a verified session token's shopper
    stores: frozenset[str] | None = None  # a signed-in operator's stores

    @property
    def anonymous(self) -> bool:
        return self.kind == "none"

    @property
    def admin(self) -> bool:
        return self.key_id is not None and self.store_id is None

    def may_see(self, store_id: str) -> bool:
        if self.stores is not None:
            return store_id in self.stores
        return self.store_id is None or self.store_id == store_id

    @property
    def shopper(self) -> bool:
        """A browser's credential: a publishable key or a session token."""
        return self.kind in ("publishable", "session")

    def may_see_session(self, store_id: str, session_id: UUID, user_id: str | None) -> bool:
        """Whether this caller reaches that session: a key its store's (every store's for an admin), a session
        token its own session and, verified, its shopper's sessions of that store; a publishable key none."""
        if not self.may_see(store_id) or self.kind == "publishable":
            return False
        if self.kind == "session":
            return session_id == self.session_id or (self.user_id is not None and user_id == self.user_id)
        return True

    def require_store(self, store_id: str, not_found: AppError | None = None) -> None:
        """404 (not 403) for another store's data: a key must not learn what exists elsewhere."""
        if not self.may_see(store_id):
            raise not_found or NotFound()


ANONYMOUS = Principal()


class Authenticator:
    def __init__(self, keys: KeyRepository, *, production: bool, default_turns_per_minute: int,
                 cache_s: float = 5.0, tokens: SessionTokens | None = None,
                 store_settings: StoreSettingsService | None = None, limits: ShopperLimits | None = None,
                 sessions_per_ip_per_hour: int = 0) -> None:
        self.keys = keys
        self.tokens = tokens
        self.store_settings = store_settings
        self.limits = limits
        self.sessions_per_ip_per_hour = sessions_per_ip_per_hour
        self.production = production
        self.default_turns_per_minute = default_turns_per_minute
        self.cache_s = cache_s
        self._any_active: tuple[float, bool] = (0.0, False)
        self._found: dict[str, tuple[float, Principal | None]] = {}

    async def keys_required(self) -> bool:
        if self.production:
            return True
        checked, value = self._any_active
        if time.monotonic() - checked > self.cache_s:
            value = await self.keys.any_active()
            self._any_active = (time.monotonic(), value)
        return value

    async def _lookup(self, key: str) -> Principal | None:
        now = time.monotonic()
        cached = self._found.get(key)
        if cached and now - cached[0] <= self.cache_s:
            return cached[1]
        row = await self.keys.find(key)
        principal = None if row is None else Principal(
            row["key_id"], row["store_id"], row["turns_per_minute"],
            kind="publishable" if row["kind"] == "publishable" else "key")
        if len(self._found) > 10_000:
            self._found.clear()
        self._found[key] = (now, principal)
        return principal

    async def principal(self, authorization: str | None, origin: str | None = None,
                        host: str | None = None) -> Principal:
        """The caller of a request with this Authorization header (and the browser's Origin, and the Host it
        asked)."""
        if authorization:
            scheme, _, key = authorization.partition(" ")
            key = key.strip()
            if scheme.lower() != "bearer" or not key:
                raise Unauthorized("Use 'Authorization: Bearer <api key>'", headers=_CHALLENGE)
            if looks_like_jwt(key) and self.tokens is not None:
                claims = self.tokens.verify(key)
                token = Principal(store_id=claims.store_id, kind="session", session_id=claims.session_id,
                                  user_id=claims.user_id)
                await self.check_origin(token, origin, host)
                return token
            found = await self._lookup(key)
            if found is None:
                raise Unauthorized("This API key is not valid (unknown or revoked)", headers=_CHALLENGE)
            if found.kind == "publishable":
                await self.check_origin(found, origin, host)
            return found
        if await self.keys_required():
            raise Unauthorized("An API key is required: 'Authorization: Bearer <api key>'", headers=_CHALLENGE)
        return ANONYMOUS

    async def allowed_origins(self, store_id: str) -> list[str]:
        if self.store_settings is None:
            return []
        return list((await self.store_settings.for_turn(store_id)).get("allowed_origins") or [])

    async def check_origin(self, principal: Principal, origin: str | None, host: str | None = None) -> None:
        """A browser credential used from a page: that page's origin must be one its store allows, or this service's
        own (its sample store page). A publishable key needs one (browsers always send Origin on the calls the
        widget makes); a session token without one is a client that holds the token itself (a server, a script),
        which it may."""
        assert principal.store_id is not None
        if origin is None and principal.kind == "session":
            return
        if origin is not None and host is not None and urlsplit(origin).netloc == host:
            return
        allowed = await self.allowed_origins(principal.store_id)
        if origin is None or origin.rstrip("/") not in allowed:
            raise OriginNotAllowed(detail={"origin": (origin or "")[:200], "store_id": principal.store_id})

    async def take_session(self, store_id: str, client: str) -> None:
        """Counts a session opened from a browser against SESSIONS_PER_IP_PER_HOUR for (store, address); 429 with
        Retry-After beyond it."""
        limit = self.sessions_per_ip_per_hour
        if limit <= 0 or self.limits is None:
            return
        sessions, retry_after = await self.limits.take_session(store_id, client)
        if sessions > limit:
            raise RateLimited(f"More than {limit} new chats an hour from this address", {"limit_per_hour": limit},
                              headers={"Retry-After": str(max(1, math.ceil(retry_after)))})

    async def take_turn(self, principal: Principal) -> None:
        """Counts a turn against the key's per-minute limit; 429 with Retry-After beyond it."""
        if principal.key_id is None:
            return
        limit = principal.turns_per_minute if principal.turns_per_minute is not None else self.default_turns_per_minute
        if limit <= 0:
            return
        turns, retry_after = await self.keys.take_turn(principal.key_id)
        if turns > limit:
            wait = max(1, math.ceil(retry_after))
            raise RateLimited(f"More than {limit} turns a minute for this key", {"limit_per_minute": limit},
                              headers={"Retry-After": str(wait)})


_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="sixshop-ai-agent"'}

