"""A generated chat history for statistics tests and bench/stats.py: several stores, prompt variants,
models, errors, cancellations and feedback, spread over days. Rows go in with COPY (fast at 100k+)
and are returned too, so a test can compute every figure by hand."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

MODELS = ("gpt-4o-mini-2024-07-18", "gpt-4.1-mini", "offline-extractive-v1")
VARIANTS = ("v1", "v2")


@dataclass
class Generated:
    sessions: list[dict[str, Any]] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    feedback: dict[uuid.UUID, float] = field(default_factory=dict)


def generate(conninfo: str, *, stores: tuple[str, ...], sessions_per_store: int, turns_per_session: int,
             start: datetime, days: int, seed: int = 7) -> Generated:
    rnd = random.Random(seed)
    out = Generated()
    for store in stores:
        for _ in range(sessions_per_store):
            sid = uuid.UUID(int=rnd.getrandbits(128), version=4)
            created = start + timedelta(seconds=rnd.randrange(days * 86400))
            out.sessions.append({"session_id": sid, "store_id": store, "created_at": created})
            variant = rnd.choice(VARIANTS)
            model = rnd.choice(MODELS)
            at = created
            for _ in range(turns_per_session):
                at += timedelta(seconds=rnd.randrange(5, 600))
                out.messages.append({
                    "message_id": uuid.UUID(int=rnd.getrandbits(128), version=4), "session_id": sid,
                    "store_id": store, "role": "user", "status": "complete", "model": None,
                    "prompt_variant": None, "input_tokens": 0, "output_tokens": 0, "latency_ms": None,
                    "first_token_ms": None, "created_at": at,
                })
                status = rnd.choices(("complete", "error", "cancelled"), (85, 10, 5))[0]
                latency = rnd.randrange(300, 9000)
                first_token = rnd.randrange(100, latency) if status == "complete" else None
                mid = uuid.UUID(int=rnd.getrandbits(128), version=4)
                out.messages.append({
                    "message_id": mid, "session_id": sid, "store_id": store, "role": "assistant",
                    "status": status, "model": model, "prompt_variant": variant,
                    "input_tokens": rnd.randrange(200, 3000) if status != "cancelled" else 0,
                    "output_tokens": rnd.randrange(10, 600) if status == "complete" else 0,
                    "latency_ms": latency, "first_token_ms": first_token,
                    "created_at": at + timedelta(milliseconds=1),
                })
                if status == "complete" and rnd.random() < 0.3:
                    out.feedback[mid] = rnd.choice((0.0, 0.5, 1.0))
    columns = ("message_id", "session_id", "store_id", "role", "status", "model", "prompt_variant", "input_tokens",
               "output_tokens", "latency_ms", "first_token_ms", "created_at")
    with psycopg.connect(conninfo, autocommit=True) as conn, conn.transaction():
        with conn.cursor().copy("copy chat_sessions (session_id, store_id, created_at) from stdin") as cp:
            for s in out.sessions:
                cp.write_row((s["session_id"], s["store_id"], s["created_at"]))
        with conn.cursor().copy(f"copy chat_messages ({', '.join(columns)}) from stdin") as cp:
            for m in out.messages:
                cp.write_row(tuple(m[c] for c in columns))
        with conn.cursor().copy("copy message_feedback (message_id, store_id, score) from stdin") as cp:
            by_id = {m["message_id"]: m for m in out.messages}
            for mid, score in out.feedback.items():
                cp.write_row((mid, by_id[mid]["store_id"], score))
    return out


def default_start() -> datetime:
    return datetime(2026, 10, 1, tzinfo=UTC)
