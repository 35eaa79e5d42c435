"""ChatAnalyticsService: SessionStats and StoreStats of API.md, with daily, variant and model breakdowns."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from persistence.sessions import SessionRepository
from persistence.stats import StatsRepository
from server.errors import SessionNotFound, ValidationFailed
from server.schemas import DailyStats, ModelStats, SessionStats, StoreStats, VariantStats


class ChatAnalyticsService:
    def __init__(self, stats: StatsRepository, sessions: SessionRepository, default_tz: str = "UTC") -> None:
        self.stats = stats
        self.sessions = sessions
        self.default_tz = default_tz

    async def session_stats(self, session_id: UUID) -> SessionStats:
        if await self.sessions.get(session_id) is None:
            raise SessionNotFound(detail={"session_id": str(session_id)})
        row = await self.stats.session_stats(session_id)
        row.pop("session_count", None)
        return SessionStats(session_id=session_id, **row)

    async def store_stats(self, store_id: str, start: datetime | None, end: datetime | None,
                          tz: str | None = None) -> StoreStats:
        if start and end and start >= end:
            raise ValidationFailed("'from' must be before 'to'", {"from": start.isoformat(), "to": end.isoformat()})
        tz = tz or self.default_tz
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValidationFailed("'tz' must be an IANA time zone such as Asia/Seoul", {"tz": tz}) from None
        found = await self.stats.store_stats(store_id, start, end, tz)
        return StoreStats(
            store_id=store_id, from_=start, to=end, tz=tz, **found["total"],
            daily=[DailyStats(**r) for r in found["daily"]],
            by_prompt_variant=[VariantStats(**r) for r in found["by_prompt_variant"]],
            by_model=[ModelStats(**r) for r in found["by_model"]],
        )
