"""IntegratedChatService: the one object the routes call for a turn, composed of the turn's parts
(server/services/turns/):

    admission  claim, queue, interrupt, hold for an operator          → Admission
    running    graph to events, token usage, the model's errors       → TurnRunner
    events     the turn's event log and its readers (Turn)            → events.Turn, stored_events
    finishing  store, prune, wake what is queued                      → Finisher
    leases     renew, reclaim, re-run                                 → Leases
    relay      follow and cancel across replicas                      → Relay

The turn runs in its own asyncio task and talks to the HTTP response through its event log, so a client that goes
away only cancels the model call when asked to: the task still writes the final row and releases the claim. No
connection is held while the model streams.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any
from uuid import UUID

from langchain_core.language_models import BaseChatModel
from langchain_core.retrievers import BaseRetriever
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Durability

from persistence.handoffs import HandoffRepository
from persistence.messages import MessageRepository
from server.integrations.tracing import Tracing
from server.schemas import Message
from server.services.stores import StoreSettingsService
from server.services.turns.admission import Admission, OnBusy
from server.services.turns.events import Numbered, OnDisconnect, Turn
from server.services.turns.finishing import Finisher
from server.services.turns.leases import Leases
from server.services.turns.relay import Relay
from server.services.turns.running import TurnRunner
from server.services.turns.setup import TurnSetup


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
        self.setup = setup = TurnSetup(
            graph=graph, messages=messages, model=model, retriever=retriever, turn_timeout=turn_timeout,
            expire_after=expire_after, max_message_chars=max_message_chars, max_metadata_bytes=max_metadata_bytes,
            retrieval_k=retrieval_k, history_messages=history_messages, prompt_variant=prompt_variant,
            tracing=tracing or Tracing.disabled(), durability=durability, prune_checkpoints=prune_checkpoints,
            on_disconnect=on_disconnect, max_queued=max_queued, lease=lease, max_attempts=max_attempts,
            min_similarity=min_similarity, store_settings=store_settings, model_for=model_for, handoffs=handoffs)
        self.runner = TurnRunner(setup, Finisher(setup))
        self.relay = Relay(setup, self.runner)
        self.admission = Admission(setup, self.runner, self.relay)
        self.leases = Leases(setup, self.runner)
        # what the routes and the wiring read
        self.graph, self.messages, self.model, self.retriever = graph, messages, model, retriever
        self.model_name = setup.model_name
        self.turn_timeout, self.expire_after, self.lease = turn_timeout, expire_after, lease
        self.store_settings = store_settings
        # the doors the wiring connects (server/resources.py): notifications heard from the other replicas
        self.on_control = self.relay.on_control  # TURN_CONTROL: cancel or follow a turn running here
        self.on_events = self.relay.on_events  # TURN_EVENTS: a followed turn's events for a follower here
        self.on_session_free = self.admission.on_session_free  # SESSION_FREE: wake the turns queued here

    @property
    def notify(self) -> Callable[[str, dict[str, Any] | str], Awaitable[None]] | None:
        """Sends to the other replicas (PostgreSQL NOTIFY), set by the wiring; None: a single process."""
        return self.relay.notify

    @notify.setter
    def notify(self, send: Callable[[str, dict[str, Any] | str], Awaitable[None]] | None) -> None:
        self.relay.notify = send

    @property
    def draining(self) -> bool:
        """Set on SIGTERM: running turns go on, new ones are refused (503 shutting_down)."""
        return self.runner.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.runner.draining = value

    @property
    def running_turns(self) -> int:
        return self.runner.running_turns

    async def start_turn(self, session_id: UUID, text: str, metadata: dict[str, Any],
                         on_disconnect: OnDisconnect | None = None, on_busy: OnBusy = "reject") -> Turn:
        return await self.admission.start_turn(session_id, text, metadata, on_disconnect, on_busy)

    async def run_to_end(self, session_id: UUID, text: str, metadata: dict[str, Any],
                         on_busy: OnBusy = "reject") -> tuple[Message | None, Message, dict[str, Any] | None]:
        return await self.admission.run_to_end(session_id, text, metadata, on_busy)

    async def cancel(self, session_id: UUID, message_id: UUID) -> None:
        await self.relay.cancel(session_id, message_id)

    async def rejoin(self, session_id: UUID, message_id: UUID, after: int) -> Numbered:
        return await self.relay.rejoin(session_id, message_id, after)

    async def keep_leases(self) -> None:
        await self.leases.keep_leases()

    async def shutdown(self, grace_s: float = 5.0) -> None:
        await self.runner.shutdown(grace_s)
