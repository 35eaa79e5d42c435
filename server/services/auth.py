"""Who is calling: an API key bound to one store (or an admin key), or nobody where that is allowed.

- APP_ENV=production: every /api/* request needs `Authorization: Bearer <key>`.
- development/test: keys are optional until the first one is created (then required, as in
  production). The answer to "does any key exist" is cached for a few seconds per process, so a key
  made with `sixshop-agent keys create` while `serve` runs takes effect within KEYS_CACHE_SECONDS.
- A store key sees only its store: another store's sessions, messages, feedback and statistics answer
  404 exactly as if they did not exist.
- Turns are rate limited per key (RATE_LIMIT_TURNS_PER_MINUTE, or the key's own figure): 429
  `rate_limited` with Retry-After. Windows live in PostgreSQL, so every server process counts together.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from uuid import UUID

from persistence.keys import KeyRepository
from server.errors import AppError, NotFound, RateLimited, Unauthorized


@dataclass(frozen=True)
class Principal:
    key_id: UUID | None = None
    store_id: str | None = None  # the only store this caller may touch; None with a key: admin
    turns_per_minute: int | None = None

    @property
    def anonymous(self) -> bool:
        return self.key_id is None

    @property
    def admin(self) -> bool:
        return self.key_id is not None and self.store_id is None

    def may_see(self, store_id: str) -> bool:
        return self.store_id is None or self.store_id == store_id

    def require_store(self, store_id: str, not_found: AppError | None = None) -> None:
        """404 (not 403) for another store's data: a key must not learn what exists elsewhere."""
        if not self.may_see(store_id):
            raise not_found or NotFound()


ANONYMOUS = Principal()


class Authenticator:
    def __init__(self, keys: KeyRepository, *, production: bool, default_turns_per_minute: int,
                 cache_s: float = 5.0) -> None:
        self.keys = keys
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
        principal = None if row is None else Principal(row["key_id"], row["store_id"], row["turns_per_minute"])
        if len(self._found) > 10_000:
            self._found.clear()
        self._found[key] = (now, principal)
        return principal

    async def principal(self, authorization: str | None) -> Principal:
        if authorization:
            scheme, _, key = authorization.partition(" ")
            if scheme.lower() != "bearer" or not key.strip():
                raise Unauthorized("Use 'Authorization: Bearer <api key>'", headers=_CHALLENGE)
            found = await self._lookup(key.strip())
            if found is None:
                raise Unauthorized("This API key is not valid (unknown or revoked)", headers=_CHALLENGE)
            return found
        if await self.keys_required():
            raise Unauthorized("An API key is required: 'Authorization: Bearer <api key>'", headers=_CHALLENGE)
        return ANONYMOUS

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

