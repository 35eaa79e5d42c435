"""Leases: a running turn's claim is renewed while its replica lives; a turn whose lease ran out (its replica died)
is taken by another replica and re-run from the checkpoint before it, up to max_attempts runs in all.
"""

from __future__ import annotations

import asyncio
import logging
import time

from server.services.turns.events import DEFAULT_AUDIENCE, Turn, restart_data
from server.services.turns.running import TurnRunner
from server.services.turns.setup import TurnSetup

log = logging.getLogger(__name__)


class Leases:
    def __init__(self, setup: TurnSetup, runner: TurnRunner) -> None:
        self.setup = setup
        self.runner = runner

    async def keep_leases(self) -> None:
        """Every third of the lease: renew the leases of the turns running here (one statement), and take the
        turns whose lease ran out (their replica died) to re-run them here."""
        assert self.setup.lease is not None
        lease_s = self.setup.lease.total_seconds()
        quiet_until = 0.0
        while True:
            await asyncio.sleep(lease_s / 3)
            began = time.monotonic()
            try:
                await self.renew_leases()
                # a renewal that waited (a pooler holds statements while PostgreSQL is away) is an outage too
                if time.monotonic() - began > lease_s / 3:
                    quiet_until = time.monotonic() + lease_s
                elif not self.runner.draining and time.monotonic() >= quiet_until:
                    await self.reclaim()
            except Exception as exc:  # the database may be away: the next round tries again
                log.warning("turn leases: %s", type(exc).__name__)
                # nobody could renew while it was away: once it is back, give the live replicas a whole lease to
                # renew theirs before taking any turn for dead (or an outage longer than a lease re-runs them all)
                quiet_until = time.monotonic() + lease_s

    async def renew_leases(self) -> None:
        """One statement, also when no turn runs here: it tells whether the database answers promptly."""
        assert self.setup.lease is not None
        runs = self.runner.leased()
        held = await self.setup.messages.renew_leases({m: t.run_id or m for m, t in runs.items()}, self.setup.lease)
        for message_id, turn in runs.items():
            if message_id not in held and turn.holds_lease and turn.task is not None:
                # re-run elsewhere (this replica was unreachable past its lease): stop spending tokens on it;
                # its end is not stored (finish_turn stores only the run holding the answer)
                log.warning("a turn's lease was lost; stopping it", extra={"run_id": str(turn.run_id)})
                turn.task.cancel()

    async def reclaim(self, limit: int = 10) -> list[Turn]:
        """Re-run here the turns whose lease ran out (at most `limit` per round), from the checkpoint before them;
        those already re-run once are closed error/abandoned by the same statement."""
        assert self.setup.lease is not None
        turns = []
        for taken in await self.setup.messages.reclaim_turns(self.setup.lease, self.setup.max_attempts, limit):
            turn = Turn(session_id=taken.session_id, store_id=taken.store_id, user_id=taken.user_id,
                        user_message_id=taken.user_message_id, message_id=taken.message_id, content=taken.content,
                        model=self.setup.model_name,
                        prompt_variant=taken.prompt_variant or self.setup.variants.pick(taken.session_id),
                        started=time.perf_counter(), run_id=taken.run_id, attempt=taken.attempt,
                        audience=taken.audience or DEFAULT_AUDIENCE)
            log.warning("re-running a turn whose replica died (attempt %d)", taken.attempt,
                        extra={"session_id": str(taken.session_id), "run_id": str(taken.run_id)})
            turn.emit("restart", restart_data(turn.attempt, taken.run_id))
            turn.emit("metadata", turn.metadata_event)
            self.runner.launch(turn, self.runner.run(turn))
            turns.append(turn)
        return turns
