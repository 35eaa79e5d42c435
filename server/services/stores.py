"""Each store's own assistant: its settings (validated, defaults for what it never set), cached per process and
dropped on every replica the moment one changes them (NOTIFY, as the durable turns' control messages)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from graph.handoff import DAYS  # the hours are read where they are used: graph/handoff.py opens_at
from graph.prompts import VariantPicker
from persistence.store_settings import StoreSettingsRepository
from server.errors import ValidationFailed
from server.services.tokens import verify_identity

_MODEL = re.compile(r"^[A-Za-z0-9._:/-]{1,100}$")
_CLOCK = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
CACHE_S = 60.0  # a safety net only: a change reaches every replica through NOTIFY at once


def _text(limit: int) -> Callable[[str, Any], Any]:
    def check(field: str, value: Any) -> Any:
        if not isinstance(value, str) or len(value) > limit:
            raise ValidationFailed(f"{field} must be text of at most {limit} characters", {"field": field})
        return value.strip()
    return check


def _language(field: str, value: Any) -> Any:
    if value not in ("ko", "en"):
        raise ValidationFailed(f"{field} must be 'ko' or 'en'", {"field": field})
    return value


def _model(field: str, value: Any) -> Any:
    if not isinstance(value, str) or not _MODEL.match(value):
        raise ValidationFailed(f"{field} must be a model name (letters, digits, . _ : / -)", {"field": field})
    return value


def _retrieval_k(field: str, value: Any) -> Any:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 20:
        raise ValidationFailed(f"{field} must be a whole number from 1 to 20", {"field": field})
    return value


def _prompt_variants(field: str, value: Any) -> Any:
    if not isinstance(value, dict) or not all(isinstance(w, int | float) and not isinstance(w, bool)
                                              for w in value.values()):
        raise ValidationFailed(f"{field} must map variant names to weights, e.g. {{\"v1\": 80, \"v2\": 20}}",
                               {"field": field})
    try:
        VariantPicker({str(k): float(w) for k, w in value.items()})
    except ValueError as exc:
        raise ValidationFailed(f"{field}: {exc}", {"field": field}) from None
    return value


def _handoff_hours(field: str, value: Any) -> Any:
    if not isinstance(value, dict) or set(value) != {"timezone", "days", "from", "to"}:
        raise ValidationFailed(f"{field} must be {{\"timezone\", \"days\", \"from\", \"to\"}}", {"field": field})
    try:
        ZoneInfo(str(value["timezone"]))
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationFailed(f"{field}.timezone is not a time zone (e.g. Asia/Seoul)",
                               {"field": f"{field}.timezone"}) from None
    days = value["days"]
    if not isinstance(days, list) or not days or any(d not in DAYS for d in days) or len(set(days)) != len(days):
        raise ValidationFailed(f"{field}.days must list distinct days of {', '.join(DAYS)}",
                               {"field": f"{field}.days"})
    for end in ("from", "to"):
        if not isinstance(value[end], str) or not _CLOCK.match(value[end]):
            raise ValidationFailed(f"{field}.{end} must be a time HH:MM", {"field": f"{field}.{end}"})
    if value["from"] >= value["to"]:
        raise ValidationFailed(f"{field}.from must come before {field}.to", {"field": f"{field}.from"})
    return value


def _webhook_url(field: str, value: Any) -> Any:
    url = urlparse(value) if isinstance(value, str) and len(value) <= 2000 else None
    local = url is not None and url.hostname in ("127.0.0.1", "localhost", "::1")
    if url is None or not url.hostname or (url.scheme != "https" and not (url.scheme == "http" and local)):
        raise ValidationFailed(f"{field} must be an https:// URL (http:// only to this machine)", {"field": field})
    return value


def _webhook_secret(field: str, value: Any) -> Any:
    if not isinstance(value, str) or not 16 <= len(value) <= 200:
        raise ValidationFailed(f"{field} must be 16 to 200 characters", {"field": field})
    return value


def _allowed_origins(field: str, value: Any) -> Any:
    """Pages that may open this store's chat: `scheme://host[:port]` each, as a browser's Origin header says it."""
    if not isinstance(value, list) or len(value) > 50:
        raise ValidationFailed(f"{field} must be a list of at most 50 origins (scheme://host[:port])",
                               {"field": field})
    out = []
    for i, origin in enumerate(value):
        url = urlparse(origin) if isinstance(origin, str) and len(origin) <= 300 else None
        try:
            ok = url is not None and url.scheme in ("http", "https") and bool(url.hostname) and not url.path \
                and not url.query and not url.fragment and not url.username and url.port != 0
        except ValueError:  # a port out of range
            ok = False
        if not ok:
            raise ValidationFailed(f"{field}[{i}] must be an origin: scheme://host[:port], with no path",
                                   {"field": f"{field}[{i}]"})
        out.append(str(origin).lower())
    return sorted(set(out))


def _identity_secret(field: str, value: Any) -> Any:
    """One secret, or {kid: secret} (null removes a kid): the keys a store's backend signs shoppers' identities
    with. A bare secret is kid "default"."""
    secrets = {"default": value} if isinstance(value, str) else value
    if not isinstance(secrets, dict) or not secrets or len(secrets) > 10:
        raise ValidationFailed(f"{field} must be a secret, or an object of at most 10 kid: secret",
                               {"field": field})
    for kid, secret in secrets.items():
        if not 1 <= len(kid) <= 64 or not re.fullmatch(r"[A-Za-z0-9._-]+", kid):
            raise ValidationFailed(f"{field}: a kid is 1 to 64 letters, digits, . _ -", {"field": field})
        if secret is not None and (not isinstance(secret, str) or not 32 <= len(secret) <= 200):
            raise ValidationFailed(f"{field}: each secret must be 32 to 200 characters", {"field": field})
    return secrets


FIELDS: dict[str, Callable[[str, Any], Any]] = {
    "display_name": _text(80),
    "instructions": _text(1000),
    "greeting": _text(500),
    "language": _language,
    "model": _model,
    "retrieval_k": _retrieval_k,
    "prompt_variants": _prompt_variants,
    "handoff_hours": _handoff_hours,
    "webhook_url": _webhook_url,
    "webhook_secret": _webhook_secret,
    "allowed_origins": _allowed_origins,
    "identity_secret": _identity_secret,
}
WRITE_ONLY = frozenset({"webhook_secret", "identity_secret"})


def validate(patch: Any) -> dict[str, Any]:
    """The changes a PUT asks for, checked: unknown fields and bad values are 400 naming the field; null resets a
    field to its default."""
    if not isinstance(patch, dict):
        raise ValidationFailed("the body must be a JSON object of settings", {"field": "body"})
    unknown = sorted(set(patch) - set(FIELDS))
    if unknown:
        raise ValidationFailed(f"unknown setting {unknown[0]!r}", {"field": unknown[0], "known": sorted(FIELDS)})
    return {field: None if value is None else FIELDS[field](field, value) for field, value in patch.items()}


def public(store_id: str, stored: dict[str, Any]) -> dict[str, Any]:
    """What GET answers: every field (null: the default), never a secret — only whether one is set."""
    out: dict[str, Any] = {"store_id": store_id}
    out.update({field: stored.get(field) for field in FIELDS if field not in WRITE_ONLY})
    out["webhook_secret_set"] = bool(stored.get("webhook_secret"))
    out["identity_secret_set"] = bool(stored.get("identity_secret"))
    out["identity_secret_kids"] = sorted(stored.get("identity_secret") or {})
    return out


def widget_config(store_id: str, stored: dict[str, Any]) -> dict[str, Any]:
    """What a shopper's widget may know of its store (nothing an operator set for operators)."""
    return {"store_id": store_id, "display_name": stored.get("display_name"), "greeting": stored.get("greeting"),
            "language": stored.get("language") or "ko"}


