"""SessionService: create, get, list, soft-delete; the store-ownership checks arrive with API keys."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import msgspec

from persistence.sessions import SessionRepository
from server.errors import InvalidToken, SessionNotFound, ValidationFailed
from server.schemas import Session, SessionPage, check_metadata_size, session_out
from server.services.auth import Authenticator, Principal
from server.services.stores import StoreSettingsService


def encode_cursor(created_at: datetime, session_id: UUID) -> str:
    raw = f"{created_at.isoformat()}|{session_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        ts, sid = raw.split("|", 1)
        return datetime.fromisoformat(ts), UUID(sid)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise ValidationFailed("cursor is not one this service issued", {"field": "cursor"}) from exc


SESSION_AUDIENCES = ("shopper", "seller")  # who a session answers: the help pages for them and for all


class SessionService:
    def __init__(self, repo: SessionRepository, *, expire_after: timedelta, max_metadata_bytes: int,
                 store_settings: StoreSettingsService | None = None) -> None:
        self.repo = repo
        self.store_settings = store_settings
        self.expire_after = expire_after
        self.max_metadata_bytes = max_metadata_bytes

    async def create(self, store_id: str, user_id: str | None, metadata: dict[str, Any],
                     session_id: UUID | None = None) -> Session:
        """A new session; `session_id` lets a client choose it (Agent Protocol threads): a taken id
        raises psycopg.errors.UniqueViolation for the caller to answer."""
        check_metadata_size(metadata, self.max_metadata_bytes)
        audience = metadata.get("audience")
        if audience is not None and audience not in SESSION_AUDIENCES:
            raise ValidationFailed(f"metadata.audience must be one of {', '.join(SESSION_AUDIENCES)}",
                                   {"field": "metadata.audience", "value": str(audience)[:40]})
        row = await self.repo.create(session_id or uuid4(), store_id, user_id, metadata)
        session = session_out(row, self.expire_after)
        if self.store_settings is not None:  # the store's greeting, shown as the session opens
            greeting = (await self.store_settings.for_turn(store_id)).get("greeting")
            session = msgspec.structs.replace(session, greeting=greeting or None)
        return session

    async def get(self, session_id: UUID) -> Session:
        row = await self.repo.get(session_id)
        if row is None:
            raise SessionNotFound(detail={"session_id": str(session_id)})
        return session_out(row, self.expire_after)

    async def get_visible(self, session_id: UUID, principal: Principal) -> Session:
        """The session, if this caller reaches it (its store's, its own); otherwise 404, the same way as a missing
        id."""
        session = await self.get(session_id)
        if principal.kind == "session" and principal.session_id == session.session_id and \
                principal.store_id != session.store_id:  # only a forger could name another store's session
            raise InvalidToken("This session token is for another store")
        if not principal.may_see_session(session.store_id, session.session_id, session.user_id):
            raise SessionNotFound(detail={"session_id": str(session_id)})
        return session

    def with_token(self, session: Session, auth: Authenticator, *, verified: bool) -> Session:
        """The session with a session token for a browser (verified: for its shopper, whose id it carries)."""
        if auth.tokens is None:
            return session
        token = auth.tokens.issue(session.store_id, session.session_id, session.user_id if verified else None)
        return msgspec.structs.replace(session, session_token=token)

    async def latest_of(self, store_id: str, user_id: str) -> Session | None:
        """A shopper's most recent active session of a store, if any."""
        page = await self.list(store_id=store_id, user_id=user_id, status="active", limit=1, cursor=None)
        return page.items[0] if page.items else None



    async def delete(self, session_id: UUID) -> None:
        if not await self.repo.soft_delete(session_id):
            raise SessionNotFound(detail={"session_id": str(session_id)})

    async def list(
        self, *, store_id: str | None, user_id: str | None, status: str | None, limit: int, cursor: str | None,
        metadata: dict[str, Any] | None = None, busy: bool | None = None, within: Principal | None = None,
    ) -> SessionPage:
        """A page of sessions, newest first; `within`: only those a session token reaches (its own session, or a
        verified shopper's sessions of its store), whatever else the filters say."""
        after = decode_cursor(cursor) if cursor else None
        session_id = None
        if within is not None and within.kind == "session":
            if within.user_id is not None:
                if user_id not in (None, within.user_id):
                    return SessionPage(items=[], next_cursor=None)
                user_id = within.user_id
            else:
                session_id = within.session_id
            store_id = within.store_id
        rows = await self.repo.list(store_id=store_id, user_id=user_id, status=status, limit=limit + 1, after=after,
                                    metadata=metadata, busy=busy, session_id=session_id)
        page, more = rows[:limit], len(rows) > limit
        next_cursor = encode_cursor(page[-1]["created_at"], page[-1]["session_id"]) if more else None
        return SessionPage(items=[session_out(r, self.expire_after) for r in page], next_cursor=next_cursor)
