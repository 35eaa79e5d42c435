"""Operations: /health for people and dashboards, /health/live and /health/ready for orchestrators and load
balancers, /metrics for Prometheus."""

from __future__ import annotations

import time

import psycopg
from litestar import Response, get
from litestar.datastructures import State
from litestar.plugins.prometheus import PrometheusController
from psycopg_pool import PoolTimeout

from server.errors import DatabaseUnavailable, ShuttingDown
from server.http.access import access
from server.http.deps import resources_of
from server.resources import Resources
from server.schemas import DatabaseHealth, Health, Liveness, Readiness

VERSION = "0.1.0"


async def ping_database(res: Resources) -> DatabaseHealth:
    try:
        t0 = time.perf_counter()
        async with res.pool.connection(timeout=2.0) as conn:
            await conn.execute("select 1")
        return DatabaseHealth(ok=True, latency_ms=round((time.perf_counter() - t0) * 1000, 2))
    except (psycopg.Error, PoolTimeout, OSError):
        return DatabaseHealth(ok=False, latency_ms=None)


@get("/health", tags=["operations"], opt=access("public"))
async def health(state: State) -> Response[Health]:
    res = resources_of(state)
    database = await ping_database(res)
    body = Health(
        status="ok" if database.ok else "degraded",
        database=database,
        model=res.chat.model_name,
        retriever=res.knowledge.backend,
        tracing=res.settings.tracing_enabled,
        version=VERSION,
    )
    return Response(body, status_code=200 if database.ok else 503)


@get("/health/live", tags=["operations"], opt=access("public"))
async def live() -> Liveness:
    """The process answers: restart it only when this fails (no database call, so an outage restarts nothing)."""
    return Liveness(status="alive")


@get("/health/ready", tags=["operations"], opt=access("public"))
async def ready(state: State) -> Readiness:
    """Send traffic here: 200 when the database answers and the process is not draining, else 503
    (`shutting_down` from SIGTERM on, `database_unavailable` while the database is away)."""
    res = resources_of(state)
    if res.draining:
        raise ShuttingDown(detail={"running_turns": res.chat.running_turns})
    database = await ping_database(res)
    if not database.ok:
        raise DatabaseUnavailable()
    return Readiness(status="ready", database=database)


class MetricsController(PrometheusController):
    """GET /metrics: Prometheus text format."""

    path = "/metrics"
    include_in_schema = True
    tags = ["operations"]
    opt = access("public")