class StoreSettingsService:
    def __init__(self, repo: StoreSettingsRepository) -> None:
        self.repo = repo
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self._origins: tuple[float, set[str]] | None = None

    async def for_turn(self, store_id: str) -> dict[str, Any]:
        """The store's settings for a turn: from this process's cache (no statement on the way), refilled after a
        change anywhere (on_change) or after CACHE_S."""
        hit = self._cache.get(store_id)
        if hit is not None and time.monotonic() - hit[0] < CACHE_S:
            return hit[1]
        stored = await self.repo.get(store_id)
        self._cache[store_id] = (time.monotonic(), stored)
        return stored

    def on_change(self, message: dict[str, Any]) -> None:
        """A notification on STORE_SETTINGS: drop that store's cached settings."""
        self._cache.pop(str(message.get("store")), None)
        self._origins = None

    async def browser_origins(self) -> set[str]:
        """Every origin some store allows (cached like a store's settings, dropped on any change)."""
        if self._origins is None or time.monotonic() - self._origins[0] >= CACHE_S:
            self._origins = (time.monotonic(), await self.repo.browser_origins())
        return self._origins[1]

    async def view(self, store_id: str) -> dict[str, Any]:
        return public(store_id, await self.repo.get(store_id))

    async def verify_identity(self, store_id: str, identity: str) -> str:
        """The user id a store's backend vouches for in `identity` (401 invalid_identity otherwise)."""
        return verify_identity(identity, dict((await self.for_turn(store_id)).get("identity_secret") or {}))

    async def widget(self, store_id: str) -> dict[str, Any]:
        return widget_config(store_id, await self.for_turn(store_id))

    async def update(self, store_id: str, patch: Any, by: str | None) -> dict[str, Any]:
        changes = validate(patch)
        if changes.get("identity_secret"):  # kids are added and removed (null) one by one: rotation
            kept = dict((await self.repo.get(store_id)).get("identity_secret") or {})
            merged = {k: v for k, v in {**kept, **changes["identity_secret"]}.items() if v is not None}
            changes["identity_secret"] = merged or None
        stored = await self.repo.change(store_id, changes, by)
        self._cache.pop(store_id, None)
        self._origins = None
        return public(store_id, stored)

    async def changes(self, store_id: str, limit: int = 50) -> list[dict[str, Any]]:
        return await self.repo.changes(store_id, limit)
