"""What every part of a turn reads: the graph, the repositories, the models, the limits, and a store's own settings.

One `TurnSetup` is built by IntegratedChatService (server/services/chat.py) from its arguments and shared by the
parts; none of them changes it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from langchain_core.language_models import BaseChatModel
from langchain_core.retrievers import BaseRetriever
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Durability

from graph.handoff import opens_at
from graph.models import model_label
from graph.prompts import VariantPicker
from persistence.handoffs import HandoffRepository
from persistence.messages import MessageRepository
from server.integrations.tracing import Tracing
from server.services.stores import StoreSettingsService
from server.services.turns.events import OnDisconnect


@functools.cache
def _picker(weights: tuple[tuple[str, float], ...]) -> VariantPicker:
    return VariantPicker(dict(weights))


@dataclass
class TurnSetup:
    graph: CompiledStateGraph[Any, Any, Any, Any]
    messages: MessageRepository
    model: BaseChatModel
    retriever: BaseRetriever | None
    turn_timeout: timedelta
    expire_after: timedelta
    max_message_chars: int
    max_metadata_bytes: int
    retrieval_k: int
    history_messages: int
    prompt_variant: str
    tracing: Tracing = field(default_factory=Tracing.disabled)
    # one checkpoint write per turn, and only the latest kept: storage linear in the conversation
    durability: Durability = "exit"
    prune_checkpoints: bool = True
    on_disconnect: OnDisconnect = "continue"  # what a turn does when the client that started it leaves
    max_queued: int = 3
    # a running turn's lease (None: no leases, a dead replica's turn waits for the turn timeout); a turn whose
    # lease ran out is re-run by another replica, up to max_attempts runs in all
    lease: timedelta | None = None
    max_attempts: int = 2
    min_similarity: float | None = None  # the knowledge stack's (server/integrations/knowledge.py)
    store_settings: StoreSettingsService | None = None  # each store's own assistant (server/services/stores.py)
    model_for: Callable[[str], BaseChatModel] | None = None  # a store's own model by name (None: all get `model`)
    handoffs: HandoffRepository | None = None  # handing shoppers to a person (None: never; graph/handoff.py)
    model_name: str = field(init=False)  # the default model's label: the `model` a turn starts with
    variants: VariantPicker = field(init=False)  # the service's prompt weights (PROMPT_VARIANT)

    def __post_init__(self) -> None:
        self.model_name = model_label(self.model)
        self.variants = VariantPicker.parse(self.prompt_variant)

    async def store(self, store_id: str) -> dict[str, Any]:
        """The store's own settings ({}: none, or no settings service): from this process's cache, dropped on every
        replica when they change."""
        return await self.store_settings.for_turn(store_id) if self.store_settings is not None else {}

    def model_of(self, store: dict[str, Any]) -> BaseChatModel:
        """The model that answers for a store: its own (settings' `model`) when the service can make it."""
        return self.model_for(store["model"]) if self.model_for is not None and store.get("model") else self.model

    async def store_variant(self, store_id: str, session_id: UUID) -> str | None:
        """The prompt variant a store's own weights (its settings' prompt_variants) give this session; None: the
        service's weights (PROMPT_VARIANT) apply."""
        weights = (await self.store(store_id)).get("prompt_variants")
        if not weights:
            return None
        return _picker(tuple(sorted((str(k), float(v)) for k, v in weights.items()))).pick(session_id)

    async def handoff_info(self, session_id: UUID, store_id: str, since: datetime | None) -> dict[str, Any]:
        """What a shopper is told while their session waits for a person: since when, and whether operators are
        in now (the store's handoff hours), else when they will be."""
        now = datetime.now(UTC)
        at = opens_at((await self.store(store_id)).get("handoff_hours"), now)
        return {"since": (since or now).isoformat(), "operator_hours_open": at is None or at <= now,
                "opens_at": at.isoformat() if at is not None and at > now else None}
