"""IntegratedChatService: one turn end to end (claim, rows, graph stream, finish).

The turn runs in its own asyncio task and talks to the HTTP response through a queue, so a client
that goes away only cancels the model call: the task still writes the final row ('cancelled') and
releases the claim. No connection is held while the model streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from uuid import UUID, uuid4

import msgspec
import psycopg
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.messages.ai import UsageMetadata, add_usage
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableConfig
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Durability, StreamMode
from psycopg_pool import PoolTimeout

from graph.graph import ModelCallError, searched_as_asked
from graph.handoff import opens_at
from graph.models import content_text, model_label
from graph.prompts import VariantPicker
from graph.retrieval import Passage, ScopedRetriever, SearchAhead
from graph.state import ChatContext
from persistence.checkpointer import LatestCheckpoint, PooledPostgresSaver, using_prefetched
from persistence.db import POOL_WAIT_S, retry_unavailable
from persistence.handoffs import HandoffRepository
from persistence.messages import MessageRepository, TurnStart
from persistence.notify import MAX_PAYLOAD, TURN_CONTROL, TURN_EVENTS
from server import metrics
from server.errors import (
    AppError,
    MessageNotFound,
    ModelError,
    QueueFull,
    SessionBusy,
    SessionExpired,
    SessionNotFound,
    ShuttingDown,
    TurnEnded,
)
from server.integrations.tracing import Tracing
from server.schemas import Message, check_metadata_size, check_text, message_out
from server.services.stores import StoreSettingsService

log = logging.getLogger(__name__)

Event = tuple[str, dict[str, Any]]
Numbered = AsyncGenerator[tuple[int, str, dict[str, Any]], None]  # (id, event, data) as they come
Batches = AsyncGenerator[list[tuple[int, str, dict[str, Any]]], None]  # the same, a socket write's worth at a time
# the longest an event waits to leave with the ones after it in one socket write (Turn.batches)
WRITE_WINDOW_S = 0.005
OnDisconnect = Literal["continue", "cancel"]
OnBusy = Literal["enqueue", "reject", "interrupt"]
INTERRUPT_WAIT_S = 5.0  # how long an interrupting message waits for the stopped turn to let go of the session
QUEUE_CHECK_S = 1.0  # a queued turn looks again this often even without a notification
# what a turn that did not complete tells its client, by the error code stored on its message
ERROR_TEXTS = {
    "cancelled": "cancelled",
    "timeout": "The language model did not finish in time",
    "model_error": "The language model failed to answer",
    "database_unavailable": "The database became unavailable",
    "internal_error": "The turn failed on the server",
    "abandoned": "The server running this turn stopped before it ended",
}


@functools.cache
def _picker(weights: tuple[tuple[str, float], ...]) -> VariantPicker:
    return VariantPicker(dict(weights))


RUNNING = ("streaming", "queued")  # an answer's statuses until it ends
HANDOFF_MODEL = "handoff"  # the `model` of an answer that is only the handoff notice (no model was called)
DEFAULT_AUDIENCE = "shopper"  # a session whose metadata names no audience is a shopper's


def error_data(code: str, message_id: UUID | str) -> dict[str, Any]:
    """An `error` event's data for a turn that ended with the stored error code `code`."""
    return {"code": "model_error" if code == "timeout" else code,  # a timeout is the model's
            "message": ERROR_TEXTS.get(code, code), "message_id": str(message_id)}


def metadata_data(session_id: UUID | str, user_message_id: UUID | str, message_id: UUID | str,
                  model: str | None, run_id: UUID | str | None = None) -> dict[str, Any]:
    """The `metadata` event's data: the first event of every turn's stream (of every attempt's, after `restart`)."""
    return {"session_id": str(session_id), "user_message_id": str(user_message_id),
            "message_id": str(message_id), "run_id": str(run_id or message_id), "model": model}


ATTEMPT_IDS = 1_000_000  # attempt n > 1 of a turn numbers its events from n × this: `restart` is n × ATTEMPT_IDS


def restart_data(attempt: int, run_id: UUID | str) -> dict[str, Any]:
    """A `restart` event's data: the turn is re-run (its replica died); what came before is to be discarded."""
    return {"attempt": attempt, "run_id": str(run_id)}


def ending_event(row: dict[str, Any]) -> Event:
    """A stored answer's last event: `done` with the message, or `error` with the code of API.md."""
    if row["status"] == "complete":
        return "done", {"message": message_out(row)}
    return "error", error_data(row["error_code"] or "internal_error", row["message_id"])


FOLLOW_CHECK_S = 1.0  # a follower that hears nothing this long looks at the row


async def _aiter(items: list[tuple[int, str, dict[str, Any]]]) -> Numbered:
    for item in items:
        yield item


