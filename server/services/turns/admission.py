"""Admission: everything that can refuse a turn does so before a response starts. A message claims its session,
or waits in the session's queue, or interrupts the running turn, or is kept for the operator while the session
waits for a person; the store's prompt variant is chosen; then the turn is handed to the runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal
from uuid import UUID, uuid4

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

from persistence.checkpointer import LatestCheckpoint, PooledPostgresSaver
from persistence.db import retry_unavailable
from persistence.messages import TurnStart
from server import metrics
from server.errors import (
    AppError,
    ModelError,
    QueueFull,
    SessionBusy,
    SessionExpired,
    SessionNotFound,
    ShuttingDown,
)
from server.schemas import Message, check_metadata_size, check_text, message_out
from server.services.turns.events import DEFAULT_AUDIENCE, OnDisconnect, Turn, error_data
from server.services.turns.relay import Relay
from server.services.turns.running import TurnRunner
from server.services.turns.setup import TurnSetup

log = logging.getLogger(__name__)

OnBusy = Literal["enqueue", "reject", "interrupt"]
INTERRUPT_WAIT_S = 5.0  # how long an interrupting message waits for the stopped turn to let go of the session
QUEUE_CHECK_S = 1.0  # a queued turn looks again this often even without a notification


class Admission:
    def __init__(self, setup: TurnSetup, runner: TurnRunner, relay: Relay) -> None:
        self.setup = setup
        self.runner = runner
        self.relay = relay
        self._wake: dict[UUID, asyncio.Event] = {}  # sessions with turns queued here, and how many
        self._waiting: dict[UUID, int] = {}

    def _check_input(self, text: str, metadata: dict[str, Any]) -> str:
        text = check_text(text, "message", self.setup.max_message_chars)
        check_metadata_size(metadata, self.setup.max_metadata_bytes)
        return text

    async def start_turn(self, session_id: UUID, text: str, metadata: dict[str, Any],
                         on_disconnect: OnDisconnect | None = None, on_busy: OnBusy = "reject") -> Turn:
        """Start a turn, or refuse it before anything is stored. While another turn runs in the session,
        `on_busy` says what happens: reject (409), interrupt (stop it, then start), enqueue (store the message
        as 'queued'; it is answered after the running turn and those queued before it)."""
        if self.runner.draining:
            metrics.record_refusal("shutting_down")
            raise ShuttingDown()
        text = self._check_input(text, metadata)
        user_message_id, message_id = uuid4(), uuid4()
        started = time.perf_counter()
        variant = self.setup.variants.pick(session_id)

        latest: LatestCheckpoint | None = None

        async def begin() -> TurnStart:
            nonlocal latest
            saver = self.setup.graph.checkpointer
            latest = saver.latest(str(session_id)) if isinstance(saver, PooledPostgresSaver) else None
            return await self.setup.messages.begin_turn(
                session_id=session_id, user_msg_id=user_message_id, asst_msg_id=message_id, content=text,
                model=self.setup.model_name, prompt_variant=variant, metadata=metadata,
                stale_after=self.setup.turn_timeout, expire_after=self.setup.expire_after, then=latest)

        claim = await begin()
        position, prelude = 0, list[BaseMessage]()
        if claim.outcome == "busy" and on_busy == "interrupt":
            claim, prelude = await self._interrupt(session_id, begin)
        elif claim.outcome == "busy" and on_busy == "enqueue":
            claim, position = await self.setup.messages.enqueue_turn(
                session_id=session_id, user_msg_id=user_message_id, asst_msg_id=message_id, content=text,
                model=self.setup.model_name, metadata=metadata, max_queued=self.setup.max_queued,
                expire_after=self.setup.expire_after)
        detail = {"session_id": str(session_id)}
        if claim.outcome == "handoff":
            return await self._held_for_operator(claim, session_id, user_message_id, text, started)
        if claim.outcome not in ("ok", "queued"):
            metrics.record_refusal(claim.outcome)
        if claim.outcome == "not_found":
            raise SessionNotFound(detail=detail)
        if claim.outcome == "expired":
            raise SessionExpired(detail=detail)
        if claim.outcome == "busy":
            raise SessionBusy(detail=detail)
        if claim.outcome == "full":
            raise QueueFull(detail={**detail, "max_queued": self.setup.max_queued})
        assert claim.store_id is not None
        chosen = await self.setup.store_variant(claim.store_id, session_id)
        if chosen is not None and chosen != variant:  # the store weighs the variants its own way
            variant = chosen
            if claim.outcome == "ok":  # (a queued turn's row gets its variant when it is claimed)
                await self.setup.messages.set_prompt_variant(message_id, variant)
        turn = Turn(
            session_id=session_id,
            store_id=claim.store_id,
            user_id=claim.user_id,
            audience=claim.audience or DEFAULT_AUDIENCE,
            user_message_id=user_message_id,
            message_id=message_id,
            content=text,
            model=self.setup.model_name,
            prompt_variant=variant,
            started=started,
            on_disconnect=on_disconnect or self.setup.on_disconnect,
            prelude=prelude,
        )
        turn.emit("metadata", turn.metadata_event)
        if claim.outcome == "queued":
            turn.emit("queued", {"position": position})
        # a queued turn runs later, after the one before it has written the thread: it reads the thread then
        self.runner.launch(turn, self.runner.run(turn, latest) if claim.outcome == "ok" else self._run_when_free(turn))
        return turn

    async def _held_for_operator(self, claim: TurnStart, session_id: UUID, user_message_id: UUID, text: str,
                                 started: float) -> Turn:
        """A message to a session waiting for a person: stored (begin_turn did), no answer; its stream is
        `metadata` then `handoff`."""
        assert claim.store_id is not None
        opened = await self.setup.handoffs.open(session_id) if self.setup.handoffs is not None else None
        turn = Turn(session_id=session_id, store_id=claim.store_id, user_id=claim.user_id,
                    user_message_id=user_message_id, message_id=user_message_id, content=text, model="operator",
                    prompt_variant="", started=started)
        since = opened["started_at"] if opened else None
        turn.handoff = await self.setup.handoff_info(session_id, claim.store_id, since)
        turn.emit("metadata", {"session_id": str(session_id), "user_message_id": str(user_message_id),
                               "message_id": None, "run_id": None, "model": None})
        turn.emit("handoff", turn.handoff)
        turn.end()
        metrics.record_refusal("held_for_operator")
        return turn

    async def _interrupt(self, session_id: UUID, begin: Callable[[], Awaitable[TurnStart]]
                         ) -> tuple[TurnStart, list[BaseMessage]]:
        """Stop the session's running turn (here or on another replica) and start once its claim is released;
        still busy after INTERRUPT_WAIT_S (its replica did not answer) is a 409 like reject. The stopped turn
        left no checkpoint (it is written when a turn ends), so its question and partial answer are handed to
        the new turn for the model to see."""
        running = await self.setup.messages.running_turn(session_id)
        if running is not None:
            await self.relay.cancel_anywhere(running)
        deadline, pause = time.monotonic() + INTERRUPT_WAIT_S, 0.02
        claim = await begin()
        while claim.outcome == "busy" and time.monotonic() < deadline:
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.25)
            claim = await begin()
        prelude: list[BaseMessage] = []
        stopped = None
        if running is not None and claim.outcome == "ok":
            stopped = await self.setup.messages.get_stream(running)
        if stopped is not None and stopped["status"] == "cancelled":
            asked = await self.setup.messages.get(stopped["user_message_id"])
            if asked is not None:
                prelude.append(HumanMessage(content=asked["content"], id=str(asked["message_id"])))
            if stopped["content"]:
                prelude.append(AIMessage(content=stopped["content"], id=str(stopped["message_id"])))
        return claim, prelude

    async def _run_when_free(self, turn: Turn) -> None:
        """A queued turn: wait until the session is free and it is the oldest waiting (woken by finish_turn's
        NOTIFY, checked every QUEUE_CHECK_S anyway), claim the session, then run like any turn."""
        wake = self._wake.setdefault(turn.session_id, asyncio.Event())
        self._waiting[turn.session_id] = self._waiting.get(turn.session_id, 0) + 1
        give_up = time.monotonic() + self.setup.turn_timeout.total_seconds() * (self.setup.max_queued + 1)
        try:
            while True:
                wake.clear()
                claim = await retry_unavailable(lambda: self.setup.messages.begin_queued_turn(
                    session_id=turn.session_id, user_msg_id=turn.user_message_id, asst_msg_id=turn.message_id,
                    prompt_variant=turn.prompt_variant, stale_after=self.setup.turn_timeout),
                    deadline_s=self.setup.turn_timeout.total_seconds())
                if claim.outcome == "ok":
                    break
                if claim.outcome == "gone" or time.monotonic() > give_up:
                    await self._close_queued(turn, "error", "abandoned")
                    return
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancel that arrives as the
                # wait ends (here: cancelling one queued turn wakes the others just as theirs are cancelled)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(QUEUE_CHECK_S):
                        await wake.wait()
        except asyncio.CancelledError:
            await asyncio.shield(self._close_queued(turn, "cancelled", "cancelled"))
            raise
        finally:
            self._waiting[turn.session_id] -= 1
            if not self._waiting[turn.session_id]:
                del self._waiting[turn.session_id], self._wake[turn.session_id]
        turn.started = time.perf_counter()  # its latency counts from when it could run
        await self.runner.run(turn)

    async def _close_queued(self, turn: Turn, status: str, error_code: str) -> None:
        """A queued turn that will not run: its answer closed (the next waiting message may go), its stream ended."""
        try:
            await self.setup.messages.close_queued_turn(user_msg_id=turn.user_message_id,
                                                        asst_msg_id=turn.message_id, status=status,
                                                        error_code=error_code)
        except Exception as exc:  # recovery closes it later; the stream must end either way
            log.warning("could not close a queued turn: %s", type(exc).__name__, extra={"run_id": str(turn.message_id)})
        turn.emit("error", error_data(error_code, turn.message_id))
        turn.end()

    def on_session_free(self, message: dict[str, Any]) -> None:
        """A notification on SESSION_FREE: wake the turns of that session queued here."""
        wake = self._wake.get(UUID(str(message["session"])))
        if wake is not None:
            wake.set()

    async def run_to_end(self, session_id: UUID, text: str, metadata: dict[str, Any],
                         on_busy: OnBusy = "reject") -> tuple[Message | None, Message, dict[str, Any] | None]:
        """The non-streaming turn: (assistant message, user message, handoff); a failed model is a 502. A session
        waiting for a person gives no assistant message, and what the shopper is told (handoff_info)."""
        turn = await self.start_turn(session_id, text, metadata, on_busy=on_busy)
        if turn.handoff is not None and turn.task is None:
            row = await self.setup.messages.get(turn.user_message_id)
            assert row is not None
            return None, message_out(row), turn.handoff
        done: Message | None = None
        error: dict[str, Any] = {}
        async for event, data in turn.stream():
            if event == "done":
                done = data["message"]
            elif event == "error":
                error = data
        if done is None:
            # both rows are stored with their final status; the answer is an error body
            detail = {"message_id": str(turn.message_id)}
            if error.get("code") == "model_error":
                raise ModelError(detail=detail)
            raise AppError(detail=detail)
        user_row = await self.setup.messages.get(turn.user_message_id)
        assert user_row is not None
        return done, message_out(user_row), turn.handoff
