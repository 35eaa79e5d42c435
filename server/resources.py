"""What one process holds: the database, the pool, the compiled graph and the services on them."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from langchain_core.language_models import BaseChatModel

from graph.graph import build_graph
from graph.models import aclose_model, make_chat_model
from graph.text import korean_morphemes
from persistence.capacity import CapacityRepository
from persistence.checkpointer import make_checkpointer
from persistence.db import Pool, PoolConfig, TimedPool, open_pool
from persistence.embedded import embedded_conninfo, start_embedded
from persistence.handoffs import SESSION_EVENTS, HandoffRepository
from persistence.keys import KeyRepository, ShopperLimits
from persistence.messages import MessageRepository
from persistence.migrations import xact_advisory_lock
from persistence.notify import SESSION_FREE, TURN_CONTROL, TURN_EVENTS, Handler, Listener, publish
from persistence.operators import OperatorRepository
from persistence.sessions import SessionRepository
from persistence.stats import StatsRepository
from persistence.store_settings import STORE_SETTINGS, StoreSettingsRepository
from persistence.webhooks import WEBHOOKS, WebhookRepository
from server import metrics
from server.integrations.knowledge import KnowledgeStack, build_knowledge
from server.integrations.tracing import Tracing
from server.preflight import (
    StartupError,
    check_can_migrate,
    check_schema,
    listen_conninfo,
    migrate_schema,
    probe_database,
    uses_pooler,
)
from server.services.analytics import ChatAnalyticsService
from server.services.auth import Authenticator
from server.services.capacity import CapacityService, Limits
from server.services.chat import IntegratedChatService
from server.services.handoffs import HandoffService
from server.services.lifecycle import LifecycleJob
from server.services.operators import OperatorAccounts
from server.services.sessions import SessionService
from server.services.stores import StoreSettingsService
from server.services.tokens import SessionTokens, parse_secrets
from server.services.webhooks import WebhookDeliverer
from server.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Resources:
    settings: Settings
    pool: Pool
    sessions: SessionService
    messages: MessageRepository
    chat: IntegratedChatService
    analytics: ChatAnalyticsService
    knowledge: KnowledgeStack
    tracing: Tracing
    capacity: CapacityService
    auth: Authenticator
    operators: OperatorAccounts
    store_settings: StoreSettingsService
    handoffs: HandoffService
    webhooks: WebhookRepository
    embedded: Any = None
    drain_started: float | None = None  # time.monotonic() of SIGTERM

    @property
    def draining(self) -> bool:
        return self.chat.draining

    def drain(self) -> bool:
        """Stop taking turns (503 shutting_down) and answer not-ready; running turns go on. True the first time."""
        if self.chat.draining:
            return False
        log.info("draining: not ready, no new turns; %d turns running", self.chat.running_turns)
        self.chat.draining = True
        self.drain_started = time.monotonic()
        return True


def resolve_conninfo(settings: Settings) -> tuple[str, Any]:
    """The configured server, or an embedded one started (or joined) in EMBEDDED_PG_DIR."""
    conninfo = settings.conninfo()
    if conninfo is not None:
        return conninfo, None
    server = start_embedded(settings.embedded_pg_dir)
    return embedded_conninfo(server), server


@asynccontextmanager
async def open_database(settings: Settings, *, direct: bool = False) -> AsyncIterator[tuple[TimedPool, Any]]:
    """The pool (and the embedded server, if one was started). `direct`, for what needs a session (migrations):
    DATABASE_URL when it reaches PostgreSQL itself, else DATABASE_DIRECT_URL, else refused.

    One probe connection first: a connection failure becomes one line naming the setting (StartupError), and
    a pooler in between is detected, so the pool uses no prepared statements."""
    conninfo, embedded = resolve_conninfo(settings)
    try:
        facts = await probe_database(settings, conninfo)
        pooled = uses_pooler(settings, facts)
        if direct and pooled:
            direct_conninfo = settings.direct_conninfo() if settings.database_direct_url is not None else None
            if direct_conninfo is None:
                raise StartupError("migrations need a session on PostgreSQL itself, and DATABASE_URL goes through "
                                   "a transaction pooler: set DATABASE_DIRECT_URL")
            conninfo = direct_conninfo
            facts = await probe_database(settings, conninfo, direct=True)
            pooled = uses_pooler(settings, facts)
            if pooled:
                raise StartupError("DATABASE_DIRECT_URL goes through a transaction pooler too: point it at "
                                   "PostgreSQL itself (migrations need a session)")
        pool = await open_pool(
            PoolConfig(
                conninfo=conninfo,
                min_size=min(settings.db_pool_min, settings.db_pool_max),
                max_size=max(settings.db_pool_max, 2),  # migrate() holds one connection while setup() takes another
                max_idle_s=settings.db_idle_timeout / 1000,
                timeout_s=settings.db_connection_timeout / 1000,
                prepare=not pooled,
            )
        )
    except BaseException:
        if embedded is not None:
            embedded.cleanup()
        raise
    log.info("database: PostgreSQL %d.%d as %s%s", facts.server_version // 10000, facts.server_version % 100,
             facts.user, ", through a transaction pooler: no prepared statements" if pooled else "")
    if facts.superuser and settings.app_env == "production" and not direct:
        log.warning("the service connects as a superuser (%s): production replicas should use an app role "
                    "without DDL rights (docs/deploying.md)", facts.user)
    try:
        yield pool, embedded
    finally:
        await pool.close()
        if embedded is not None:
            # here, not only at exit: uvicorn ends a SIGTERMed process by re-raising the signal, and atexit
            # handlers do not run then. The server stops when its last user (process) lets go.
            embedded.cleanup()


async def ensure_schema(settings: Settings, pool: TimedPool) -> None:
    """MIGRATE_ON_START=true: migrate (on DATABASE_DIRECT_URL behind a transaction pooler: the migration lock
    needs a session). false, as replicas run in production after `sixshop-agent migrate` ran once as the
    migration role: check the schema and the role's privileges, change nothing."""
    if not settings.auto_migrate:
        await check_schema(pool)
        return
    check_can_migrate(settings, pool.behind_pooler)
    if not pool.behind_pooler:
        await migrate_schema(pool)
        return
    async with open_database(settings, direct=True) as (direct_pool, _):
        await migrate_schema(direct_pool)