def _batches(to: str, items: list[list[Any]]) -> Iterator[str]:
    """NOTIFY payloads for a follower: as many events as fit in each."""
    batch: list[bytes] = []
    size = 0
    for item in items:
        encoded = msgspec.json.encode(item)
        if len(encoded) > MAX_PAYLOAD - 100:
            encoded = msgspec.json.encode([item[0], "ref"])
        if batch and size + len(encoded) > MAX_PAYLOAD - 100:
            yield _payload(to, batch)
            batch, size = [], 0
        batch.append(encoded)
        size += len(encoded) + 1
    if batch:
        yield _payload(to, batch)


def _payload(to: str, batch: list[bytes]) -> str:
    return msgspec.json.encode({"to": to, "e": [msgspec.Raw(b) for b in batch]}).decode()


def stored_events(row: dict[str, Any], after: int) -> list[tuple[int, str, dict[str, Any]]]:
    """A finished turn's events after id `after`, rebuilt from its row: the same ids the live stream had, the
    token deltas after `after` joined into one event (their concatenation is the stored content)."""
    index = row.get("stream_index")
    metadata = metadata_data(row["session_id"], row["user_message_id"], row["message_id"], row["model"],
                             row["run_id"])
    out: list[tuple[int, str, dict[str, Any]]] = []
    first = index.get("first_id", 1) if index else 1  # > 1: a re-run, whose events start with `restart`
    metadata_id = first + 1 if first > 1 else 1
    if first > 1 and after < first:
        out.append((first, "restart", restart_data(row["attempt"], row["run_id"])))
    if after < metadata_id:
        out.append((metadata_id, "metadata", metadata))
    if index is None:  # closed without a stream of its own (a dead replica's turn, taken over): how it ended
        out.append((max(after + 1, 2), *ending_event(row)))
        return out
    if index["sources_id"] and after < index["sources_id"]:
        out.append((index["sources_id"], "sources", {"sources": row["sources"] or []}))
    ends, first_token = index["token_ends"], index["first_token_id"]
    if ends and after < first_token + len(ends) - 1:
        start = ends[after - first_token] if after >= first_token else 0
        out.append((first_token + len(ends) - 1, "token", {"delta": row["content"][start:]}))
    if index.get("handoff") and after < index["handoff"][0]:
        out.append((index["handoff"][0], "handoff", index["handoff"][1]))
    if after < index["final_id"]:
        out.append((index["final_id"], *ending_event(row)))
    return out
