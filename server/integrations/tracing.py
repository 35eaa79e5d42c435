"""LangSmith: each turn's graph run traced (run id = assistant message id), feedback sent on that run.

Traces go through the `langsmith` client's background queue (multipart batches), so a turn never
waits on LangSmith: a slow or unreachable endpoint costs a queued batch and a warning, never turn
latency or a failed turn. Feedback calls run in worker threads for the same reason. Shutdown
flushes what is queued, bounded by LANGSMITH_FLUSH_TIMEOUT_SECONDS.

With TRACE_HIDE_CONTENT=true the text of inputs and outputs is replaced by "[hidden]" before it
leaves the process; metadata, token usage, model names, timings and errors still go.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler

from server.settings import Settings

log = logging.getLogger(__name__)

HIDDEN = "[hidden]"
# values under these keys are counts, names and timings, not what anyone wrote
_KEEP_KEYS = frozenset({
    "usage_metadata", "token_usage", "input_tokens", "output_tokens", "total_tokens", "prompt_tokens",
    "completion_tokens", "input_token_details", "output_token_details", "model_name", "model", "finish_reason",
    "system_fingerprint", "type", "role", "id", "run_id", "ls_provider", "ls_model_name", "ls_model_type",
    "response_metadata", "llm_output", "score", "url", "title",
})
_CLIENT_LOGGERS = ("langsmith.client", "langsmith._internal._background_thread")
FEEDBACK_NAMESPACE = uuid.UUID("0f1d6a52-5b39-4a59-9c43-2a3f8f0e4e11")


def app_version() -> str:
    try:
        return version("sixshop-ai-agent")
    except PackageNotFoundError:  # pragma: no cover - running from a tree that was never installed
        return "0+unknown"


def hide_content(data: Any, key: str | None = None) -> Any:
    """A copy with every string replaced by HIDDEN, except under keys that hold metadata.

    Fails closed: messages and documents (pydantic models) are dumped and hidden field by field,
    and any other object is replaced whole.
    """
    if key in _KEEP_KEYS and key not in ("response_metadata", "llm_output"):
        return data
    if isinstance(data, dict):
        return {k: hide_content(v, str(k)) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [hide_content(v) for v in data]
    if isinstance(data, str):
        return HIDDEN
    if data is None or isinstance(data, bool | int | float | uuid.UUID):
        return data
    dump = getattr(data, "model_dump", None)
    if callable(dump):
        return hide_content(dump())
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        return hide_content(dataclasses.asdict(data))
    return HIDDEN


def feedback_id(message_id: uuid.UUID) -> uuid.UUID:
    """One LangSmith feedback per message: repeated feedback updates it."""
    return uuid.uuid5(FEEDBACK_NAMESPACE, str(message_id))


class _SendErrors(logging.Handler):
    """Counts the client's own reports of batches it could not deliver."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "Failed to" in record.getMessage():
            self.count += 1


