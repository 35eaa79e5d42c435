"""The checkpointer exactly as the service configures it passes langgraph-checkpoint-conformance."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.conformance import checkpointer_test, validate

from persistence.checkpointer import make_checkpointer
from persistence.db import PoolConfig, open_pool
from persistence.migrations import migrate
from tests.conftest import create_database


async def test_service_checkpointer_conformance(pg_server_conninfo: str) -> None:
    @checkpointer_test(name="sixshop AsyncPostgresSaver (service pool and settings)")
    async def service_saver() -> AsyncGenerator[BaseCheckpointSaver, None]:
        # a fresh database per capability suite, set up by our own migrate() as `serve` does
        pool = await open_pool(PoolConfig(conninfo=create_database(pg_server_conninfo, "conformance"),
                                          min_size=1, max_size=4))
        try:
            await migrate(pool)
            yield make_checkpointer(pool)
        finally:
            await pool.close()

    report = await validate(service_saver)
    failures = {name: r.failures for name, r in report.results.items() if r.failures}
    assert report.passed_all_base(), failures
    assert report.results["prune"].detected and report.results["prune"].passed is True, failures
    assert report.passed_all(), failures  # every capability the saver has (copy_thread too) passes
    assert {n for n, r in report.results.items() if r.passed} >= {"put", "put_writes", "get_tuple", "list",
                                                                  "delete_thread", "prune"}