STREAM_MODES: list[StreamMode] = ["messages", "updates", "custom"]


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
    audience: str = DEFAULT_AUDIENCE  # the session's (metadata.audience): which pages it is answered from
    on_disconnect: OnDisconnect = "continue"  # what happens when the client reading the stream leaves
    run_id: UUID | None = None  # this attempt's run (LangSmith, the row's run_id); the first is the message id
    attempt: int = 1  # > 1: re-run after its replica died (its events are numbered from attempt × ATTEMPT_IDS)
    # messages the model must see before this one that no checkpoint holds (an interrupted exchange)
    prelude: list[BaseMessage] = field(default_factory=list)
    # the thread's latest checkpoint, read in the round trip that claimed the session (the run's first read)
    checkpoint: LatestCheckpoint | None = None
    # every event so far, in order; an event's SSE id is first_id + its position. Any number of readers follow
    # it: the client that started the turn, and clients rejoining with Last-Event-ID
    log: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    holds_lease: bool = False  # between its claim and its end: renewed by keep_leases
    # the session waits for a person (graph/handoff.py): {"since", "operator_hours_open", "opens_at"}; a message
    # sent then gets no answer (no assistant row: message_id is not stored)
    handoff: dict[str, Any] | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)  # set by end(), after the last event
    _waiters: list[asyncio.Future[None]] = field(default_factory=list)  # one per reader waiting for more

    def __post_init__(self) -> None:
        self.run_id = self.run_id or self.message_id

    @property
    def first_id(self) -> int:
        return 1 if self.attempt == 1 else self.attempt * ATTEMPT_IDS

    def position_after(self, after: int) -> int:
        """How many of this attempt's events a reader who saw up to id `after` has seen (none: an earlier attempt)."""
        return max(0, after - self.first_id + 1)

    def emit(self, event: str, data: dict[str, Any]) -> None:
        self.log.append((event, data))
        self._wake_readers()

    @property
    def ended(self) -> bool:
        return self.finished.is_set()

    def end(self) -> None:
        self.finished.set()
        self._wake_readers()

    def stream_index(self) -> dict[str, Any]:
        """The ids this turn's events had and where each token delta ends in the content: stored with the
        answer, so that a client rejoining after the turn ended gets the same ids (stored_events)."""
        ends: list[int] = []
        first_token_id = sources_id = None
        handoff: list[Any] | None = None
        total = 0
        for n, (event, data) in enumerate(self.log, start=self.first_id):
            if event == "token":
                first_token_id = first_token_id or n
                total += len(data["delta"])
                ends.append(total)
            elif event == "sources":
                sources_id = n
            elif event == "handoff":
                handoff = [n, data]
        index = {"first_id": self.first_id, "sources_id": sources_id, "first_token_id": first_token_id,
                 "token_ends": ends, "final_id": self.first_id + len(self.log)}
        if handoff is not None:  # the answer handed the shopper to a person: a rejoin sees that too
            index["handoff"] = handoff
        return index

    def _wake_readers(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def wait_beyond(self, seen: int) -> None:
        """Until the log has more than `seen` events (a position, not an id), or the turn has ended."""
        while seen >= len(self.log) and not self.ended:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter  # a reader that is cancelled here cancels only its own future

    async def events(self, after: int = 0) -> Numbered:
        """(id, event, data) after id `after`, as they come, until the turn's last event."""
        seen = self.position_after(after)
        while True:
            while seen < len(self.log):
                event, data = self.log[seen]
                yield self.first_id + seen, event, data
                seen += 1
            if self.ended:
                return
            await self.wait_beyond(seen)

    @property
    def metadata_event(self) -> dict[str, Any]:
        return metadata_data(self.session_id, self.user_message_id, self.message_id, self.model, self.run_id)

    async def stream(self) -> AsyncIterator[Event]:
        """metadata, sources, token..., then done or error (see `numbered`)."""
        async with contextlib.aclosing(self.numbered()) as items:
            async for _, event, data in items:
                yield event, data

    async def batches(self, window_s: float = WRITE_WINDOW_S) -> Batches:
        """The stream of the client that started the turn (as `numbered`), in batches to leave in one socket write
        each: every event that came since the last batch. After a pause a batch goes at once; while events come
        faster than `window_s` apart they gather for the rest of the window since the last batch, so no event
        waits longer than that. Leaving early cancels the turn as `numbered` says."""
        seen, last = 0, float("-inf")
        clock = asyncio.get_running_loop().time
        try:
            while True:
                if seen < len(self.log):
                    if (wait := last + window_s - clock()) > 0 and not self.ended:
                        await asyncio.sleep(wait)
                    batch = [(self.first_id + i, *self.log[i]) for i in range(seen, len(self.log))]
                    seen += len(batch)
                    last = clock()
                    yield batch
                    continue
                if self.ended:
                    return
                await self.wait_beyond(seen)
        finally:
            if not self.ended and self.task is not None and self.on_disconnect == "cancel":
                self.task.cancel()

    async def numbered(self) -> Numbered:
        """The stream of the client that started the turn, with event ids, one at a time (`batches` without the
        window). Leaving early cancels the turn only when its `on_disconnect` says so (TURN_ON_DISCONNECT=cancel);
        by default it runs on and is stored."""
        async with contextlib.aclosing(self.batches(window_s=0)) as batches:
            async for batch in batches:
                for item in batch:
                    yield item


@dataclass
class _Progress:
    parts: list[str] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)
    condense_usage: UsageMetadata | None = None  # the follow-up's rewrite (graph node `condense`), billed too
    model: str | None = None
    first_token_ms: int | None = None
    final: AIMessage | None = None
    handoff: dict[str, Any] | None = None  # the graph handed the shopper to a person: {"reason", "since"}


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
        max_queued: int = 3,
        lease: timedelta | None = None,
        max_attempts: int = 2,
        min_similarity: float | None = None,
        store_settings: StoreSettingsService | None = None,
        model_for: Callable[[str], BaseChatModel] | None = None,
        handoffs: HandoffRepository | None = None,
    ) -> None:
        self.graph = graph
        self.messages = messages
        self.model = model
        self.model_name = model_label(model)
        self.retriever = retriever
        self.min_similarity = min_similarity  # the knowledge stack's (server/integrations/knowledge.py)
        self.store_settings = store_settings  # each store's own assistant (server/services/stores.py)
        self.model_for = model_for  # a store's own model by name (None: every store gets `model`)
        self.handoffs = handoffs  # handing shoppers to a person (None: never; graph/handoff.py)
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
        # sends to the other replicas (PostgreSQL NOTIFY on a channel, wired by server/resources.py): a turn's
        # cancel or follow request (TURN_CONTROL), a followed turn's events (TURN_EVENTS)
        self.notify: Callable[[str, dict[str, Any] | str], Awaitable[None]] | None = None
        self._followers: dict[str, asyncio.Queue[list[Any]]] = {}  # remote follows waiting here, by key
        self._relays: set[asyncio.Task[None]] = set()
        self._queue_wake: dict[UUID, asyncio.Event] = {}  # sessions with turns queued here, and how many
        self._queued_here: dict[UUID, int] = {}
        self.max_queued = max_queued
        self.draining = False  # set on SIGTERM: running turns go on, new ones are refused (503 shutting_down)
        # a running turn's lease (None: no leases, a dead replica's turn waits for the turn timeout); a turn whose
        # lease ran out is re-run by another replica, up to max_attempts runs in all
        self.lease = lease
        self.max_attempts = max_attempts

    # -- starting a turn: everything that can be refused is refused before a response starts

    def _check_input(self, text: str, metadata: dict[str, Any]) -> str:
        text = check_text(text, "message", self.max_message_chars)
        check_metadata_size(metadata, self.max_metadata_bytes)
        return text

    async def start_turn(self, session_id: UUID, text: str, metadata: dict[str, Any],
                         on_disconnect: OnDisconnect | None = None, on_busy: OnBusy = "reject") -> Turn:
        """Start a turn, or refuse it before anything is stored. While another turn runs in the session,
        `on_busy` says what happens: reject (409), interrupt (stop it, then start), enqueue (store the message
        as 'queued'; it is answered after the running turn and those queued before it)."""
        if self.draining:
            metrics.record_refusal("shutting_down")
            raise ShuttingDown()
        text = self._check_input(text, metadata)
        user_message_id, message_id = uuid4(), uuid4()
        started = time.perf_counter()
        variant = self.variants.pick(session_id)

        latest: LatestCheckpoint | None = None

        async def begin() -> TurnStart:
            nonlocal latest
            saver = self.graph.checkpointer
            latest = saver.latest(str(session_id)) if isinstance(saver, PooledPostgresSaver) else None
            return await self.messages.begin_turn(
                session_id=session_id, user_msg_id=user_message_id, asst_msg_id=message_id, content=text,
                model=self.model_name, prompt_variant=variant, metadata=metadata, stale_after=self.turn_timeout,
                expire_after=self.expire_after, then=latest)

        claim = await begin()
        position, prelude = 0, list[BaseMessage]()
        if claim.outcome == "busy" and on_busy == "interrupt":
            claim, prelude = await self._interrupt(session_id, begin)
        elif claim.outcome == "busy" and on_busy == "enqueue":
            claim, position = await self.messages.enqueue_turn(
                session_id=session_id, user_msg_id=user_message_id, asst_msg_id=message_id, content=text,
                model=self.model_name, metadata=metadata, max_queued=self.max_queued,
                expire_after=self.expire_after)
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
            raise QueueFull(detail={**detail, "max_queued": self.max_queued})
        assert claim.store_id is not None
        chosen = await self.store_variant(claim.store_id, session_id)
        if chosen is not None and chosen != variant:  # the store weighs the variants its own way
            variant = chosen
            if claim.outcome == "ok":  # (a queued turn's row gets its variant when it is claimed)
                await self.messages.set_prompt_variant(message_id, variant)
        turn = Turn(
            session_id=session_id,
            store_id=claim.store_id,
            user_id=claim.user_id,
            audience=claim.audience or DEFAULT_AUDIENCE,
            user_message_id=user_message_id,
            message_id=message_id,
            content=text,
            model=self.model_name,
            prompt_variant=variant,
            started=started,
            on_disconnect=on_disconnect or self.on_disconnect,
            prelude=prelude,
            # a queued turn runs later, after the one before it has written the thread: it reads then
            checkpoint=latest if claim.outcome == "ok" else None,
        )
        turn.emit("metadata", turn.metadata_event)
        if claim.outcome == "queued":
            turn.emit("queued", {"position": position})
        self._launch(turn, self._run(turn) if claim.outcome == "ok" else self._run_when_free(turn))
        return turn

    async def _store(self, store_id: str) -> dict[str, Any]:
        """The store's own settings ({}: none, or no settings service): from this process's cache, dropped on every
        replica when they change."""
        return await self.store_settings.for_turn(store_id) if self.store_settings is not None else {}

    async def store_variant(self, store_id: str, session_id: UUID) -> str | None:
        """The prompt variant a store's own weights (its settings' prompt_variants) give this session; None: the
        service's weights (PROMPT_VARIANT) apply."""
        weights = (await self._store(store_id)).get("prompt_variants")
        if not weights:
            return None
        return _picker(tuple(sorted((str(k), float(v)) for k, v in weights.items()))).pick(session_id)

    async def handoff_info(self, session_id: UUID, store_id: str, since: datetime | None) -> dict[str, Any]:
        """What a shopper is told while their session waits for a person: since when, and whether operators are
        in now (the store's handoff hours), else when they will be."""
        now = datetime.now(UTC)
        at = opens_at((await self._store(store_id)).get("handoff_hours"), now)
        return {"since": (since or now).isoformat(), "operator_hours_open": at is None or at <= now,
                "opens_at": at.isoformat() if at is not None and at > now else None}

    async def _held_for_operator(self, claim: TurnStart, session_id: UUID, user_message_id: UUID, text: str,
                                 started: float) -> Turn:
        """A message to a session waiting for a person: stored (begin_turn did), no answer; its stream is
        `metadata` then `handoff`."""
        assert claim.store_id is not None
        opened = await self.handoffs.open(session_id) if self.handoffs is not None else None
        turn = Turn(session_id=session_id, store_id=claim.store_id, user_id=claim.user_id,
                    user_message_id=user_message_id, message_id=user_message_id, content=text, model="operator",
                    prompt_variant="", started=started)
        turn.handoff = await self.handoff_info(session_id, claim.store_id, opened["started_at"] if opened else None)
        turn.emit("metadata", {"session_id": str(session_id), "user_message_id": str(user_message_id),
                               "message_id": None, "run_id": None, "model": None})
        turn.emit("handoff", turn.handoff)
        turn.end()
        metrics.record_refusal("held_for_operator")
        return turn

    def _launch(self, turn: Turn, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        task.set_name(f"turn-{turn.message_id}")
        turn.task = task
        self._running.add(task)
        self._turns[turn.message_id] = turn
        task.add_done_callback(functools.partial(self._forget, turn.message_id))

    async def _interrupt(self, session_id: UUID, begin: Callable[[], Awaitable[TurnStart]]
                         ) -> tuple[TurnStart, list[BaseMessage]]:
        """Stop the session's running turn (here or on another replica) and start once its claim is released;
        still busy after INTERRUPT_WAIT_S (its replica did not answer) is a 409 like reject. The stopped turn
        left no checkpoint (it is written when a turn ends), so its question and partial answer are handed to
        the new turn for the model to see."""
        running = await self.messages.running_turn(session_id)
        if running is not None and not self.cancel_local(running) and self.notify is not None:
            await self.notify(TURN_CONTROL, {"cancel": str(running)})
        deadline, pause = time.monotonic() + INTERRUPT_WAIT_S, 0.02
        claim = await begin()
        while claim.outcome == "busy" and time.monotonic() < deadline:
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.25)
            claim = await begin()
        prelude: list[BaseMessage] = []
        stopped = await self.messages.get_stream(running) if running is not None and claim.outcome == "ok" else None
        if stopped is not None and stopped["status"] == "cancelled":
            asked = await self.messages.get(stopped["user_message_id"])
            if asked is not None:
                prelude.append(HumanMessage(content=asked["content"], id=str(asked["message_id"])))
            if stopped["content"]:
                prelude.append(AIMessage(content=stopped["content"], id=str(stopped["message_id"])))
        return claim, prelude

    async def _run_when_free(self, turn: Turn) -> None:
        """A queued turn: wait until the session is free and it is the oldest waiting (woken by finish_turn's
        NOTIFY, checked every QUEUE_CHECK_S anyway), claim the session, then run like any turn."""
        wake = self._queue_wake.setdefault(turn.session_id, asyncio.Event())
        self._queued_here[turn.session_id] = self._queued_here.get(turn.session_id, 0) + 1
        give_up = time.monotonic() + self.turn_timeout.total_seconds() * (self.max_queued + 1)
        try:
            while True:
                wake.clear()
                claim = await retry_unavailable(lambda: self.messages.begin_queued_turn(
                    session_id=turn.session_id, user_msg_id=turn.user_message_id, asst_msg_id=turn.message_id,
                    prompt_variant=turn.prompt_variant, stale_after=self.turn_timeout),
                    deadline_s=self.turn_timeout.total_seconds())
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
            self._queued_here[turn.session_id] -= 1
            if not self._queued_here[turn.session_id]:
                del self._queued_here[turn.session_id], self._queue_wake[turn.session_id]
        turn.started = time.perf_counter()  # its latency counts from when it could run
        await self._run(turn)

    async def _close_queued(self, turn: Turn, status: str, error_code: str) -> None:
        """A queued turn that will not run: its answer closed (the next waiting message may go), its stream ended."""
        try:
            await self.messages.close_queued_turn(user_msg_id=turn.user_message_id, asst_msg_id=turn.message_id,
                                                  status=status, error_code=error_code)
        except Exception as exc:  # recovery closes it later; the stream must end either way
            log.warning("could not close a queued turn: %s", type(exc).__name__, extra={"run_id": str(turn.message_id)})
        turn.emit("error", error_data(error_code, turn.message_id))
        turn.end()

    def on_session_free(self, message: dict[str, Any]) -> None:
        """A notification on SESSION_FREE: wake the turns of that session queued here."""
        wake = self._queue_wake.get(UUID(str(message["session"])))
        if wake is not None:
            wake.set()

    def _forget(self, message_id: UUID, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._turns.pop(message_id, None)

    async def run_to_end(self, session_id: UUID, text: str, metadata: dict[str, Any],
                         on_busy: OnBusy = "reject") -> tuple[Message | None, Message, dict[str, Any] | None]:
        """The non-streaming turn: (assistant message, user message, handoff); a failed model is a 502. A session
        waiting for a person gives no assistant message, and what the shopper is told (handoff_info)."""
        turn = await self.start_turn(session_id, text, metadata, on_busy=on_busy)
        if turn.handoff is not None and turn.task is None:
            row = await self.messages.get(turn.user_message_id)
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
        user_row = await self.messages.get(turn.user_message_id)
        assert user_row is not None
        return done, message_out(user_row), turn.handoff

    # -- the turn itself

    async def _run(self, turn: Turn) -> None:
        POOL_WAIT_S.set(self.turn_timeout.total_seconds())  # this task's (and its children's) pool waits
        turn.holds_lease = True
        progress = _Progress()
        status, error_code = "complete", None
        try:
            async with asyncio.timeout(self.turn_timeout.total_seconds()):
                await self._stream_graph(turn, progress)
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
        finish = asyncio.ensure_future(self._finish(turn, progress, status, error_code))
        try:
            await asyncio.shield(finish)
        except asyncio.CancelledError:
            await finish

    async def _stream_graph(self, turn: Turn, progress: _Progress) -> None:
        config: RunnableConfig = {
            "configurable": {"thread_id": str(turn.session_id)},
            "run_id": turn.run_id,  # the LangSmith run id: the assistant message id (a re-run's: the row's run_id)
            "run_name": "chat_turn",
            "metadata": self.tracing.metadata(
                session_id=str(turn.session_id),
                store_id=turn.store_id,
                user_id=turn.user_id,
                prompt_variant=turn.prompt_variant,
                model=turn.model,
                attempt=turn.attempt,
                audience=turn.audience,
            ),
            "tags": self.tracing.tags,
            "callbacks": self.tracing.callbacks(),
        }
        store = await self._store(turn.store_id)
        context = ChatContext(
            store_id=turn.store_id,
            audience=turn.audience,
            model=self.model_for(store["model"]) if self.model_for is not None and store.get("model") else self.model,
            retriever=self.retriever,
            min_similarity=self.min_similarity,
            k=int(store.get("retrieval_k") or self.retrieval_k),
            store_voice={k: str(store[k]) for k in ("display_name", "language", "instructions") if store.get(k)},
            history_messages=self.history_messages,
            prompt_variant=turn.prompt_variant,
            answer_id=str(turn.message_id),
            handoff=self.handoffs is not None,
            handoff_hours=store.get("handoff_hours"),
            on_token=functools.partial(self._on_text, turn, progress),
        )
        graph_input = {"messages": [*turn.prelude, HumanMessage(content=turn.content, id=str(turn.user_message_id))]}
        if turn.attempt > 1:
            await self._rewind(turn, config)
        latest, turn.checkpoint = turn.checkpoint, None
        # with the thread read already, the search the retrieve node will make is known when it is the question
        # itself: it begins now, beside the run's first steps
        if latest is not None and latest.ready and isinstance(self.retriever, ScopedRetriever) and \
                searched_as_asked(turn.content, context, [*await latest.messages(), *turn.prelude]):
            context.search_ahead = SearchAhead(self.retriever, turn.content, k=context.k, store_id=context.store_id,
                                               audience=context.audience)
        try:
            with self.tracing.context(), using_prefetched(latest):
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
        if progress.handoff is not None and self.handoffs is not None:
            # the graph waits for a person (interrupt): the session says so before its claim is let go, so the
            # shopper's next message is kept for the operator, not answered
            _, since = await self.handoffs.start(turn.session_id, turn.message_id, str(progress.handoff["reason"]))
            turn.handoff = await self.handoff_info(turn.session_id, turn.store_id, since)
            turn.emit("handoff", turn.handoff)
            metrics.record_handoff(str(progress.handoff["reason"]))

    async def _rewind(self, turn: Turn, config: RunnableConfig) -> None:
        """A re-run starts from the checkpoint taken before the turn. With durability 'exit' the dead run wrote
        none (that one is the thread's latest); if it got as far as writing its own before dying, go back to its
        parent: LangGraph forks the thread from a `checkpoint_id` given in the config."""
        at: RunnableConfig = {"configurable": {"thread_id": str(turn.session_id)}}
        asked = str(turn.user_message_id)
        while True:
            state = await self.graph.aget_state(at)
            if not any(m.id == asked for m in (state.values or {}).get("messages", [])) or not state.parent_config:
                break
            at = state.parent_config
        if at.get("configurable", {}).get("checkpoint_id"):
            config["configurable"] = {**config.get("configurable", {}), **at["configurable"]}

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

    def _on_text(self, turn: Turn, progress: _Progress, text: str) -> None:
        """A chunk of the answer's text as the model streams it (graph/answer_stream.py): one `token` event."""
        if progress.first_token_ms is None:
            progress.first_token_ms = int((time.perf_counter() - turn.started) * 1000)
        progress.parts.append(text)
        turn.emit("token", {"delta": text})

    async def _finish(
        self, turn: Turn, progress: _Progress, status: str, error_code: str | None
    ) -> None:
        # the provider's own total for the answer's call (none when the turn ended before it did)
        usage = progress.final.usage_metadata if progress.final is not None else None
        if progress.condense_usage:
            usage = add_usage(usage, progress.condense_usage) if usage else progress.condense_usage
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
                stream_index=turn.stream_index(),
                run_id=turn.run_id,
            ), deadline_s=self.turn_timeout.total_seconds())
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
        if row["status"] not in RUNNING:
            raise TurnEnded(detail={"message_id": str(message_id), "status": row["status"]})
        if self.cancel_local(message_id):
            return
        if self.notify is not None:
            await self.notify(TURN_CONTROL, {"cancel": str(message_id)})

    def cancel_local(self, message_id: UUID) -> bool:
        """Cancel the turn if it runs in this process (True), else nothing (False)."""
        turn = self._turns.get(message_id)
        if turn is None or turn.task is None or turn.task.done():
            return False
        log.info("turn cancelled on request", extra={"run_id": str(message_id)})
        turn.task.cancel()
        return True

    # -- leases: a dead replica's turn is re-run by another

    async def keep_leases(self) -> None:
        """Every third of the lease: renew the leases of the turns running here (one statement), and take the
        turns whose lease ran out (their replica died) to re-run them here."""
        assert self.lease is not None
        lease_s = self.lease.total_seconds()
        quiet_until = 0.0
        while True:
            await asyncio.sleep(lease_s / 3)
            began = time.monotonic()
            try:
                await self.renew_leases()
                # a renewal that waited (a pooler holds statements while PostgreSQL is away) is an outage too
                if time.monotonic() - began > lease_s / 3:
                    quiet_until = time.monotonic() + lease_s
                elif not self.draining and time.monotonic() >= quiet_until:
                    await self.reclaim()
            except Exception as exc:  # the database may be away: the next round tries again
                log.warning("turn leases: %s", type(exc).__name__)
                # nobody could renew while it was away: once it is back, give the live replicas a whole lease to
                # renew theirs before taking any turn for dead (or an outage longer than a lease re-runs them all)
                quiet_until = time.monotonic() + lease_s

    async def renew_leases(self) -> None:
        """One statement, also when no turn runs here: it tells whether the database answers promptly."""
        assert self.lease is not None
        runs = {t.message_id: t for t in self._turns.values() if t.holds_lease}
        held = await self.messages.renew_leases({m: t.run_id or m for m, t in runs.items()}, self.lease)
        for message_id, turn in runs.items():
            if message_id not in held and turn.holds_lease and turn.task is not None:
                # re-run elsewhere (this replica was unreachable past its lease): stop spending tokens on it;
                # its end is not stored (finish_turn stores only the run holding the answer)
                log.warning("a turn's lease was lost; stopping it", extra={"run_id": str(turn.run_id)})
                turn.task.cancel()

    async def reclaim(self, limit: int = 10) -> list[Turn]:
        """Re-run here the turns whose lease ran out (at most `limit` per round), from the checkpoint before them;
        those already re-run once are closed error/abandoned by the same statement."""
        assert self.lease is not None
        turns = []
        for taken in await self.messages.reclaim_turns(self.lease, self.max_attempts, limit):
            turn = Turn(session_id=taken.session_id, store_id=taken.store_id, user_id=taken.user_id,
                        user_message_id=taken.user_message_id, message_id=taken.message_id, content=taken.content,
                        model=self.model_name,
                        prompt_variant=taken.prompt_variant or self.variants.pick(taken.session_id),
                        started=time.perf_counter(), run_id=taken.run_id, attempt=taken.attempt,
                        audience=taken.audience or DEFAULT_AUDIENCE)
            log.warning("re-running a turn whose replica died (attempt %d)", taken.attempt,
                        extra={"session_id": str(taken.session_id), "run_id": str(taken.run_id)})
            turn.emit("restart", restart_data(turn.attempt, taken.run_id))
            turn.emit("metadata", turn.metadata_event)
            self._launch(turn, self._run(turn))
            turns.append(turn)
        return turns

    # -- rejoining a turn's stream, on this replica or another

    async def rejoin(self, session_id: UUID, message_id: UUID, after: int
                     ) -> Numbered:
        """The events of an answer of this session after id `after`, whether it runs here, runs on another
        replica, or has ended. 404 (raised here, before any event) for no such answer."""
        turn = self._turns.get(message_id)
        if turn is not None and turn.session_id == session_id:
            return turn.events(after)
        row = await self.messages.get_stream(message_id)
        if row is None or row["session_id"] != session_id or row["role"] != "assistant":
            raise MessageNotFound(detail={"message_id": str(message_id)})
        if row["status"] not in RUNNING or self.notify is None:
            return _aiter(stored_events(row, after))
        # past its deadline a turn still `streaming` lost its replica: nobody will end it before recovery does
        return self._follow(row, after)

    def _patience(self, row: dict[str, Any]) -> float:
        """When a follower stops waiting for a running turn that says nothing: past the turn's deadline (counted
        from its start, or its re-run's) and a margin."""
        running_s = (datetime.now(UTC) - row["created_at"]).total_seconds()
        return time.monotonic() + self.turn_timeout.total_seconds() - running_s + FOLLOW_CHECK_S * 5

    async def _follow(self, row: dict[str, Any], after: int) -> Numbered:
        """A turn running on another replica: ask it (NOTIFY) to relay its events from `after`; when nothing
        comes for a while, look at the row, and once the turn has ended serve the rest from there (its replica
        may have died, or ended the turn before it heard us). A turn re-run elsewhere (a new run_id on the row)
        is asked again. Still nothing past its deadline: it ends with `error` `abandoned`."""
        assert self.notify is not None
        message_id, run_id = row["message_id"], row["run_id"]
        give_up = self._patience(row)
        key = uuid4().hex
        inbox: asyncio.Queue[list[Any]] = asyncio.Queue()
        self._followers[key] = inbox
        last, live, heard, silent = after, True, False, 0
        try:
            await self.notify(TURN_CONTROL, {"follow": str(message_id), "after": after, "to": key})
            while True:
                batch: list[Any] = []
                if live:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(FOLLOW_CHECK_S):  # not wait_for: see _run_when_free
                            batch = await inbox.get()
                else:
                    await asyncio.sleep(FOLLOW_CHECK_S)
                heard = heard or bool(batch)
                for item in batch:
                    if len(item) == 2 and item[0] > last:  # an event too big to relay: the rest comes from the row
                        live = False
                    if live and len(item) == 3 and item[0] > last:
                        last = item[0]
                        yield item[0], item[1], item[2]
                        if item[1] in ("done", "error"):
                            return
                if not batch:  # silence, or no longer live: has the turn ended?
                    now = await self.messages.get_stream(message_id)
                    if now is not None and now["status"] not in RUNNING:
                        for event in stored_events(now, last):
                            yield event
                        return
                    silent += 1
                    # re-run by another replica; or our request was not heard (sent as the turn started there)
                    if live and now is not None and (now["run_id"] != run_id or (not heard and silent % 3 == 0)):
                        run_id, give_up = now["run_id"], self._patience(now)
                        await self.notify(TURN_CONTROL, {"follow": str(message_id), "after": last, "to": key})
                    if time.monotonic() > give_up:
                        yield last + 1, "error", error_data("abandoned", message_id)
                        return
        finally:
            self._followers.pop(key, None)

    def on_control(self, message: dict[str, Any]) -> None:
        """A notification on TURN_CONTROL: act on it if the turn runs here."""
        if "cancel" in message:
            self.cancel_local(UUID(str(message["cancel"])))
        elif "follow" in message:
            turn = self._turns.get(UUID(str(message["follow"])))
            if turn is not None:
                task = asyncio.create_task(self._relay(turn, int(message.get("after", 0)), str(message["to"])))
                self._relays.add(task)
                task.add_done_callback(self._relays.discard)

    def on_events(self, message: dict[str, Any]) -> None:
        """A notification on TURN_EVENTS: a batch for a follower waiting here."""
        inbox = self._followers.get(str(message.get("to")))
        if inbox is not None:
            inbox.put_nowait(message["e"])

    async def _relay(self, turn: Turn, after: int, to: str) -> None:
        """Send a followed turn's events from `after` to its follower's replica, as they come, batched to fit a
        NOTIFY; an event too big for one goes as [id, "ref"] and the follower reads it from the row."""
        assert self.notify is not None
        seen = turn.position_after(after)
        try:
            while True:
                items = [[n, event, data]
                         for n, (event, data) in enumerate(turn.log[seen:], start=turn.first_id + seen)]
                seen += len(items)
                for payload in _batches(to, items):
                    await self.notify(TURN_EVENTS, payload)
                if turn.ended and seen >= len(turn.log):
                    return
                await turn.wait_beyond(seen)
        except Exception as exc:  # the follower falls back on the row; never fail the turn for it
            log.warning("relay of a followed turn failed: %s", type(exc).__name__,
                        extra={"run_id": str(turn.message_id)})

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
