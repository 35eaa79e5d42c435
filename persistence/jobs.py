"""background_jobs: claim a job's run for one interval across all processes, then mark it finished."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

from persistence.db import Pool, retry_unavailable

# Not running means: finished, or its lease ran out (its process died), or claimed by this very process — a
# process runs each job from one loop, so a claim of its own that it is not running is one whose answer it
# never got (the connection dropped as the claim committed).
CLAIM_SQL = """
insert into background_jobs as j (name, started_at, owner) values (%(name)s, now(), %(owner)s)
on conflict (name) do update set started_at = now(), finished_at = null, owner = excluded.owner, runs = j.runs + 1
 where j.started_at <= now() - %(every)s::interval
   and (j.finished_at is not null or j.started_at < now() - %(lease)s::interval or j.owner = excluded.owner)
returning started_at
"""
FINISH_SQL = "update background_jobs set finished_at = now() where name = %(name)s and started_at = %(started)s"
RUNS_SQL = "select name, runs, started_at, finished_at, owner from background_jobs order by name"


def process_name() -> str:
    """This process, as jobs' owners and capacity samples name it."""
    return f"{socket.gethostname()}:{os.getpid()}"


def poll_seconds(every_s: float) -> float:
    """How often a replica asks whether a job is due: a quarter of its interval, between 1 s and a minute, so
    the job runs once per interval (late by at most this) whichever replicas are up."""
    return max(1.0, min(every_s / 4, 60.0))


class JobRepository:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def claim(self, name: str, *, owner: str, every: timedelta, lease: timedelta) -> datetime | None:
        """This process's run of `name`, if none started within `every` and none is running (or its lease ran
        out); None when another process has it."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(CLAIM_SQL, {"name": name, "owner": owner, "every": every, "lease": lease})
            row = await cur.fetchone()
        return row["started_at"] if row else None

    async def finish(self, name: str, started: datetime) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(FINISH_SQL, {"name": name, "started": started})

    @asynccontextmanager
    async def run(self, name: str, *, owner: str, every: timedelta, lease: timedelta) -> AsyncIterator[bool]:
        """`async with jobs.run(...) as mine:` — do the work only if `mine`; finished on exit either way."""
        started = await self.claim(name, owner=owner, every=every, lease=lease)
        try:
            yield started is not None
        finally:
            if started is not None:
                # a run left unfinished blocks the job until its lease runs out: when the database went away
                # mid-run (a restart, a failover), finish once it is back
                await retry_unavailable(lambda: self.finish(name, started), deadline_s=lease.total_seconds())

    async def all(self) -> list[dict[str, Any]]:
        async with self.pool.connection() as conn:
            return await (await conn.execute(RUNS_SQL)).fetchall()
