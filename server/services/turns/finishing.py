"""Finishing a turn: its end stored (row, usage, stream index; the session let go and what is queued woken), its
last event sent, then the thread's older checkpoints pruned.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from langchain_core.messages import AIMessage
from langchain_core.messages.ai import UsageMetadata, add_usage
from psycopg_pool import PoolTimeout

from persistence.db import retry_unavailable
from server import metrics
from server.services.turns.events import Turn, ending_event, error_data
from server.services.turns.setup import TurnSetup

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """What a run has gathered so far, for its end to store."""

    parts: list[str] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)
    condense_usage: UsageMetadata | None = None  # the follow-up's rewrite (graph node `condense`), billed too
    model: str | None = None
    first_token_ms: int | None = None
    final: AIMessage | None = None
    handoff: dict[str, Any] | None = None  # the graph handed the shopper to a person: {"reason", "since"}


class Finisher:
    def __init__(self, setup: TurnSetup) -> None:
        self.setup = setup

    async def finish(self, turn: Turn, progress: Progress, status: str, error_code: str | None) -> None:
        """Store the turn's end (its row, usage and stream index: finish_turn also lets the session go and wakes
        the turns queued behind it, NOTIFY session_free), send its last event, end its log, then prune."""
        # the provider's own total for the answer's call (none when the turn ended before it did)
        usage = progress.final.usage_metadata if progress.final is not None else None
        if progress.condense_usage:
            usage = add_usage(usage, progress.condense_usage) if usage else progress.condense_usage
        latency_ms = int((time.perf_counter() - turn.started) * 1000)
        try:
            # the answer is in memory and the session stays claimed until this is stored: a database that is
            # away for a moment (a restart, a pooler's failover) is waited for, up to the turn's deadline
            row = await retry_unavailable(lambda: self.setup.messages.finish_turn(
                message_id=turn.message_id,
                status=status,
                content="".join(progress.parts),
                model=progress.model,
                input_tokens=int(usage["input_tokens"]) if usage else 0,
                output_tokens=int(usage["output_tokens"]) if usage else 0,
                latency_ms=latency_ms,
                first_token_ms=progress.first_token_ms,
                sources=progress.sources,
                error_code=error_code,
                stream_index=turn.stream_index(),
                run_id=turn.run_id,
            ), deadline_s=self.setup.turn_timeout.total_seconds())
            if row["run_id"] != turn.run_id:  # its lease ran out and another replica re-runs it: not this run's
                log.warning("a turn's lease was lost to a re-run; its result is dropped",
                            extra={"run_id": str(turn.run_id)})
                turn.emit("error", error_data("abandoned", turn.message_id))
                return
            metrics.record_turn(
                error_code or status, progress.model, int(row["input_tokens"]), int(row["output_tokens"]),
                progress.first_token_ms / 1000 if progress.first_token_ms is not None else None,
                time.perf_counter() - turn.started,
            )
            turn.emit(*ending_event(row))
        except Exception as exc:
            # the claim goes stale after turn_timeout and the next turn marks this row 'error'
            log.exception("could not store the end of a turn", extra={"run_id": str(turn.message_id)})
            away = isinstance(exc, psycopg.OperationalError | PoolTimeout)
            turn.emit("error", {"code": "database_unavailable" if away else "internal_error",
                                "message": "The turn could not be stored"})
        finally:
            turn.end()
        await self.prune(turn)  # after the answer is out, so it costs the shopper no latency

    async def prune(self, turn: Turn) -> None:
        """Drop the thread's older checkpoints (the stock saver's `aprune(keep_latest)`).

        The latest checkpoint holds the whole conversation (the model's history, Studio's view);
        older ones are full copies of shorter versions of it, which is what made storage quadratic.
        It runs after the turn released its session, so a next turn may already be writing: that is
        safe, since the prune works in a REPEATABLE READ snapshot and deletes only checkpoints older than
        the head it saw and blob versions only they used, none of which a newer checkpoint refers to. If
        two prunes of one thread collide, one fails and the next turn's prune catches up.
        """
        saver = self.setup.graph.checkpointer
        prune = getattr(saver, "aprune", None)
        if not self.setup.prune_checkpoints or prune is None:
            return
        try:
            await prune([str(turn.session_id)], strategy="keep_latest")
        except Exception as exc:  # storage catches up at the next turn; never fail a turn for it
            log.warning("checkpoint prune failed: %s", type(exc).__name__, extra={"run_id": str(turn.message_id)})
