"""Handoff notifications to a store's webhook, signed as Stripe and GitHub sign theirs, delivered in the background.

A POST with the event as JSON and `Sixshop-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` keyed
with the store's webhook secret (the receiver recomputes it and rejects an old `t`: replay protection). A
delivery that fails (no answer in 5 s, or not 2xx) is retried with doubling waits from WEBHOOK_FIRST_RETRY_SECONDS
until WEBHOOK_RETRY_MINUTES after it was queued, then marked failed; every attempt is logged (`/admin`). Queued in
the transaction that starts the handoff, sent by whichever replica claims it: a dead webhook never slows or fails
a turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from datetime import timedelta
from typing import Any

import httpx

from persistence.webhooks import WebhookRepository

log = logging.getLogger(__name__)
TIMEOUT_S = 5.0
MAX_WAIT = timedelta(minutes=10)  # the longest wait between two attempts
SIGNATURE_HEADER = "Sixshop-Signature"


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The signature header's value for `body` sent at `timestamp`."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(secret: str, body: bytes, header: str, *, tolerance_s: int = 300, now: float | None = None) -> bool:
    """What a receiver does (and the tests do): recompute the signature, compare in constant time, refuse a
    timestamp older than `tolerance_s`."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    if "t" not in parts or not parts["t"].isdigit() or "v1" not in parts:
        return False
    timestamp = int(parts["t"])
    if abs((now or time.time()) - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, body, timestamp), f"t={timestamp},v1={parts['v1']}")


class WebhookDeliverer:
    def __init__(self, repo: WebhookRepository, *, retry_for: timedelta, first_wait: timedelta) -> None:
        self.repo = repo
        self.retry_for = retry_for
        self.first_wait = first_wait
        self.wake = asyncio.Event()
        self.poll_s = min(5.0, first_wait.total_seconds())

    def on_queued(self, _message: dict[str, Any]) -> None:
        """A notification on WEBHOOKS: a delivery was queued somewhere; look now."""
        self.wake.set()

    def wait_after(self, attempts: int) -> timedelta:
        return min(self.first_wait * 2 ** (attempts - 1), MAX_WAIT)

    async def run_forever(self) -> None:
        async with httpx.AsyncClient(timeout=TIMEOUT_S, follow_redirects=False) as client:
            while True:
                try:
                    await self.deliver_due(client)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the database away: try again on the next beat
                    log.warning("webhook deliveries not checked: %s", type(exc).__name__)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_s):
                        await self.wake.wait()
                self.wake.clear()

    async def deliver_due(self, client: httpx.AsyncClient) -> int:
        due = await self.repo.claim_due(hold=timedelta(seconds=TIMEOUT_S * 6))
        await asyncio.gather(*(self._attempt(client, row) for row in due))
        return len(due)

    async def _attempt(self, client: httpx.AsyncClient, row: dict[str, Any]) -> None:
        body = json.dumps({"id": str(row["delivery_id"]), **row["payload"]}, ensure_ascii=False,
                          separators=(",", ":")).encode()
        status_code: int | None = None
        error: str | None = None
        started = time.perf_counter()
        if not row["url"]:
            error = "the store has no webhook URL any more"
        else:
            headers = {"Content-Type": "application/json", "User-Agent": "sixshop-ai-agent-webhooks",
                       "Sixshop-Event": str(row["event"]), "Sixshop-Delivery": str(row["delivery_id"])}
            if row["secret"]:
                headers[SIGNATURE_HEADER] = sign(str(row["secret"]), body, int(time.time()))
            try:
                response = await client.post(str(row["url"]), content=body, headers=headers)
                status_code = response.status_code
                if not 200 <= status_code < 300:
                    error = f"HTTP {status_code}"
            except httpx.HTTPError as exc:  # refused, timed out, reset: the URL itself is never logged here
                error = type(exc).__name__
        delivered = error is None
        await self.repo.record(row["delivery_id"], int(row["attempts"]), status_code=status_code, error=error,
                               duration_ms=int((time.perf_counter() - started) * 1000), delivered=delivered,
                               wait=self.wait_after(int(row["attempts"])), retry_for=self.retry_for)
        if not delivered:
            log.info("webhook attempt %d failed (%s); store %s", row["attempts"], error, row["store_id"])