async def open_turn_control(settings: Settings, pool: TimedPool, chat: IntegratedChatService,
                            more: dict[str, Handler] | None = None) -> Listener:
    """Cancel requests between replicas: NOTIFY on the pool, LISTEN on a session of this process's own — on
    PostgreSQL itself (DATABASE_DIRECT_URL) when DATABASE_URL is a transaction pooler, which carries no LISTEN."""
    conninfo = await listen_conninfo(settings, pool)

    async def notify(channel: str, message: dict[str, Any] | str) -> None:
        await publish(pool, channel, message)

    handlers: dict[str, Handler] = {TURN_CONTROL: chat.on_control, TURN_EVENTS: chat.on_events,
                                    SESSION_FREE: chat.on_session_free}
    if chat.store_settings is not None:  # a store's settings changed on some replica: drop the cached copy
        handlers[STORE_SETTINGS] = chat.store_settings.on_change
    handlers.update(more or {})
    listener = Listener(conninfo, handlers)
    await listener.start()
    chat.notify = notify
    return listener


async def index_sample(settings: Settings, pool: Pool, knowledge: KnowledgeStack) -> None:
    """Index the sample help centre while the knowledge base holds nothing else (incremental: a no-op when
    current). Under the migration lock, so several workers starting together do it once."""
    from server.integrations.ingest import ingest_path

    async with pool.connection() as conn, xact_advisory_lock(conn):
        if await knowledge.indexer.repo.documents_outside("sample") > 0:
            return
        try:
            report = await ingest_path(knowledge.indexer, settings.knowledge_dir, source="sample")
        except Exception as exc:  # e.g. the embeddings endpoint is down: serve anyway, say so
            log.warning("could not index the sample knowledge base for %s (%s); it is retried at the next "
                        "start", knowledge.backend, type(exc).__name__)
            return
    if report.added or report.updated or report.deleted:
        log.info("sample knowledge base indexed for %s: %s", knowledge.backend, report.summary())


