"""Store and session statistics against figures computed by hand (in Python) from a generated history."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from persistence.db import Pool
from persistence.sessions import SessionRepository
from persistence.stats import STORE_STATS_SQL, StatsRepository
from server.errors import ValidationFailed
from server.services.analytics import ChatAnalyticsService
from tests.conftest import fetch_all
from tests.stats_data import Generated, default_start, generate

PRICES = {"gpt-4o-mini": {"input": 0.15, "output": 0.60}, "gpt-4o": {"input": 2.5, "output": 10.0},
          "gpt-4.1-mini": {"input": 0.40, "output": 1.60}}
SEOUL = ZoneInfo("Asia/Seoul")


@pytest.fixture(scope="module")
def data(migrated_url: str) -> Generated:
    return generate(migrated_url, stores=("alpha", "beta", "gamma"), sessions_per_store=40, turns_per_session=3,
                    start=default_start(), days=10)


@pytest.fixture(scope="module")
def analytics(pool: Pool) -> ChatAnalyticsService:
    return ChatAnalyticsService(StatsRepository(pool, PRICES), SessionRepository(pool), default_tz="Asia/Seoul")


def _price(model: str | None) -> tuple[float, float]:
    if model is None:
        return 0.0, 0.0
    keys = [k for k in PRICES if model == k or model.startswith(k + "-")]
    if not keys:
        return 0.0, 0.0
    best = max(keys, key=len)  # "gpt-4o-mini-2024-07-18" is gpt-4o-mini, not gpt-4o
    return PRICES[best]["input"], PRICES[best]["output"]


def _percentile_cont(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def expected(rows: list[dict[str, Any]], feedback: dict[Any, float]) -> dict[str, Any]:
    done = [r for r in rows if r["role"] == "assistant" and r["status"] == "complete"]
    finished = [r for r in rows if r["role"] == "assistant" and r["status"] != "streaming"]
    scores = [feedback[r["message_id"]] for r in rows if r["message_id"] in feedback]
    cost = 0.0
    for r in rows:
        pin, pout = _price(r["model"])
        cost += (r["input_tokens"] * pin + r["output_tokens"] * pout) / 1_000_000
    return {
        "message_count": len(rows),
        "turn_count": sum(r["role"] == "assistant" for r in rows),
        "session_count": len({r["session_id"] for r in rows}),
        "input_tokens": sum(r["input_tokens"] for r in rows),
        "output_tokens": sum(r["output_tokens"] for r in rows),
        "cost_usd": cost,
        "avg_latency_ms": _mean([r["latency_ms"] for r in done]),
        "p50_latency_ms": _percentile_cont([r["latency_ms"] for r in done], 0.5),
        "p95_latency_ms": _percentile_cont([r["latency_ms"] for r in done], 0.95),
        "avg_first_token_ms": _mean([r["first_token_ms"] for r in done]),
        "error_rate": (sum(r["status"] == "error" for r in finished) / len(finished)) if finished else 0.0,
        "feedback_count": len(scores),
        "avg_feedback_score": _mean(scores),
    }


def _same(got: Any, want: dict[str, Any], what: str) -> None:
    for key, value in want.items():
        actual = getattr(got, key) if not isinstance(got, dict) else got[key]
        if isinstance(value, float) or isinstance(actual, float):
            assert actual == pytest.approx(value, rel=1e-6, abs=1e-9), (what, key)
        else:
            assert actual == value, (what, key)


def _group(rows: list[dict[str, Any]], key: Callable[[dict[str, Any]], Any]) -> dict[Any, list[dict[str, Any]]]:
    groups: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[key(r)].append(r)
    return groups


async def test_store_totals_and_breakdowns_match_hand_computed(data: Generated,
                                                               analytics: ChatAnalyticsService) -> None:
    for store in ("alpha", "beta", "gamma"):
        rows = [m for m in data.messages if m["store_id"] == store]  # only this store's rows
        stats = await analytics.store_stats(store, None, None)
        assert stats.tz == "Asia/Seoul" and len(stats.daily) >= 10 and len(stats.by_model) == 3
        assert len(stats.by_prompt_variant) == 2 and stats.feedback_count > 0 and 0 < stats.error_rate < 1
        _same(stats, {**expected(rows, data.feedback)}, f"{store} total")

        by_day = _group(rows, lambda r: r["created_at"].astimezone(SEOUL).date())
        assert [d.date for d in stats.daily] == sorted(by_day)
        for bucket in stats.daily:
            _same(bucket, expected(by_day[bucket.date], data.feedback), f"{store} {bucket.date}")

        turns = [r for r in rows if r["role"] == "assistant"]
        by_variant = _group(turns, lambda r: r["prompt_variant"])
        assert [v.prompt_variant for v in stats.by_prompt_variant] == sorted(by_variant)
        for group in stats.by_prompt_variant:
            _same(group, expected(by_variant[group.prompt_variant], data.feedback), f"{store} {group.prompt_variant}")

        by_model = _group(turns, lambda r: r["model"])
        assert [m.model for m in stats.by_model] == sorted(by_model)
        for group in stats.by_model:
            _same(group, expected(by_model[group.model], data.feedback), f"{store} {group.model}")
    offline = [m for m in (await analytics.store_stats("alpha", None, None)).by_model
               if m.model == "offline-extractive-v1"]
    assert offline and offline[0].output_tokens > 0 and offline[0].cost_usd == 0  # unpriced: free, not an error


async def test_date_range_and_time_zone(data: Generated, analytics: ChatAnalyticsService) -> None:
    start = default_start() + timedelta(days=3, hours=5)
    end = start + timedelta(days=2, hours=7)
    rows = [m for m in data.messages if m["store_id"] == "beta" and start <= m["created_at"] < end]
    stats = await analytics.store_stats("beta", start, end, "UTC")
    _same(stats, expected(rows, data.feedback), "beta range")
    by_day = _group(rows, lambda r: r["created_at"].date())  # UTC days this time
    assert [d.date for d in stats.daily] == sorted(by_day)
    assert [d.message_count for d in stats.daily] == [len(by_day[d]) for d in sorted(by_day)]
    with pytest.raises(ValidationFailed):
        await analytics.store_stats("beta", None, None, "Mars/Olympus")
    with pytest.raises(ValidationFailed):
        await analytics.store_stats("beta", end, start)


async def test_an_unknown_store_has_zero_figures(data: Generated, analytics: ChatAnalyticsService) -> None:
    stats = await analytics.store_stats("nobody", None, None)
    assert (stats.message_count, stats.session_count, stats.cost_usd, stats.error_rate) == (0, 0, 0.0, 0.0)
    assert stats.p95_latency_ms is None and stats.daily == [] and stats.by_model == []


async def test_session_stats(data: Generated, analytics: ChatAnalyticsService) -> None:
    session = data.sessions[5]
    rows = [m for m in data.messages if m["session_id"] == session["session_id"]]
    stats = await analytics.session_stats(session["session_id"])
    want = expected(rows, data.feedback)
    want.pop("session_count")
    _same(stats, want, "session")


def test_store_stats_are_served_by_the_store_index(data: Generated, migrated_url: str) -> None:
    import psycopg
    from psycopg.types.json import Jsonb

    params = {"store_id": "alpha", "from": datetime(2026, 10, 2, tzinfo=SEOUL), "to": None, "tz": "UTC",
              "prices": Jsonb(PRICES)}
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        conn.execute("analyze chat_messages")
        conn.execute("set enable_seqscan = off")  # small table; at 100k a store the planner picks it anyway
        plan = "\n".join(r[0] for r in conn.execute("explain " + STORE_STATS_SQL, params))
    assert "chat_messages_store_created_idx" in plan, plan
    assert fetch_all(migrated_url, "select count(*) as n from chat_messages")[0]["n"] == len(data.messages)
