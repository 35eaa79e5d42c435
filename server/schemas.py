"""Request and response shapes of API.md, as msgspec Structs (validated on decode, shown at /schema)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Annotated, Any, Literal, TypeVar
from uuid import UUID

import msgspec
from msgspec import Meta

from server.errors import PayloadTooLarge, ValidationFailed

T = TypeVar("T")

StoreId = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:@\-]*$")]
UserId = Annotated[str, Meta(min_length=1, max_length=256)]


class CreateSessionRequest(msgspec.Struct, forbid_unknown_fields=True):
    store_id: StoreId
    user_id: UserId | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


class IdentifyRequest(msgspec.Struct, forbid_unknown_fields=True):
    store_id: StoreId
    identity: Annotated[str, Meta(min_length=1, max_length=4096)]  # a JWT signed by the store's backend


class IdentifyResponse(msgspec.Struct):
    session_token: str
    user_id: str
    session_id: UUID


class WidgetConfig(msgspec.Struct):
    store_id: str
    display_name: str | None
    greeting: str | None
    language: str


class ChatRequest(msgspec.Struct, forbid_unknown_fields=True):
    message: Annotated[str, Meta(min_length=1)]
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    # a message sent while a turn runs: answered after it (enqueue), refused (reject: 409), or answered
    # instead of it (interrupt: the running turn is stopped and stored `cancelled`)
    on_busy: Literal["enqueue", "reject", "interrupt"] = "enqueue"


class FeedbackRequest(msgspec.Struct, forbid_unknown_fields=True):
    score: Annotated[float, Meta(ge=0, le=1)]
    comment: Annotated[str, Meta(max_length=4000)] | None = None


class Source(msgspec.Struct):
    id: str
    title: str
    url: str | None
    score: float
    snippet: str


class Session(msgspec.Struct):
    session_id: UUID
    store_id: str
    user_id: str | None
    status: Literal["active", "expired", "handoff"]
    metadata: dict[str, Any]
    message_count: int
    input_tokens: int
    output_tokens: int
    created_at: datetime
    last_activity_at: datetime
    expires_at: datetime
    turn_running: bool
    greeting: str | None = None  # the store's greeting (its settings), in the answer that opens a session
    # in the answer that opens a session: the JWT a browser sends for it (API.md, "Shoppers in the browser")
    session_token: str | None = None


class Message(msgspec.Struct):
    message_id: UUID
    session_id: UUID
    role: Literal["user", "assistant", "operator"]
    content: str
    status: Literal["complete", "streaming", "error", "cancelled", "queued"]
    model: str | None
    input_tokens: int
    output_tokens: int
    latency_ms: int | None
    first_token_ms: int | None
    sources: list[Source]
    run_id: UUID | None
    created_at: datetime
    prompt_variant: str | None = None
    error_code: str | None = None
    author: str | None = None  # an operator message's operator


class SessionPage(msgspec.Struct):
    items: list[Session]
    next_cursor: str | None


class MessagePage(msgspec.Struct):
    items: list[Message]


class HandoffInfo(msgspec.Struct):
    since: str  # when the session was handed to a person
    operator_hours_open: bool  # whether operators are in now (the store's handoff hours)
    opens_at: str | None = None  # outside the hours: when they will be


class ChatResponse(msgspec.Struct):
    message: Message
    user_message: Message
    # this answer handed the shopper to a person (the session is now `handoff`); absent otherwise
    handoff: HandoffInfo | msgspec.UnsetType = msgspec.UNSET


class HandoffResponse(msgspec.Struct):
    """`/chat` to a session waiting for a person (202): the message is kept for the operator; no answer."""
    user_message: Message
    handoff: HandoffInfo


class KeyRequest(msgspec.Struct, forbid_unknown_fields=True):
    store_id: StoreId | None = None  # none: an admin key (administrators only)
    publishable: bool = False  # a pk-sixshop- key for a store's web page
    name: Annotated[str, Meta(max_length=200)] | None = None


class CreatedKey(msgspec.Struct):
    key: str  # shown once, here
    key_id: UUID
    store_id: str | None
    kind: str
    prefix: str


class OperatorReply(msgspec.Struct, forbid_unknown_fields=True):
    content: str
    # who replies, as the transcript shows it (default: the caller's key or token)
    operator: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] | None = None


class FeedbackResponse(msgspec.Struct):
    message_id: UUID
    score: float
    comment: str | None


class StatsFigures(msgspec.Struct, kw_only=True):
    """The figures every statistics row carries (API.md's SessionStats/StoreStats fields, plus turn_count)."""

    message_count: int = 0
    turn_count: int = 0  # assistant messages
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    avg_latency_ms: float | None = None
    p50_latency_ms: float | None = None
    p95_latency_ms: float | None = None
    avg_first_token_ms: float | None = None
    error_rate: float = 0.0
    feedback_count: int = 0
    avg_feedback_score: float | None = None
    operator_message_count: int = 0  # messages written by a person (role operator)


class SessionStats(StatsFigures, kw_only=True):
    session_id: UUID


class GroupFigures(StatsFigures, kw_only=True):
    session_count: int = 0


class HandoffFigures(GroupFigures, kw_only=True):
    """A store's and a day's figures add the handoffs to a person started in the period, and the wait for an
    operator's first reply in seconds (handoffs still unanswered are counted, not timed)."""

    handoff_count: int = 0
    p50_first_reply_s: float | None = None
    p95_first_reply_s: float | None = None


class DailyStats(HandoffFigures, kw_only=True):
    date: date


class VariantStats(GroupFigures, kw_only=True):
    prompt_variant: str


class ModelStats(GroupFigures, kw_only=True):
    model: str


class StoreStats(HandoffFigures, kw_only=True):
    store_id: str
    from_: datetime | None = msgspec.field(default=None, name="from")
    to: datetime | None = None
    tz: str = "UTC"  # the time zone of the daily buckets
    daily: list[DailyStats] = msgspec.field(default_factory=list)
    by_prompt_variant: list[VariantStats] = msgspec.field(default_factory=list)  # assistant messages
    by_model: list[ModelStats] = msgspec.field(default_factory=list)  # assistant messages


class DatabaseHealth(msgspec.Struct):
    ok: bool
    latency_ms: float | None


class Health(msgspec.Struct):
    status: Literal["ok", "degraded"]
    database: DatabaseHealth
    model: str
    retriever: str
    tracing: bool
    version: str


class CancelAccepted(msgspec.Struct):
    """202 to a cancel: the turn stops on whichever replica runs it and is stored `cancelled`."""

    message_id: UUID
    status: Literal["cancelling"] = "cancelling"


class Liveness(msgspec.Struct):
    status: Literal["alive"]


class Readiness(msgspec.Struct):
    status: Literal["ready"]
    database: DatabaseHealth


class ErrorBody(msgspec.Struct):
    code: str
    message: str
    detail: dict[str, Any] | None = None


def check_text(text: str, field: str, max_chars: int) -> str:
    """A message's text as it may be stored (a shopper's or an operator's): not empty, at most `max_chars`
    (413), no NUL character (PostgreSQL text cannot hold one); 4xx naming `field` otherwise."""
    if not text.strip():
        raise ValidationFailed(f"{field} must not be empty", {"field": field})
    if len(text) > max_chars:
        raise PayloadTooLarge(f"{field} is longer than {max_chars} characters",
                              {"field": field, "max_chars": max_chars, "chars": len(text)})
    if "\x00" in text:
        raise ValidationFailed(f"{field} must not contain NUL characters", {"field": field})
    return text


def check_metadata_size(metadata: dict[str, Any], max_bytes: int) -> None:
    """Client metadata is stored on every row it comes with: cap its encoded size."""
    if len(msgspec.json.encode(metadata)) > max_bytes:
        detail = {"field": "metadata", "max_bytes": max_bytes}
        raise PayloadTooLarge(f"metadata is larger than {max_bytes} bytes", detail)


def session_out(row: dict[str, Any], expire_after: timedelta) -> Session:
    return Session(
        session_id=row["session_id"],
        store_id=row["store_id"],
        user_id=row["user_id"],
        status=row["status"],
        metadata=row["metadata"],
        message_count=row["message_count"],
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
        created_at=row["created_at"],
        last_activity_at=row["last_activity_at"],
        expires_at=row["last_activity_at"] + expire_after,
        turn_running=row["active_run_id"] is not None,
    )


def message_out(row: dict[str, Any]) -> Message:
    return Message(
        message_id=row["message_id"],
        session_id=row["session_id"],
        role=row["role"],
        content=row["content"],
        status=row["status"],
        model=row["model"],
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
        latency_ms=row["latency_ms"],
        first_token_ms=row["first_token_ms"],
        sources=[msgspec.convert(s, Source) for s in row["sources"]],
        run_id=row["run_id"],
        created_at=row["created_at"],
        prompt_variant=row["prompt_variant"],
        error_code=row["error_code"],
        author=row.get("author"),
    )


def decode_body(raw: bytes, kind: type[T]) -> T:
    """A JSON body decoded strictly into `kind` (no lenient conversions: "1" is not a number); an empty
    body is `{}`; malformed JSON or a wrong shape is a 400 with msgspec's reason."""
    try:
        return msgspec.json.decode(raw or b"{}", type=kind)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError too
        raise ValidationFailed(str(exc)) from None


def sse_frame(event_id: int | None, event: str, data: Any) -> bytes:
    """One Server-Sent Event: `event:`, `id:` when given, and one `data:` line of JSON."""
    head = b"event: " + event.encode() + (b"\nid: " + str(event_id).encode() if event_id is not None else b"")
    return head + b"\ndata: " + msgspec.json.encode(data) + b"\n\n"
