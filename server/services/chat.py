"""IntegratedChatService: one turn end to end (claim, rows, graph stream, finish).

The turn runs in its own asyncio task and talks to the HTTP response through a queue, so a client
that goes away only cancels the model call: the task still writes the final row ('cancelled') and
releases the claim. No connection is held while the model streams.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal
from uuid import UUID, uuid4

import psycopg
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage
from langchain_core.messages.ai import UsageMetadata, add_usage
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableConfig
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Durability, StreamMode
from psycopg_pool import PoolTimeout

from graph.graph import ModelCallError
from graph.models import content_text, model_label
from graph.prompts import VariantPicker
from graph.retrieval import Passage
from graph.state import ChatContext
from persistence.db import POOL_WAIT_S, retry_unavailable
from persistence.messages import MessageRepository
from server import metrics
from server.errors import (
    AppError,
    MessageNotFound,
    ModelError,
    PayloadTooLarge,
    SessionBusy,
    SessionExpired,
    SessionNotFound,
    ShuttingDown,
    TurnEnded,
    ValidationFailed,
)
from server.integrations.tracing import Tracing
from server.schemas import Message, check_metadata_size, message_out

log = logging.getLogger(__name__)

Event = tuple[str, dict[str, Any]]
OnDisconnect = Literal["continue", "cancel"]
STREAM_MODES: list[StreamMode] = ["messages", "updates"]
_END = object()


@dataclass
class Turn:
    session_id: UUID
    store_id: str
    user_id: str | None
    user_message_id: UUID
    message_id: UUID
    content: str
    model: str
    prompt_variant: str
    started: float
    on_disconnect: OnDisconnect = "continue"  # what happens when the client reading the stream leaves
    events: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def metadata_event(self) -> dict[str, Any]:
        return {
            "session_id": str(self.session_id),
            "user_message_id": str(self.user_message_id),
            "message_id": str(self.message_id),
            "run_id": str(self.message_id),
            "model": self.model,
        }

    async def stream(self) -> AsyncIterator[Event]:
        """metadata, sources, token..., then done or error. Leaving early cancels the turn only when its
        `on_disconnect` says so (TURN_ON_DISCONNECT=cancel); by default it runs on and is stored."""
        try:
            yield "metadata", self.metadata_event
            while True:
                item = await self.events.get()
                if item is _END:
                    return
                yield item
        finally:
            if not self.finished.is_set() and self.task is not None and self.on_disconnect == "cancel":
                self.task.cancel()


@dataclass
class _Progress:
    parts: list[str] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)
    usage: UsageMetadata | None = None
    model: str | None = None
    first_token_ms: int | None = None
    final: AIMessage | None = None


class IntegratedChatService:
    def __init__(
        self,
        *,
        graph: CompiledStateGraph[Any, Any, Any, Any],
        messages: MessageRepository,
        model: BaseChatModel,
        retriever: BaseRetriever | None,
        turn_timeout: timedelta,
        expire_after: timedelta,
        max_message_chars: int,
        max_metadata_bytes: int,
        retrieval_k: int,
        history_messages: int,
        prompt_variant: str,
        tracing: Tracing | None = None,
        durability: Durability = "exit",
        prune_checkpoints: bool = True,
        on_disconnect: OnDisconnect = "continue",
    ) -> None:
        self.graph = graph
        self.messages = messages
        self.model = model
        self.model_name = model_label(model)
        self.retriever = retriever
        self.turn_timeout = turn_timeout
        self.expire_after = expire_after
        self.max_message_chars = max_message_chars
        self.max_metadata_bytes = max_metadata_bytes
        self.retrieval_k = retrieval_k
        self.history_messages = history_messages
        self.variants = VariantPicker.parse(prompt_variant)
        self.tracing = tracing or Tracing.disabled()
        # one checkpoint write per turn, and only the latest kept: storage linear in the conversation
        self.durability: Durability = durability
        self.prune_checkpoints = prune_checkpoints
        self._running: set[asyncio.Task[None]] = set()
        self._turns: dict[UUID, Turn] = {}  # running here, by assistant message id
        self.on_disconnect: OnDisconnect = on_disconnect
        # asks the other replicas to cancel a turn (PostgreSQL NOTIFY, wired by server/resources.py)
        self.remote_cancel: Callable[[UUID], Awaitable[None]] | None = None
        self.draining = False  # set on SIGTERM: running turns go on, new ones are refused (503 shutting_down)

    # -- starting a turn: everything that can be refused is refused before a response starts

    def _check_input(self, text: str, metadata: dict[str, Any]) -> str:
        if not text.strip():
            raise ValidationFailed("message must not be empty", {"field": "message"})
        if len(text) > self.max_message_chars:
            raise PayloadTooLarge(
                f"message is longer than {self.max_message_chars} characters",
                {"field": "message", "max_chars": self.max_message_chars, "chars": len(text)},
            )
        if "\x00" in text:
            raise ValidationFailed("message must not contain NUL characters", {"field": "message"})
        check_metadata_size(metadata, self.max_metadata_bytes)
        return text

    async def start_turn(self, session_id: UUID, text: str, metadata: dict[str, Any],
                         on_disconnect: OnDisconnect | None = None) -> Turn:
        if self.draining:
            metrics.record_refusal("shutting_down")
            raise ShuttingDown()
        text = self._check_input(text, metadata)
        user_message_id, message_id = uuid4(), uuid4()
        started = time.perf_counter()
        variant = self.variants.pick(session_id)
        claim = await self.messages.begin_turn(
            session_id=session_id,
            user_msg_id=user_message_id,
            asst_msg_id=message_id,
            content=text,
            model=self.model_name,
            prompt_variant=variant,
            metadata=metadata,
            stale_after=self.turn_timeout,
            expire_after=self.expire_after,
        )
        detail = {"session_id": str(session_id)}
        if claim.outcome != "ok":
            metrics.record_refusal(claim.outcome)
        if claim.outcome == "not_found":
            raise SessionNotFound(detail=detail)
        if claim.outcome == "expired":
            raise SessionExpired(detail=detail)
        if claim.outcome == "busy":
            raise SessionBusy(detail=detail)
        assert claim.store_id is not None
        turn = Turn(
            session_id=session_id,
            store_id=claim.store_id,
            user_id=claim.user_id,
            user_message_id=user_message_id,
            message_id=message_id,
            content=text,
            model=self.model_name,
            prompt_variant=variant,
            started=started,
            on_disconnect=on_disconnect or self.on_disconnect,
        )
        task = asyncio.create_task(self._run(turn), name=f"turn-{message_id}")
        turn.task = task
        self._running.add(task)
        self._turns[message_id] = turn
        task.add_done_callback(functools.partial(self._forget, message_id))
        return turn

    def _forget(self, message_id: UUID, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._turns.pop(message_id, None)

    async def run_to_end(self, session_id: UUID, text: str, metadata: dict[str, Any]) -> tuple[Message, Message]:
        """The non-streaming turn: (assistant message, user message); a failed model is a 502."""
        turn = await self.start_turn(session_id, text, metadata)
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
        user_row = await self.messages.get(turn.user_message_id)
        assert user_row is not None
        return done, message_out(user_row)

    # -- the turn itself

    async def _run(self, turn: Turn) -> None:
        POOL_WAIT_S.set(self.turn_timeout.total_seconds())  # this task's (and its children's) pool waits
        progress = _Progress()
        status, error_code, error_text = "complete", None, ""
        try:
            async with asyncio.timeout(self.turn_timeout.total_seconds()):
                await self._stream_graph(turn, progress)
        except TimeoutError:
            # the whole turn has a deadline (the claim is taken over after it anyway): a model that
            # hangs mid-stream ends the turn as an error, with what it had said so far
            status, error_code, error_text = "error", "timeout", "The language model did not finish in time"
            log.warning("turn timed out", extra={"session_id": str(turn.session_id), "run_id": str(turn.message_id)})
        except asyncio.CancelledError:
            status, error_code = "cancelled", "cancelled"
        except ModelCallError as exc:
            status, error_code, error_text = "error", "model_error", "The language model failed to answer"
            log.warning("model failed mid-turn: %s", exc,
                        extra={"session_id": str(turn.session_id), "run_id": str(turn.message_id)})
        except (psycopg.OperationalError, PoolTimeout) as exc:  # the database went away mid-turn
            status, error_code, error_text = "error", "database_unavailable", "The database became unavailable"
            log.warning("turn failed: database unavailable (%s)", type(exc).__name__,
                        extra={"session_id": str(turn.session_id), "run_id": str(turn.message_id)})
        except Exception:
            status, error_code, error_text = "error", "internal_error", "The turn failed on the server"
            log.exception("turn failed", extra={"session_id": str(turn.session_id), "run_id": str(turn.message_id)})
        # the final write must happen even when this task was cancelled (client gone, shutdown)
        finish = asyncio.ensure_future(self._finish(turn, progress, status, error_code, error_text))
        try:
            await asyncio.shield(finish)
        except asyncio.CancelledError:
            await finish

    async def _stream_graph(self, turn: Turn, progress: _Progress) -> None:
        config: RunnableConfig = {
            "configurable": {"thread_id": str(turn.session_id)},
            "run_id": turn.message_id,  # the LangSmith run id is the assistant message id
            "run_name": "chat_turn",
            "metadata": self.tracing.metadata(
                session_id=str(turn.session_id),
                store_id=turn.store_id,
                user_id=turn.user_id,
                prompt_variant=turn.prompt_variant,
                model=turn.model,
            ),
            "tags": self.tracing.tags,
            "callbacks": self.tracing.callbacks(),
        }
        context = ChatContext(
            store_id=turn.store_id,
            model=self.model,
            retriever=self.retriever,
            k=self.retrieval_k,
            history_messages=self.history_messages,
            prompt_variant=turn.prompt_variant,
            answer_id=str(turn.message_id),
        )
        graph_input = {"messages": [HumanMessage(content=turn.content, id=str(turn.user_message_id))]}
        with self.tracing.context():
            await self._consume(turn, progress, graph_input, config, context)
        if progress.final is not None and not progress.final.response_metadata.get("finish_reason"):
            # the body ended without the provider saying the answer is finished: a cut stream
            raise ModelCallError("the model's stream ended without a finish reason")
        if not progress.parts and progress.final is not None and content_text(progress.final.content):
            # a model that does not stream: its whole answer is one token event
            self._on_chunk(turn, progress, AIMessageChunk(content=content_text(progress.final.content)))

    async def _consume(self, turn: Turn, progress: _Progress, graph_input: dict[str, Any], config: RunnableConfig,
                       context: ChatContext) -> None:
        part: Any  # (mode, payload) pairs; typed loosely by LangGraph for the v1 stream format
        async for part in self.graph.astream(
            graph_input,
            config,
            context=context,
            stream_mode=STREAM_MODES,
            durability=self.durability,  # "exit": one checkpoint write per turn, not one per step
        ):
            mode, payload = part
            if mode == "messages":
                chunk, meta = payload
                if meta.get("langgraph_node") == "generate" and isinstance(chunk, AIMessageChunk):
                    self._on_chunk(turn, progress, chunk)
            elif mode == "updates":
                if "retrieve" in payload:
                    passages = [Passage(**p) for p in payload["retrieve"].get("passages", [])]
                    progress.sources = [p.as_source() for p in passages]
                    turn.events.put_nowait(("sources", {"sources": progress.sources}))
                if "generate" in payload:
                    progress.final = payload["generate"]["messages"][-1]

    def _on_chunk(self, turn: Turn, progress: _Progress, chunk: AIMessageChunk) -> None:
        if chunk.usage_metadata:
            progress.usage = (
                add_usage(progress.usage, chunk.usage_metadata) if progress.usage else chunk.usage_metadata
            )
        name = chunk.response_metadata.get("model_name") if chunk.response_metadata else None
        if name:
            progress.model = str(name)
        text = content_text(chunk.content)
        if text:
            if progress.first_token_ms is None:
                progress.first_token_ms = int((time.perf_counter() - turn.started) * 1000)
            progress.parts.append(text)
            turn.events.put_nowait(("token", {"delta": text}))

    async def _finish(
        self, turn: Turn, progress: _Progress, status: str, error_code: str | None, error_text: str
    ) -> None:
        usage = progress.usage
        if progress.final is not None and progress.final.usage_metadata:
            usage = progress.final.usage_metadata  # the provider's own total for the call
        latency_ms = int((time.perf_counter() - turn.started) * 1000)
        try:
            # the answer is in memory and the session stays claimed until this is stored: a database that is
            # away for a moment (a restart, a pooler's failover) is waited for, up to the turn's deadline
            row = await retry_unavailable(lambda: self.messages.finish_turn(
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
            ), deadline_s=self.turn_timeout.total_seconds())
            metrics.record_turn(
                error_code or status, progress.model, int(row["input_tokens"]), int(row["output_tokens"]),
                progress.first_token_ms / 1000 if progress.first_token_ms is not None else None,
                time.perf_counter() - turn.started,
            )
            if status == "complete":
                turn.events.put_nowait(("done", {"message": message_out(row)}))
            else:
                public = "model_error" if error_code == "timeout" else error_code  # stored detail vs API code
                turn.events.put_nowait(("error", {"code": public, "message": error_text or status,
                                                  "message_id": str(turn.message_id)}))
        except Exception as exc:
            # the claim goes stale after turn_timeout and the next turn marks this row 'error'
            log.exception("could not store the end of a turn", extra={"run_id": str(turn.message_id)})
            away = isinstance(exc, psycopg.OperationalError | PoolTimeout)
            turn.events.put_nowait(("error", {"code": "database_unavailable" if away else "internal_error",
                                              "message": "The turn could not be stored"}))
        finally:
            turn.finished.set()
            turn.events.put_nowait(_END)
        await self._prune(turn)  # after the answer is out, so it costs the shopper no latency

    async def _prune(self, turn: Turn) -> None:
        """Drop the thread's older checkpoints (the stock saver's `aprune(keep_latest)`).

        The latest checkpoint holds the whole conversation (the model's history, Studio's view);
        older ones are full copies of shorter versions of it, which is what made storage quadratic.
        It runs after the turn released its session, so a next turn may already be writing: that is
        safe, since the prune works in a REPEATABLE READ snapshot and deletes only checkpoints older than
        the head it saw and blob versions only they used, none of which a newer checkpoint refers to. If
        two prunes of one thread collide, one fails and the next turn's prune catches up.
        """
        saver = self.graph.checkpointer
        prune = getattr(saver, "aprune", None)
        if not self.prune_checkpoints or prune is None:
            return
        try:
            await prune([str(turn.session_id)], strategy="keep_latest")
        except Exception as exc:  # storage catches up at the next turn; never fail a turn for it
            log.warning("checkpoint prune failed: %s", type(exc).__name__, extra={"run_id": str(turn.message_id)})

    @property
    def running_turns(self) -> int:
        return len(self._running)

    # -- cancelling a turn, on this replica or another

    async def cancel(self, session_id: UUID, message_id: UUID) -> None:
        """Stop a running turn of this session wherever it runs; it is stored `cancelled` with its partial
        answer. 404 for no such answer in this session, 409 when it already ended."""
        row = await self.messages.get(message_id)
        if row is None or row["session_id"] != session_id or row["role"] != "assistant":
            raise MessageNotFound(detail={"message_id": str(message_id)})
        if row["status"] != "streaming":
            raise TurnEnded(detail={"message_id": str(message_id), "status": row["status"]})
        if self.cancel_local(message_id):
            return
        if self.remote_cancel is not None:
            await self.remote_cancel(message_id)

    def cancel_local(self, message_id: UUID) -> bool:
        """Cancel the turn if it runs in this process (True), else nothing (False)."""
        turn = self._turns.get(message_id)
        if turn is None or turn.task is None or turn.task.done():
            return False
        log.info("turn cancelled on request", extra={"run_id": str(message_id)})
        turn.task.cancel()
        return True

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
