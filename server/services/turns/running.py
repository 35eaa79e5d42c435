"""Running a turn: the graph streamed into the turn's event log (sources, tokens, custom events, the handoff), the
model's errors and the deadline turned into the turn's status, the end handed to finishing; and the turns running
in this process, which only this part launches, finds and cancels. It knows nothing of how a turn was admitted,
nor of HTTP (tests/test_layout.py).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable
from typing import Any
from uuid import UUID

import psycopg
from langchain_core.messages import HumanMessage
from langchain_core.messages.ai import add_usage
from langchain_core.runnables import RunnableConfig
from langgraph.types import StreamMode
from psycopg_pool import PoolTimeout

from graph.graph import ModelCallError, searched_as_asked
from graph.models import content_text
from graph.retrieval import Passage, ScopedRetriever, SearchAhead
from graph.state import ChatContext
from persistence.checkpointer import LatestCheckpoint, using_prefetched
from persistence.db import POOL_WAIT_S
from server import metrics
from server.services.turns.events import HANDOFF_MODEL, Turn
from server.services.turns.finishing import Finisher, Progress
from server.services.turns.setup import TurnSetup

log = logging.getLogger(__name__)

STREAM_MODES: list[StreamMode] = ["messages", "updates", "custom"]


class TurnRunner:
    def __init__(self, setup: TurnSetup, finisher: Finisher) -> None:
        self.setup = setup
        self.finisher = finisher
        self._running: set[asyncio.Task[None]] = set()
        self._turns: dict[UUID, Turn] = {}  # running here, by assistant message id
        self.draining = False  # set on SIGTERM: running turns go on, new ones are refused (503 shutting_down)

    def launch(self, turn: Turn, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        task.set_name(f"turn-{turn.message_id}")
        turn.task = task
        self._running.add(task)
        self._turns[turn.message_id] = turn
        task.add_done_callback(functools.partial(self._forget, turn.message_id))

    def here(self, message_id: UUID) -> Turn | None:
        """The turn of this answer if it runs in this process."""
        return self._turns.get(message_id)

    def leased(self) -> dict[UUID, Turn]:
        """The turns running here that hold a lease (between their claim and their end), by answer id."""
        return {t.message_id: t for t in self._turns.values() if t.holds_lease}

    @property
    def running_turns(self) -> int:
        return len(self._running)

    def _forget(self, message_id: UUID, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._turns.pop(message_id, None)

    def cancel_local(self, message_id: UUID) -> bool:
        """Cancel the turn if it runs in this process (True), else nothing (False)."""
        turn = self._turns.get(message_id)
        if turn is None or turn.task is None or turn.task.done():
            return False
        log.info("turn cancelled on request", extra={"run_id": str(message_id)})
        turn.task.cancel()
        return True

    # -- the turn itself

    async def run(self, turn: Turn, latest: LatestCheckpoint | None = None) -> None:
        """Run the graph for a claimed turn, its events into the turn's log, then store its end (Finisher).
        `latest`: the thread's checkpoint when the claim read it already (the run's first read saved)."""
        POOL_WAIT_S.set(self.setup.turn_timeout.total_seconds())  # this task's (and its children's) pool waits
        turn.holds_lease = True
        progress = Progress()
        status, error_code = "complete", None
        try:
            async with asyncio.timeout(self.setup.turn_timeout.total_seconds()):
                await self._stream_graph(turn, progress, latest)
        except TimeoutError:
            # the whole turn has a deadline (the claim is taken over after it anyway): a model that
            # hangs mid-stream ends the turn as an error, with what it had said so far
            status, error_code = "error", "timeout"
            log.warning("turn timed out", extra={"session_id": str(turn.session_id), "run_id": str(turn.message_id)})
        except asyncio.CancelledError:
            status, error_code = "cancelled", "cancelled"
        except ModelCallError as exc:
            status, error_code = "error", "model_error"
            log.warning("model failed mid-turn: %s", exc,
                        extra={"session_id": str(turn.session_id), "run_id": str(turn.message_id)})
        except (psycopg.OperationalError, PoolTimeout) as exc:  # the database went away mid-turn
            status, error_code = "error", "database_unavailable"
            log.warning("turn failed: database unavailable (%s)", type(exc).__name__,
                        extra={"session_id": str(turn.session_id), "run_id": str(turn.message_id)})
        except Exception:
            status, error_code = "error", "internal_error"
            log.exception("turn failed", extra={"session_id": str(turn.session_id), "run_id": str(turn.message_id)})
        turn.holds_lease = False
        # the final write must happen even when this task was cancelled (client gone, shutdown)
        finish = asyncio.ensure_future(self.finisher.finish(turn, progress, status, error_code))
        try:
            await asyncio.shield(finish)
        except asyncio.CancelledError:
            await finish

    async def _stream_graph(self, turn: Turn, progress: Progress, latest: LatestCheckpoint | None) -> None:
        config: RunnableConfig = {
            "configurable": {"thread_id": str(turn.session_id)},
            "run_id": turn.run_id,  # the LangSmith run id: the assistant message id (a re-run's: the row's run_id)
            "run_name": "chat_turn",
            "metadata": self.setup.tracing.metadata(
                session_id=str(turn.session_id),
                store_id=turn.store_id,
                user_id=turn.user_id,
                prompt_variant=turn.prompt_variant,
                model=turn.model,
                attempt=turn.attempt,
                audience=turn.audience,
            ),
            "tags": self.setup.tracing.tags,
            "callbacks": self.setup.tracing.callbacks(),
        }
        store = await self.setup.store(turn.store_id)
        context = ChatContext(
            store_id=turn.store_id,
            audience=turn.audience,
            model=self.setup.model_of(store),
            retriever=self.setup.retriever,
            min_similarity=self.setup.min_similarity,
            k=int(store.get("retrieval_k") or self.setup.retrieval_k),
            store_voice={k: str(store[k]) for k in ("display_name", "language", "instructions") if store.get(k)},
            history_messages=self.setup.history_messages,
            prompt_variant=turn.prompt_variant,
            answer_id=str(turn.message_id),
            handoff=self.setup.handoffs is not None,
            handoff_hours=store.get("handoff_hours"),
            on_token=functools.partial(self._on_text, turn, progress),
        )
        graph_input = {"messages": [*turn.prelude, HumanMessage(content=turn.content, id=str(turn.user_message_id))]}
        if turn.attempt > 1:
            await self._rewind(turn, config)
        # with the thread read already, the search the retrieve node will make is known when it is the question
        # itself: it begins now, beside the run's first steps
        if latest is not None and latest.ready and isinstance(self.setup.retriever, ScopedRetriever) and \
                searched_as_asked(turn.content, context, [*await latest.messages(), *turn.prelude]):
            context.search_ahead = SearchAhead(self.setup.retriever, turn.content, k=context.k,
                                               store_id=context.store_id, audience=context.audience)
        try:
            with self.setup.tracing.context(), using_prefetched(latest):
                await self._consume(turn, progress, graph_input, config, context)
        finally:
            if context.search_ahead is not None:
                context.search_ahead.discard()
        if progress.final is not None and not progress.final.response_metadata.get("finish_reason"):
            # the body ended without the provider saying the answer is finished: a cut stream
            raise ModelCallError("the model's stream ended without a finish reason")
        if not progress.parts and progress.final is not None and content_text(progress.final.content):
            # a model that does not stream: its whole answer is one token event
            self._on_text(turn, progress, content_text(progress.final.content))
        if progress.handoff is not None and self.setup.handoffs is not None:
            # the graph waits for a person (interrupt): the session says so before its claim is let go, so the
            # shopper's next message is kept for the operator, not answered
            reason = str(progress.handoff["reason"])
            _, since = await self.setup.handoffs.start(turn.session_id, turn.message_id, reason)
            turn.handoff = await self.setup.handoff_info(turn.session_id, turn.store_id, since)
            turn.emit("handoff", turn.handoff)
            metrics.record_handoff(reason)

    async def _rewind(self, turn: Turn, config: RunnableConfig) -> None:
        """A re-run starts from the checkpoint taken before the turn. With durability 'exit' the dead run wrote
        none (that one is the thread's latest); if it got as far as writing its own before dying, go back to its
        parent: LangGraph forks the thread from a `checkpoint_id` given in the config."""
        at: RunnableConfig = {"configurable": {"thread_id": str(turn.session_id)}}
        asked = str(turn.user_message_id)
        while True:
            state = await self.setup.graph.aget_state(at)
            if not any(m.id == asked for m in (state.values or {}).get("messages", [])) or not state.parent_config:
                break
            at = state.parent_config
        if at.get("configurable", {}).get("checkpoint_id"):
            config["configurable"] = {**config.get("configurable", {}), **at["configurable"]}

    async def _consume(self, turn: Turn, progress: Progress, graph_input: dict[str, Any], config: RunnableConfig,
                       context: ChatContext) -> None:
        part: Any  # (mode, payload) pairs; typed loosely by LangGraph for the v1 stream format
        async for part in self.setup.graph.astream(
            graph_input,
            config,
            context=context,
            stream_mode=STREAM_MODES,
            durability=self.setup.durability,  # "exit": one checkpoint write per turn, not one per step
        ):
            mode, payload = part
            if mode == "custom":  # what a node wrote to the stream writer; the sources are their own event already
                if not (isinstance(payload, dict) and payload.get("type") == "sources"):
                    turn.emit("custom", payload if isinstance(payload, dict) else {"value": payload})
                continue
            if mode == "messages":
                chunk, meta = payload
                node = meta.get("langgraph_node")
                if node == "condense" and getattr(chunk, "usage_metadata", None):
                    used = chunk.usage_metadata
                    progress.condense_usage = add_usage(progress.condense_usage, used) if progress.condense_usage \
                        else used
            elif mode == "updates":
                if "retrieve" in payload:
                    passages = [Passage(**p) for p in payload["retrieve"].get("passages", [])]
                    progress.sources = [p.as_source() for p in passages]
                    turn.emit("sources", {"sources": progress.sources})
                if "generate" in payload:
                    progress.final = payload["generate"]["messages"][-1]
                    if named := progress.final.response_metadata.get("model_name"):
                        progress.model = str(named)  # the provider's name for the model that answered
                if "handoff" in payload:  # the shopper is told a person will reply: part of this turn's answer
                    said = payload["handoff"]
                    progress.handoff = said["handoff"]
                    if progress.final is None:  # no model spoke in this turn: the notice is the rule's words
                        progress.model = HANDOFF_MODEL
                    text = content_text(said["messages"][-1].content)
                    self._on_text(turn, progress, f"\n\n{text}" if progress.parts else text)

    def _on_text(self, turn: Turn, progress: Progress, text: str) -> None:
        """A chunk of the answer's text as the model streams it (graph/answer_stream.py): one `token` event."""
        if progress.first_token_ms is None:
            progress.first_token_ms = int((time.perf_counter() - turn.started) * 1000)
        progress.parts.append(text)
        turn.emit("token", {"delta": text})

    async def shutdown(self, grace_s: float = 5.0) -> None:
        """Let running turns (their clients may have left) finish for up to `grace_s`, then cancel the rest and
        let each store its final state."""
        self.draining = True
        tasks = list(self._running)
        if tasks and grace_s > 0:
            await asyncio.wait(tasks, timeout=grace_s)
        tasks = [t for t in tasks if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
