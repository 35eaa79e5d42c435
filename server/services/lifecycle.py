"""The lifecycle job in the service (once every SESSION_CLEANUP_INTERVAL_MINUTES across all replicas) and for
cron (`purge`)."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from persistence.db import Pool
from persistence.jobs import JobRepository, poll_seconds, process_name
from persistence.lifecycle import LifecycleReport, recover_abandoned_turns, run_lifecycle
from server.settings import Settings

log = logging.getLogger(__name__)
JOB = "lifecycle"
# a run whose process died is taken over after this long (a live run of a big purge takes far less)
LEASE = timedelta(minutes=15)


class LifecycleJob:
    def __init__(self, pool: Pool, settings: Settings, batch: int = 500) -> None:
        self.pool = pool
        self.jobs = JobRepository(pool)
        self.idle = timedelta(hours=settings.session_expire_hours)
        self.keep = timedelta(days=settings.hard_delete_after_days)
        self.every_s = settings.session_cleanup_interval_minutes * 60
        self.turn_timeout = timedelta(seconds=settings.turn_timeout_seconds)
        self.queue_timeout = self.turn_timeout * (settings.max_queued_turns + 1)  # the longest a queue can take
        self.batch = batch

    async def recover(self) -> tuple[int, int]:
        """Turns of dead processes (left streaming past TURN_TIMEOUT_SECONDS): marked error, claims released."""
        async with self.pool.connection() as conn:
            turns, claims = await recover_abandoned_turns(conn, self.turn_timeout, self.queue_timeout)
        if turns:
            log.warning("closed %d abandoned turns (a process died mid-turn), released %d session claims",
                        turns, claims)
        return turns, claims

    async def run_once(self, *, dry_run: bool = False, every: timedelta = timedelta(0)) -> LifecycleReport:
        """Run the job unless another process is running it (or, with `every`, ran it that recently)."""
        if dry_run:  # reads only: it neither needs nor takes the job's turn
            async with self.pool.connection() as conn:
                return await run_lifecycle(conn, idle=self.idle, keep=self.keep, dry_run=True)
        async with self.jobs.run(JOB, owner=process_name(), every=every, lease=LEASE) as mine:
            if not mine:
                return LifecycleReport(ran=False)
            await self.recover()
            async with self.pool.connection() as conn:
                return await run_lifecycle(conn, idle=self.idle, keep=self.keep, batch=self.batch)

    async def run_forever(self) -> None:
        every = timedelta(seconds=self.every_s)
        while True:
            try:
                report = await self.run_once(every=every)
                if report.ran and (report.expired or report.purged_sessions):
                    log.info("lifecycle: %s", report.summary())
            except Exception as exc:  # the database may be away; the next round tries again
                log.warning("lifecycle job failed: %s", type(exc).__name__)
            await asyncio.sleep(poll_seconds(self.every_s))


async def run_purge(pool: Pool, settings: Settings, dry_run: bool) -> LifecycleReport:
    return await LifecycleJob(pool, settings).run_once(dry_run=dry_run)


__all__ = ["LifecycleJob", "LifecycleReport", "run_purge"]
