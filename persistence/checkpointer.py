"""The LangGraph checkpointer on the shared pool: a session's memory is its thread's checkpoint."""

from __future__ import annotations

from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

from persistence.db import Pool


def make_checkpointer(pool: Pool) -> AsyncPostgresSaver:
    return AsyncPostgresSaver(pool)
