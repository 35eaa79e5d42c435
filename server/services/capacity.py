"""The capacity report: when to move from one RDS instance to Aurora, or add Redis.

The seed's criteria (ARCHITECTURE.md): sustained CPU above 80 %, connections near 100, more than
100k sessions a month. From inside the service we can measure the last two, plus what explains them:
peak client connections against `max_connections` (every process samples pg_stat_activity every
CAPACITY_SAMPLE_SECONDS), database latency p95 from each pool's own timing, 30-day sessions and
messages, and the size of the message and checkpoint tables. CPU is not visible from SQL on RDS;
the report says so instead of guessing.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from persistence.capacity import CapacityRepository
from persistence.db import Pool, TimedPool
from persistence.jobs import JobRepository, poll_seconds, process_name

log = logging.getLogger(__name__)
SAMPLE_JOB = "capacity-sample"
SAMPLE_LEASE = timedelta(minutes=1)

NEAR = 0.8  # a threshold is "near" from 80 % of its limit


@dataclass(frozen=True)
class Limits:
    connections: int = 100  # "connections near 100"
    sessions_per_month: int = 100_000  # "more than 100k sessions a month"


def status_of(value: float | None, limit: float) -> str:
    if value is None:
        return "unknown"
    if value >= limit:
        return "crossed"
    if value >= NEAR * limit:
        return "near"
    return "ok"


class CapacityService:
    def __init__(self, repo: CapacityRepository, pool: Pool, limits: Limits, window_days: int = 30) -> None:
        self.repo = repo
        self.pool = pool
        self.limits = limits
        self.window = timedelta(days=window_days)

    def _pool_latency(self) -> tuple[float | None, float | None, int]:
        if not isinstance(self.pool, TimedPool):
            return None, None, 0
        times = self.pool.hold_times
        p50, p95 = times.percentile(0.5), times.percentile(0.95)
        return (p50 * 1000 if p50 is not None else None, p95 * 1000 if p95 is not None else None, len(times))

    async def sample(self) -> dict[str, Any]:
        stats = self.pool.get_stats()
        p50, p95, n = self._pool_latency()
        return await self.repo.sample(
            process=process_name(), pool_size=stats.get("pool_size", 0),
            pool_in_use=stats.get("pool_size", 0) - stats.get("pool_available", 0), p50_ms=p50, p95_ms=p95, samples=n,
        )

    async def report(self) -> dict[str, Any]:
        found = await self.repo.figures(self.window)
        volume, conns = found["volume"], found["connections"]
        peak = max(int(conns["peak"] or 0), int(conns["current"]))
        max_connections = int(conns["max_connections_now"])
        sessions = int(volume["sessions"])
        _, p95_here, n_here = self._pool_latency()
        recent = [{"process": r["process"], "p50_ms": r["db_p50_ms"], "p95_ms": r["db_p95_ms"],
                   "samples": r["db_samples"], "sampled_at": r["sampled_at"].isoformat()} for r in found["latency"]]
        sizes = found["sizes"]
        checkpoint_bytes = sum(sizes.get(t, 0) for t in ("checkpoints", "checkpoint_blobs", "checkpoint_writes"))
        thresholds: list[dict[str, Any]] = [
            {
                "name": "connections", "value": peak, "limit": self.limits.connections,
                "status": status_of(peak, self.limits.connections),
                "detail": f"peak client connections over {self.window.days} days (now {conns['current']}, "
                          f"server max_connections {max_connections})",
                "advice": "put RDS Proxy in front or move to Aurora; lower DB_POOL_MAX per process",
            },
            {
                "name": "sessions_per_month", "value": sessions, "limit": self.limits.sessions_per_month,
                "status": status_of(sessions, self.limits.sessions_per_month),
                "detail": f"sessions created in the last {self.window.days} days",
                "advice": "move to Aurora (read replicas for statistics); keep hot turn claims and rate limits "
                          "in Redis",
            },
            {
                "name": "max_connections", "value": peak, "limit": max_connections,
                "status": status_of(peak, max_connections),
                "detail": "peak client connections against this server's max_connections",
                "advice": "raise max_connections (instance class) or pool harder",
            },
            {
                "name": "cpu", "value": None, "limit": 80, "status": "unknown",
                "detail": "sustained CPU % is not visible from SQL on RDS: read CloudWatch CPUUtilization",
                "advice": "above 80 % sustained: a larger instance, or Aurora",
            },
        ]
        return {
            "generated_at": datetime.now(UTC).isoformat(),
            "window_days": self.window.days,
            "sessions": sessions,
            "messages": int(volume["messages"]),
            "active_stores": int(volume["active_stores"]),
            "connections": {"peak": peak, "current": int(conns["current"]), "max_connections": max_connections,
                            "samples": int(conns["samples"])},
            "db_latency_ms": {
                "p95_this_process": p95_here, "samples_this_process": n_here,
                "p95_peak_sampled": conns["db_p95_ms_peak"], "recent_by_process": recent,
                "source": "time each pooled connection is held per use, measured by the pool wrapper",
            },
            "table_bytes": sizes,
            "checkpoint_bytes": checkpoint_bytes,
            "thresholds": thresholds,
            "attention": [t["name"] for t in thresholds if t["status"] in ("near", "crossed")],
        }

    async def run_sampler(self, every_s: float) -> None:
        """Sample forever, once every `every_s` across all replicas (a background task of each server process:
        whichever claims the interval in background_jobs takes the sample)."""
        jobs, every = JobRepository(self.pool), timedelta(seconds=every_s)
        while True:
            try:
                async with jobs.run(SAMPLE_JOB, owner=process_name(), every=every, lease=SAMPLE_LEASE) as mine:
                    if mine:
                        await self.sample()
            except Exception as exc:  # the database may be away for a moment; the next sample will say so
                log.warning("capacity sample failed: %s", type(exc).__name__)
            await asyncio.sleep(poll_seconds(every_s))


def render(report: dict[str, Any]) -> str:
    """The report as text, for `sixshop-agent capacity`."""
    lines = [
        f"capacity report, {report['window_days']} days to {report['generated_at']}",
        f"  sessions {report['sessions']:,}  messages {report['messages']:,}  stores {report['active_stores']:,}",
        f"  connections peak {report['connections']['peak']} / max_connections "
        f"{report['connections']['max_connections']} (now {report['connections']['current']}, "
        f"{report['connections']['samples']} samples)",
    ]
    lat = report["db_latency_ms"]
    sampled = ", ".join(f"{r['process']} p95 {r['p95_ms']:.1f} ms" for r in lat["recent_by_process"]) or "none"
    lines.append(f"  db latency p95, last hour by process: {sampled}")
    sizes = report["table_bytes"]
    lines.append("  tables: " + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in sorted(sizes.items())))
    lines.append(f"  checkpoints total {report['checkpoint_bytes'] / 1e6:.1f} MB")
    for t in report["thresholds"]:
        value = "?" if t["value"] is None else f"{t['value']:,}"
        lines.append(f"  [{t['status']:>7}] {t['name']}: {value} of {t['limit']:,} - {t['detail']}")
        if t["status"] in ("near", "crossed"):
            lines.append(f"            -> {t['advice']}")
    return "\n".join(lines)
