"""Operations: /health for load balancers and people, /metrics for Prometheus."""

from __future__ import annotations

import time

import psycopg
from litestar import Response, get
from litestar.datastructures import State
from litestar.plugins.prometheus import PrometheusController
from psycopg_pool import PoolTimeout

from server.http.deps import resources_of
from server.schemas import DatabaseHealth, Health

VERSION = "0.1.0"


@get("/health", tags=["operations"])
async def health(state: State) -> Response[Health]:
    res = resources_of(state)
    ok, latency = True, None
    try:
        t0 = time.perf_counter()
        async with res.pool.connection(timeout=2.0) as conn:
            await conn.execute("select 1")
        latency = round((time.perf_counter() - t0) * 1000, 2)
    except (psycopg.Error, PoolTimeout, OSError):
        ok = False
    body = Health(
        status="ok" if ok else "degraded",
        database=DatabaseHealth(ok=ok, latency_ms=latency),
        model=res.chat.model_name,
        retriever=res.knowledge.backend,
        tracing=res.settings.tracing_enabled,
        version=VERSION,
    )
    return Response(body, status_code=200 if ok else 503)


class MetricsController(PrometheusController):
    """GET /metrics: Prometheus text format."""

    path = "/metrics"
    include_in_schema = True
    tags = ["operations"]
