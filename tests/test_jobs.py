"""background_jobs: a job runs once per interval across processes, one run at a time, taken over when its
runner died (the lease); claims are single statements, so they work through a transaction pooler."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from persistence.db import Pool
from persistence.jobs import JobRepository
from tests.conftest import execute


async def test_one_claim_wins_among_simultaneous_ones(pool: Pool) -> None:
    jobs = JobRepository(pool)
    claims = await asyncio.gather(*(jobs.claim("race", owner=f"p{i}", every=timedelta(0), lease=timedelta(minutes=5))
                                    for i in range(8)))
    assert sum(c is not None for c in claims) == 1


async def test_once_per_interval_and_never_beside_a_running_one(pool: Pool, migrated_url: str) -> None:
    jobs = JobRepository(pool)
    hour, lease = timedelta(hours=1), timedelta(minutes=5)
    async with jobs.run("hourly", owner="a", every=hour, lease=lease) as mine:
        assert mine
        # while it runs, nobody else runs it, whatever the interval
        assert await jobs.claim("hourly", owner="b", every=timedelta(0), lease=lease) is None
    assert await jobs.claim("hourly", owner="b", every=hour, lease=lease) is None  # ran within the hour
    execute(migrated_url, "update background_jobs set started_at = started_at - interval '61 minutes', "
                          "finished_at = finished_at - interval '61 minutes' where name = 'hourly'")
    assert await jobs.claim("hourly", owner="b", every=hour, lease=lease) is not None  # due again
    # b died mid-run: its claim blocks others until the lease runs out
    assert await jobs.claim("hourly", owner="c", every=timedelta(0), lease=lease) is None
    execute(migrated_url, "update background_jobs set started_at = started_at - interval '6 minutes' "
                          "where name = 'hourly'")
    assert await jobs.claim("hourly", owner="c", every=timedelta(0), lease=lease) is not None
    row = next(r for r in await jobs.all() if r["name"] == "hourly")
    assert (row["runs"], row["owner"]) == (3, "c")


async def test_a_claim_whose_answer_was_lost_is_taken_again_by_its_own_process(pool: Pool) -> None:
    """The claim committed but its process never heard (the connection dropped): the same process claims again
    at its next round instead of waiting for the lease; others still may not."""
    jobs = JobRepository(pool)
    hour = timedelta(hours=1)
    assert await jobs.claim("lost", owner="p1", every=timedelta(0), lease=hour) is not None  # never finished
    assert await jobs.claim("lost", owner="p2", every=timedelta(0), lease=hour) is None
    assert await jobs.claim("lost", owner="p1", every=timedelta(0), lease=hour) is not None