class Tracing:
    """What the chat service and the feedback endpoint need from LangSmith (or nothing, when off)."""

    def __init__(self, client: Any = None, *, project: str = "sixshop-ai-agent", app_env: str = "development",
                 flush_timeout_s: float = 5.0) -> None:
        self.client = client
        self.enabled = client is not None
        self.project = project
        self.tags = [f"env:{app_env}", "sixshop-ai-agent"]
        self.version = app_version()
        self.flush_timeout_s = flush_timeout_s
        self.feedback_errors = 0
        self._pending: set[asyncio.Task[None]] = set()
        self._project_id: uuid.UUID | None = None
        self._url_prefix: str | None = None
        self._send_errors = _SendErrors()
        if self.enabled:
            for name in _CLIENT_LOGGERS:
                logging.getLogger(name).addHandler(self._send_errors)

    @classmethod
    def disabled(cls) -> Tracing:
        return cls()

    @classmethod
    def from_settings(cls, settings: Settings) -> Tracing:
        if not settings.tracing_enabled:
            return cls(app_env=settings.app_env)
        from langsmith import Client

        hide = hide_content if settings.trace_hide_content else None
        client = Client(
            api_url=settings.langsmith_endpoint,
            api_key=settings.langsmith_api_key.get_secret_value() if settings.langsmith_api_key else None,
            auto_batch_tracing=True,
            hide_inputs=hide,
            hide_outputs=hide,
            timeout_ms=(2_000, 10_000),
        )
        return cls(client, project=settings.langsmith_project, app_env=settings.app_env,
                   flush_timeout_s=settings.langsmith_flush_timeout_seconds)

    @property
    def send_errors(self) -> int:
        return self._send_errors.count + self.feedback_errors

    def queue_depth(self) -> int:
        queue = getattr(self.client, "tracing_queue", None)
        return int(queue.qsize()) if queue is not None else 0

    def callbacks(self) -> list[BaseCallbackHandler]:
        if not self.enabled:
            return []
        from langchain_core.tracers.langchain import LangChainTracer

        return [LangChainTracer(project_name=self.project, client=self.client, tags=self.tags)]

    @contextmanager
    def context(self) -> Iterator[None]:
        """Around a run: when tracing is off here, environment variables must not turn it on."""
        if self.enabled:
            yield
            return
        from langsmith import tracing_context

        with tracing_context(enabled=False):
            yield

    def metadata(self, **fields: Any) -> dict[str, Any]:
        return {**fields, "app_version": self.version}

    # -- links to traces (the operator page) --------------------------------------------------------

    async def trace_url(self, run_id: uuid.UUID | None) -> str | None:
        """The run's page in LangSmith (the URL langsmith's `get_run_url` builds), or None when tracing
        is off or the project cannot be looked up; the project is looked up once."""
        if not self.enabled or run_id is None:
            return None
        if self._url_prefix is None:
            try:
                project = await asyncio.to_thread(self.client.read_project, project_name=self.project)
            except Exception as exc:
                log.warning("LangSmith project %r not found for trace links: %s", self.project, type(exc).__name__)
                return None
            self._project_id = project.id
            self._url_prefix = f"{self.client._host_url}/o/{project.tenant_id}/projects/p/{project.id}/r/"
        return f"{self._url_prefix}{run_id}?poll=true"

    # -- feedback ---------------------------------------------------------------------------------

    def send_feedback(self, message_id: uuid.UUID, run_id: uuid.UUID, score: float, comment: str | None,
                      *, created: bool) -> None:
        """Queue the `user_score` feedback for this run; returns at once."""
        if not self.enabled:
            return
        task = asyncio.create_task(self._feedback(message_id, run_id, score, comment, created))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _feedback(self, message_id: uuid.UUID, run_id: uuid.UUID, score: float, comment: str | None,
                        created: bool) -> None:
        fid = feedback_id(message_id)
        try:
            if created:
                await asyncio.to_thread(self._create_feedback, run_id, fid, score, comment)
            else:
                await asyncio.to_thread(self.client.update_feedback, fid, score=score, comment=comment)
        except Exception as exc:
            self.feedback_errors += 1
            log.warning("LangSmith feedback for message %s not sent: %s", message_id, type(exc).__name__)

    def _create_feedback(self, run_id: uuid.UUID, fid: uuid.UUID, score: float, comment: str | None) -> None:
        # LangSmith wants the project (its "session") with the feedback; looked up once by name
        if self._project_id is None:
            try:
                self._project_id = self.client.read_project(project_name=self.project).id
            except Exception as exc:  # still send: the run id alone identifies the run
                log.warning("LangSmith project %r not found for feedback: %s", self.project, type(exc).__name__)
        self.client.create_feedback(run_id=run_id, trace_id=run_id, key="user_score", score=score, comment=comment,
                                    feedback_id=fid, session_id=self._project_id)

    async def aclose(self) -> None:
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=self.flush_timeout_s)
        if self.client is not None:
            try:
                # drains what is queued (bounded), stops the client's threads, and unregisters its
                # atexit hook: what could not be sent in time is dropped, not retried at exit
                await asyncio.wait_for(asyncio.to_thread(self.client.close, self.flush_timeout_s),
                                       self.flush_timeout_s + 1)
            except Exception as exc:
                log.warning("LangSmith traces not flushed at shutdown: %s", type(exc).__name__)
            for name in _CLIENT_LOGGERS:
                logging.getLogger(name).removeHandler(self._send_errors)
