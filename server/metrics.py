"""Prometheus metrics (`GET /metrics`): turns, tokens, latencies, the pool and LangSmith's queue.

HTTP request counts and latency histograms per route template and status come from Litestar's
Prometheus middleware (prefix `sixshop_`); everything here is this service's own. Metrics live in
prometheus-client's default registry, one set per process (run one process per container, or put
PROMETHEUS_MULTIPROC_DIR in place for several workers).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120)

TURNS = Counter(
    "sixshop_chat_turns", "Chat turns by outcome (complete, model_error, internal_error, cancelled) and by "
    "refusal before any model call (busy, expired, not_found; held_for_operator: sent while a person is awaited)",
    ["outcome"],
)
HANDOFFS = Counter("sixshop_handoffs", "Shoppers handed to a person, by reason (asked, model, unanswered)", ["reason"])
TOKENS = Counter("sixshop_chat_tokens", "Tokens of finished turns, as reported by the model", ["direction", "model"])
FIRST_TOKEN_SECONDS = Histogram(
    "sixshop_chat_first_token_seconds", "From the request to the first streamed token", buckets=_LATENCY_BUCKETS
)
TURN_SECONDS = Histogram(
    "sixshop_chat_turn_seconds", "From the request to the stored final message", ["outcome"], buckets=_LATENCY_BUCKETS
)
DB_HOLD_SECONDS = Histogram(
    "sixshop_db_connection_hold_seconds", "How long a pooled connection is held per use (the database work)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
DB_WAIT_SECONDS = Histogram(
    "sixshop_db_connection_wait_seconds", "How long a request waited for a pooled connection",
    buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
)


def record_turn(outcome: str, model: str | None, input_tokens: int, output_tokens: int, first_token_s: float | None,
                total_s: float) -> None:
    TURNS.labels(outcome).inc()
    if model:
        TOKENS.labels("input", model).inc(input_tokens)
        TOKENS.labels("output", model).inc(output_tokens)
    if first_token_s is not None:
        FIRST_TOKEN_SECONDS.observe(first_token_s)
    TURN_SECONDS.labels(outcome).observe(total_s)


def record_refusal(outcome: str) -> None:
    TURNS.labels(outcome).inc()


def record_handoff(reason: str) -> None:
    HANDOFFS.labels(reason).inc()


class RuntimeCollector(Collector):
    """Values read at scrape time from the running process: pool state and LangSmith's queue."""

    def __init__(self) -> None:
        self.resources: Any = None

    def collect(self) -> Iterator[Metric]:
        res = self.resources
        if res is None:
            return
        stats: dict[str, int] = res.pool.get_stats()
        gauges = {
            "sixshop_db_pool_size": ("Connections the pool holds (busy and idle)", stats.get("pool_size", 0)),
            "sixshop_db_pool_available": ("Idle connections in the pool", stats.get("pool_available", 0)),
            "sixshop_db_pool_in_use": ("Connections lent out right now",
                                       stats.get("pool_size", 0) - stats.get("pool_available", 0)),
            "sixshop_db_pool_waiting": ("Requests waiting for a connection", stats.get("requests_waiting", 0)),
            "sixshop_db_pool_max": ("The pool's maximum size", stats.get("pool_max", 0)),
            "sixshop_langsmith_queue_depth": ("Trace operations waiting to be sent to LangSmith",
                                              res.tracing.queue_depth()),
        }
        for name, (doc, value) in gauges.items():
            yield GaugeMetricFamily(name, doc, value=value)
        yield CounterMetricFamily("sixshop_langsmith_send_errors", "Trace batches or feedback LangSmith did not take",
                                  value=res.tracing.send_errors)
        yield CounterMetricFamily("sixshop_db_pool_errors", "Failed connection attempts and connections lost",
                                  value=stats.get("connections_errors", 0) + stats.get("connections_lost", 0))


RUNTIME = RuntimeCollector()
REGISTRY.register(RUNTIME)
