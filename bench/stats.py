"""Store statistics at scale: how long GET /stats takes for a store with 100k messages.

    python bench/stats.py [--messages 100000] [--runs 20]

Generates a history (tests/stats_data.py: variants, models, errors, feedback over 30 days) for one
big store plus two others of half its size on a throwaway embedded PostgreSQL, then times
`ChatAnalyticsService.store_stats` (one SQL statement: totals, daily buckets, per variant and per
model) for the whole range and for the last 7 days, and prints p50/p95.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _venv import reexec_in_venv

    reexec_in_venv(__file__)

import argparse
import asyncio
import statistics
import time
from datetime import timedelta

ROOT = Path(__file__).resolve().parent.parent

from bench._throwaway import throwaway_postgres  # noqa: E402
from persistence.db import PoolConfig, open_pool  # noqa: E402
from persistence.migrations import migrate  # noqa: E402
from persistence.sessions import SessionRepository  # noqa: E402
from persistence.stats import StatsRepository  # noqa: E402
from server.services.analytics import ChatAnalyticsService  # noqa: E402
from server.settings import DEFAULT_PRICES  # noqa: E402
from tests.stats_data import default_start, generate  # noqa: E402


async def run(conninfo: str, messages: int, runs: int, explain: bool) -> None:
    pool = await open_pool(PoolConfig(conninfo=conninfo, min_size=1, max_size=4))
    try:
        await migrate(pool)
        turns = 5
        sessions = max(1, messages // (2 * turns))
        t0 = time.perf_counter()
        generate(conninfo, stores=("big",), sessions_per_store=sessions, turns_per_session=turns,
                 start=default_start(), days=30, seed=1)
        generate(conninfo, stores=("other-1", "other-2"), sessions_per_store=sessions // 2, turns_per_session=turns,
                 start=default_start(), days=30, seed=2)
        async with pool.connection() as conn:
            await conn.execute("vacuum analyze chat_messages")
            await conn.execute("vacuum analyze message_feedback")
            cur = await conn.execute("select count(*) as n from chat_messages where store_id = 'big'")
            row = await cur.fetchone()
        print(f"# generated {row['n'] if row else 0} messages for store 'big' (+ two stores of half) "
              f"in {time.perf_counter() - t0:.1f} s")
        if explain:
            from psycopg.types.json import Jsonb

            from persistence.stats import STORE_STATS_SQL, WORK_MEM_SQL

            async with pool.connection() as conn, conn.transaction():
                await conn.execute(WORK_MEM_SQL)
                cur = await conn.execute("explain (analyze, buffers) " + STORE_STATS_SQL,
                                         {"store_id": "big", "from": None, "to": None, "tz": "Asia/Seoul",
                                          "prices": Jsonb(DEFAULT_PRICES)})
                print("\n".join(r["QUERY PLAN"] for r in await cur.fetchall()))
        service = ChatAnalyticsService(StatsRepository(pool, DEFAULT_PRICES), SessionRepository(pool),
                                       default_tz="Asia/Seoul")
        end = default_start() + timedelta(days=30)
        for label, start in (("30 days", None), ("last 7 days", end - timedelta(days=7))):
            times = []
            for _ in range(runs):
                t = time.perf_counter()
                stats = await service.store_stats("big", start, None)
                times.append((time.perf_counter() - t) * 1000)
            times.sort()
            p95 = times[min(len(times) - 1, int(len(times) * 0.95))]
            print(f"store_stats {label}: {stats.message_count} messages, {len(stats.daily)} days, "
                  f"{len(stats.by_prompt_variant)} variants, {len(stats.by_model)} models: "
                  f"p50 {statistics.median(times):.0f} ms, p95 {p95:.0f} ms")
    finally:
        await pool.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--explain", action="store_true", help="print the plan of the 30-day query")
    args = parser.parse_args()
    with throwaway_postgres() as pg:
        asyncio.run(run(pg.conninfo, args.messages, args.runs, args.explain))
    return 0


if __name__ == "__main__":
    sys.exit(main())
