"""ChatAnalyticsService: SessionStats and StoreStats of API.md (depth comes with the monitoring issue)."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from persistence.sessions import SessionRepository
from persistence.stats import StatsRepository
from server.errors import SessionNotFound, ValidationFailed
from server.schemas import SessionStats, StoreStats


class ChatAnalyticsService:
    def __init__(self, stats: StatsRepository, sessions: SessionRepository) -> None:
        self.stats = stats
        self.sessions = sessions

    async def session_stats(self, session_id: UUID) -> SessionStats:
        if await self.sessions.get(session_id) is None:
            raise SessionNotFound(detail={"session_id": str(session_id)})
        row = await self.stats.session_stats(session_id)
        row.pop("session_count", None)
        return SessionStats(session_id=session_id, **row)

    async def store_stats(self, store_id: str, start: datetime | None, end: datetime | None) -> StoreStats:
        if start and end and start >= end:
            raise ValidationFailed("'from' must be before 'to'", {"from": start.isoformat(), "to": end.isoformat()})
        row = await self.stats.store_stats(store_id, start, end)
        return StoreStats(store_id=store_id, from_=start, to=end, **row)
