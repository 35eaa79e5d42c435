"""Operators sign in: accounts for one or more stores, argon2 password hashes, server-side sessions behind an
HttpOnly cookie, and failed sign-ins limited per account and per address (429 with Retry-After)."""

from __future__ import annotations

import math
import secrets
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from persistence.operators import OperatorRepository
from server.errors import RateLimited, Unauthorized, ValidationFailed
from server.services.auth import Principal

# a hash made for no account, so that an unknown email costs the same time as a wrong password
_HASHER = PasswordHasher()


class OperatorAccounts:
    def __init__(self, repo: OperatorRepository, *, session_lifetime: timedelta, max_failures_per_account: int = 5,
                 max_failures_per_address: int = 20, failure_window: timedelta = timedelta(minutes=15)) -> None:
        self.repo = repo
        self.session_lifetime = session_lifetime
        self.max_account = max_failures_per_account
        self.max_address = max_failures_per_address
        self.window = failure_window
        self._dummy = _HASHER.hash(secrets.token_urlsafe(16))

    async def create(self, email: str, stores: list[str]) -> str:
        """A new account; its one-time password (shown once; only its argon2 hash is kept)."""
        email = email.strip()
        if "@" not in email or len(email) > 254 or not stores:
            raise ValidationFailed("an operator needs an email address and at least one store")
        password = secrets.token_urlsafe(12)
        await self.repo.create(email, sorted(set(stores)), _HASHER.hash(password))
        return password

    async def sign_in(self, email: str, password: str, address: str) -> str:
        """A new sign-in session's token for these credentials; 401 for wrong ones, 429 past the failure limits."""
        account = email.strip().lower()[:254]
        failures = await self.repo.failures(account, address, self.window)
        for kind, limit in (("account", self.max_account), ("address", self.max_address)):
            count, retry_after = failures.get(kind, (0, 0.0))
            if count >= limit:
                raise RateLimited(f"Too many failed sign-ins for this {kind}: try again later",
                                  {"limit": limit, "per": kind},
                                  headers={"Retry-After": str(max(1, math.ceil(retry_after)))})
        row = await self.repo.by_email(account)
        try:
            _HASHER.verify(row["password_hash"] if row else self._dummy, password)
            if row is None:
                raise VerificationError()
        except (VerificationError, InvalidHashError):
            await self.repo.fail(account, address, self.window)
            raise Unauthorized("Wrong email or password") from None
        assert row is not None
        if _HASHER.check_needs_rehash(row["password_hash"]):
            await self.repo.rehash(row["operator_id"], _HASHER.hash(password))
        token = secrets.token_urlsafe(32)
        await self.repo.open_session(row["operator_id"], token, self.session_lifetime)
        return token

    async def principal(self, token: str) -> tuple[Principal, str] | None:
        """The signed-in operator (their stores) and their email, or None for an unknown, ended or expired
        session."""
        row = await self.repo.session(token)
        if row is None:
            return None
        stores = frozenset(row["stores"])
        single = next(iter(stores)) if len(stores) == 1 else None
        return Principal(store_id=single, kind="operator", stores=stores), str(row["email"])

    async def sign_out(self, token: str) -> None:
        await self.repo.close_session(token)
