"""Domain errors: each carries its HTTP status and the machine-readable `code` of API.md."""

from __future__ import annotations

from typing import Any


class AppError(Exception):
    status_code = 500
    code = "internal_error"
    default_message = "Internal server error"

    def __init__(self, message: str | None = None, detail: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message or self.default_message)
        self.message = message or self.default_message
        self.detail = detail
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail:
            out["detail"] = self.detail
        return out


class ValidationFailed(AppError):
    status_code, code, default_message = 400, "validation_error", "The request is not valid"


class Unauthorized(AppError):
    status_code, code, default_message = 401, "unauthorized", "Authentication required"


class InvalidToken(Unauthorized):
    code, default_message = "invalid_token", "This session token is not valid"


class TokenExpired(Unauthorized):
    code, default_message = "token_expired", "This session token has expired: open the chat again"


class InvalidIdentity(Unauthorized):
    code, default_message = "invalid_identity", "The shopper's identity could not be verified"


class Forbidden(AppError):
    status_code, code, default_message = 403, "forbidden", "Not allowed"


class OriginNotAllowed(Forbidden):
    code, default_message = "origin_not_allowed", "This site is not allowed to open this store's chat"


class NotFound(AppError):
    status_code, code, default_message = 404, "not_found", "No such resource"


class SessionNotFound(NotFound):
    code, default_message = "session_not_found", "No such session"


class StoreNotFound(NotFound):
    code, default_message = "store_not_found", "No such store"


class MessageNotFound(NotFound):
    code, default_message = "message_not_found", "No such message"


class RunNotFound(NotFound):
    code, default_message = "run_not_found", "No such run"


class MethodNotAllowed(AppError):
    status_code, code, default_message = 405, "method_not_allowed", "Method not allowed on this path"


class SessionBusy(AppError):
    status_code, code, default_message = 409, "session_busy", "A turn is already running in this session"


class TurnEnded(AppError):
    status_code, code, default_message = 409, "turn_ended", "This turn has already ended"


class SessionExpired(AppError):
    status_code, code, default_message = 410, "session_expired", "This session has expired"


class QueueFull(AppError):
    status_code, code, default_message = 429, "queue_full", "Too many messages are waiting in this session"


class PayloadTooLarge(AppError):
    status_code, code, default_message = 413, "payload_too_large", "The request is too large"


class UnsupportedMediaType(AppError):
    status_code, code, default_message = 415, "unsupported_media_type", "Send application/json"


class RateLimited(AppError):
    status_code, code, default_message = 429, "rate_limited", "Too many requests"


class ModelError(AppError):
    status_code, code, default_message = 502, "model_error", "The language model failed to answer"


class DatabaseUnavailable(AppError):
    status_code, code, default_message = 503, "database_unavailable", "The database is unavailable"


class ShuttingDown(AppError):
    """This replica is draining (SIGTERM): nothing was stored, so the request is safe to send again."""

    status_code, code, default_message = 503, "shutting_down", "This server is shutting down; try again"

    def __init__(self, message: str | None = None, detail: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message, detail, {"Retry-After": "1", "Connection": "close", **(headers or {})})


# the Agent Protocol front door (server/http/agent_protocol/)

class Unsupported(AppError):
    status_code, code, default_message = 422, "unsupported", "This Agent Protocol feature is not supported"


class ThreadExists(AppError):
    status_code, code, default_message = 409, "thread_exists", "A thread with this id already exists"


class ThreadInterrupted(AppError):
    status_code, code, default_message = (409, "thread_interrupted",
                                          "This thread waits for a person (handoff) until an operator releases it")


class AssistantNotFound(NotFound):
    code, default_message = "assistant_not_found", "No such assistant"