async def prepare_knowledge(settings: Settings, pool: Pool) -> KnowledgeStack:
    """The knowledge stack, with the sample help centre indexed first when the index is empty
    (INGEST_SAMPLE_IF_EMPTY): what `serve` and `sixshop-agent prepare` do at start."""
    knowledge = await build_knowledge(settings, pool)
    if settings.ingest_sample_if_empty:
        await index_sample(settings, pool, knowledge)
    return knowledge


def chat_model(settings: Settings) -> BaseChatModel:
    """The configured chat model: OpenAI's (or a compatible server's) with a key, else the offline answerer."""
    return make_chat_model(
        openai_api_key=settings.openai_api_key.get_secret_value() if settings.openai_api_key else None,
        openai_base_url=settings.openai_base_url,
        model_name=settings.openai_model,
        temperature=settings.openai_temperature,
        timeout_s=settings.openai_timeout_seconds,
        max_retries=settings.openai_max_retries,
        offline_chunk_delay_s=settings.offline_chunk_delay_ms / 1000,
        http_client=settings.openai_http_client,
    )


class StoreModels:
    """A chat model by name for stores that set their own (`model` in their settings), made once per name."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.made: dict[str, BaseChatModel] = {}

    def __call__(self, name: str) -> BaseChatModel:
        if name not in self.made:
            self.made[name] = chat_model(self.settings.model_copy(update={"openai_model": name}))
        return self.made[name]

    async def aclose(self) -> None:
        for model in self.made.values():
            await aclose_model(model)


def store_model_factory(settings: Settings) -> StoreModels | None:
    """None without an OpenAI key (the offline answerer has no models to choose from)."""
    return StoreModels(settings) if settings.openai_api_key is not None else None


def make_capacity(settings: Settings, pool: Pool) -> CapacityService:
    return CapacityService(CapacityRepository(pool), pool, Limits(
        connections=settings.capacity_connections_limit,
        sessions_per_month=settings.capacity_sessions_per_month_limit,
    ))


def observe_pool(pool: Pool) -> None:
    if isinstance(pool, TimedPool) and not pool.observers:
        pool.observers.append(_observe_db)


def _observe_db(wait_s: float, hold_s: float) -> None:
    metrics.DB_WAIT_SECONDS.observe(wait_s)
    metrics.DB_HOLD_SECONDS.observe(hold_s)


def session_token_secrets(settings: Settings) -> list[tuple[str, str]] | None:
    """SESSION_TOKEN_SECRET parsed; None where the service may make its own (outside production). One line naming
    the setting when production has none, or a bad one."""
    if settings.session_token_secret is None:
        if settings.app_env == "production":
            raise StartupError("SESSION_TOKEN_SECRET is required in production (the session tokens' signing secret, "
                               "at least 32 characters; `kid:secret,...` to rotate)")
        return None
    try:
        return parse_secrets(settings.session_token_secret.get_secret_value())
    except ValueError as exc:
        raise StartupError(str(exc)) from None


async def session_tokens(settings: Settings, limits: ShopperLimits) -> SessionTokens:
    given = session_token_secrets(settings)
    secrets = given or [("local", await limits.server_secret("session_token_secret"))]
    return SessionTokens(secrets, issuer="sixshop-ai-agent", ttl_s=int(settings.session_token_ttl_hours * 3600))


@asynccontextmanager
async def open_resources(settings: Settings) -> AsyncIterator[Resources]:
    session_token_secrets(settings)  # before anything starts: a production without one stops here
    async with open_database(settings) as (pool, embedded):
        await ensure_schema(settings, pool)
        # a process killed mid-turn left rows 'streaming' and sessions claimed: close what is past the timeout
        await LifecycleJob(pool, settings).recover()
        knowledge = await prepare_knowledge(settings, pool)
        # Kiwi takes ~1 s to load: at start, not in the first Korean turn
        await asyncio.to_thread(korean_morphemes, "준비")
        model = chat_model(settings)
        graph = build_graph(make_checkpointer(pool))
        tracing = Tracing.from_settings(settings)
        expire_after = timedelta(hours=settings.session_expire_hours)
        session_repo = SessionRepository(pool)
        messages = MessageRepository(pool)
        store_settings = StoreSettingsService(StoreSettingsRepository(pool))
        handoff_repo = HandoffRepository(pool)
        handoffs = HandoffService(handoff_repo, graph, max_message_chars=settings.max_message_chars,
                                  stale_after=timedelta(seconds=settings.turn_timeout_seconds))
        store_models = store_model_factory(settings)
        chat = IntegratedChatService(
            graph=graph,
            messages=messages,
            model=model,
            retriever=knowledge.retriever,
            min_similarity=knowledge.min_similarity,
            turn_timeout=timedelta(seconds=settings.turn_timeout_seconds),
            expire_after=expire_after,
            max_message_chars=settings.max_message_chars,
            max_metadata_bytes=settings.max_metadata_bytes,
            retrieval_k=settings.retrieval_k,
            history_messages=settings.history_messages,
            prompt_variant=settings.prompt_variant,
            tracing=tracing,
            on_disconnect=settings.turn_on_disconnect,
            max_queued=settings.max_queued_turns,
            store_settings=store_settings,
            model_for=store_models,
            handoffs=handoff_repo if settings.handoff_enabled else None,
            lease=timedelta(seconds=settings.turn_lease_seconds) if settings.turn_lease_seconds > 0 else None,
        )
        webhook_repo = WebhookRepository(pool)
        deliverer = WebhookDeliverer(webhook_repo, retry_for=timedelta(minutes=settings.webhook_retry_minutes),
                                     first_wait=timedelta(seconds=settings.webhook_first_retry_seconds))
        listener = await open_turn_control(settings, pool, chat, {SESSION_EVENTS: handoffs.on_event,
                                                                  WEBHOOKS: deliverer.on_queued})
        capacity = make_capacity(settings, pool)
        shopper_limits = ShopperLimits(pool)
        resources = Resources(
            store_settings=store_settings,
            handoffs=handoffs,
            webhooks=webhook_repo,
            settings=settings,
            pool=pool,
            sessions=SessionService(session_repo, expire_after=expire_after, store_settings=store_settings,
                                    max_metadata_bytes=settings.max_metadata_bytes),
            messages=messages,
            chat=chat,
            analytics=ChatAnalyticsService(StatsRepository(pool, settings.model_prices), session_repo,
                                           default_tz=settings.stats_timezone),
            knowledge=knowledge,
            tracing=tracing,
            capacity=capacity,
            auth=Authenticator(KeyRepository(pool), production=settings.app_env == "production",
                               default_turns_per_minute=settings.rate_limit_turns_per_minute,
                               cache_s=settings.keys_cache_seconds,
                               tokens=await session_tokens(settings, shopper_limits), store_settings=store_settings,
                               limits=shopper_limits, sessions_per_ip_per_hour=settings.sessions_per_ip_per_hour),
            operators=OperatorAccounts(OperatorRepository(pool),
                                       session_lifetime=timedelta(hours=settings.operator_session_hours)),
            embedded=embedded,
        )
        observe_pool(pool)
        metrics.RUNTIME.resources = resources
        # handoff notifications, sent in the background by whichever replica claims each
        background = [asyncio.create_task(deliverer.run_forever(), name="webhooks")]
        if settings.capacity_sample_seconds > 0:
            background.append(asyncio.create_task(capacity.run_sampler(settings.capacity_sample_seconds),
                                                  name="capacity-sampler"))
        # renewed until the last turn here has ended (shutdown's grace included), or others would re-run them
        leases = asyncio.create_task(chat.keep_leases(), name="turn-leases") if chat.lease is not None else None
        if settings.session_cleanup_interval_minutes > 0:
            background.append(asyncio.create_task(LifecycleJob(pool, settings).run_forever(), name="lifecycle"))
        try:
            yield resources
        finally:
            for task in background:
                task.cancel()
            if background:  # let them hand their connections back before the pool closes
                await asyncio.wait(background, timeout=5)
            metrics.RUNTIME.resources = None
            # turns whose clients left are not held by the server's graceful wait: they get what is left of
            # SHUTDOWN_GRACE_SECONDS since the drain began
            waited = time.monotonic() - resources.drain_started if resources.drain_started else 0.0
            await chat.shutdown(max(0.0, settings.shutdown_grace_seconds - waited))
            if leases is not None:
                leases.cancel()
                await asyncio.gather(leases, return_exceptions=True)
            await listener.aclose()
            await knowledge.aclose()
            await aclose_model(model)
            if store_models is not None:
                await store_models.aclose()
            await tracing.aclose()
