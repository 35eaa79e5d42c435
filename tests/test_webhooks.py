"""Handoff notifications (issue 16): a store's webhook gets a POST signed with HMAC-SHA256 (Sixshop-Signature:
t=..,v1=..), retried with back-off after failures, every attempt logged and readable by the store; a dead webhook
leaves the turn untouched."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from server.services.webhooks import SIGNATURE_HEADER, sign, verify
from tests.local_http import JsonHandler, LocalServer
from tests.server_process import ServerProcess
from tests.sse import read_sse

pytestmark = pytest.mark.e2e
API = "/api/session-chat"
ADMIN = {"Authorization": "Bearer test-admin-token-0123456789"}
SECRET = "whsec-test-0123456789abcdef"


PREPARED_DATABASE = True  # conftest.database_url: a copy of a database a keyless `serve` has prepared


class _Receiver(JsonHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        server: Receiver = self.server  # type: ignore[assignment]
        server.received.append({"body": body, "headers": dict(self.headers), "at": time.monotonic()})
        if len(server.received) <= server.fail_first:
            self._json(500, {"error": "not today"})
        else:
            self._json(200, {"ok": True})


class Receiver(LocalServer):
    """A store's endpoint: answers 500 to the first `fail_first` requests, then 200; keeps what it got."""

    def __init__(self, fail_first: int) -> None:
        super().__init__(_Receiver)
        self.fail_first = fail_first
        self.received: list[dict[str, Any]] = []


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[ServerProcess]:
    env = {"DATABASE_URL": database_url, "CAPACITY_SAMPLE_SECONDS": "0", "KEYS_CACHE_SECONDS": "0",
           "ADMIN_TOKEN": ADMIN["Authorization"].removeprefix("Bearer "), "WEBHOOK_FIRST_RETRY_SECONDS": "0.3"}
    with ServerProcess(env) as proc:
        yield proc


def test_the_signature_is_what_a_receiver_recomputes() -> None:
    body = b'{"type":"handoff.started"}'
    header = sign(SECRET, body, 1_800_000_000)
    assert header.startswith("t=1800000000,v1=") and len(header.split("v1=")[1]) == 64
    assert verify(SECRET, body, header, now=1_800_000_010)
    assert not verify(SECRET, body + b" ", header, now=1_800_000_010)  # the body changed
    assert not verify("another-secret-0123456789", body, header, now=1_800_000_010)
    assert not verify(SECRET, body, header, now=1_800_000_000 + 3600)  # replayed an hour later


async def _hand_over(c: httpx.AsyncClient, store: str) -> tuple[str, list[str]]:
    sid = (await c.post(f"{API}/sessions", json={"store_id": store})).json()["session_id"]
    async with c.stream("POST", f"{API}/sessions/{sid}/chat/stream", json={"message": "상담원 연결해 주세요"}) as r:
        events = [e async for _, e, _ in read_sse(r)]
    return sid, events


async def _log(c: httpx.AsyncClient, store: str, until: Any, timeout_s: float = 20) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        items = (await c.get(f"/api/admin/stores/{store}/webhooks", headers=ADMIN)).json()["items"]
        if until(items) or time.monotonic() > deadline:
            return list(items)
        await asyncio.sleep(0.2)


async def test_a_handoff_is_signed_and_retried_until_delivered(server: ServerProcess) -> None:
    with Receiver(fail_first=2) as receiver:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as c:
            r = await c.put("/api/admin/stores/store-hook/settings", headers=ADMIN,
                            json={"webhook_url": f"{receiver.origin}/hooks/sixshop", "webhook_secret": SECRET})
            assert r.status_code == 200, r.text
            sid, events = await _hand_over(c, "store-hook")
            assert events[-2:] == ["handoff", "done"]
            log = await _log(c, "store-hook", lambda items: items and items[0]["status"] != "pending")
        assert log[0]["status"] == "delivered", log
        assert [a["status_code"] for a in log[0]["attempt_log"]] == [500, 500, 200]
        assert [a["error"] for a in log[0]["attempt_log"]] == ["HTTP 500", "HTTP 500", None]
        assert len(receiver.received) == 3
        waits = [b["at"] - a["at"] for a, b in zip(receiver.received, receiver.received[1:], strict=False)]
        assert waits[1] > waits[0] * 1.5  # backed off: the second wait is about twice the first
        for got in receiver.received:
            headers = {k.lower(): v for k, v in got["headers"].items()}
            assert verify(SECRET, got["body"], headers[SIGNATURE_HEADER.lower()])
            assert headers["sixshop-event"] == "handoff.started"
            assert headers["sixshop-delivery"] == log[0]["delivery_id"]
        payload = json.loads(receiver.received[-1]["body"])
        assert payload["type"] == "handoff.started" and payload["session_id"] == sid
        assert payload["store_id"] == "store-hook" and payload["reason"] == "asked"
        assert SECRET not in server.output()


async def test_a_dead_webhook_leaves_the_turn_alone(server: ServerProcess) -> None:
    with Receiver(fail_first=0) as gone:
        dead = f"{gone.origin}/hooks"
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as c:
        r = await c.put("/api/admin/stores/store-dead-hook/settings", headers=ADMIN,
                        json={"webhook_url": dead, "webhook_secret": SECRET})
        assert r.status_code == 200
        sid, events = await _hand_over(c, "store-dead-hook")
        assert events[-2:] == ["handoff", "done"]  # the turn ended as usual: the webhook is not on its way
        assert (await c.get(f"{API}/sessions/{sid}")).json()["status"] == "handoff"
        log = await _log(c, "store-dead-hook", lambda items: items and len(items[0]["attempt_log"]) >= 2)
        assert log[0]["status"] == "pending" and log[0]["attempts"] >= 2
        assert all(a["status_code"] is None and a["error"] == "ConnectError" for a in log[0]["attempt_log"])
        # the log is for operators: 401 without credentials (another store's key: 404, tests/test_handoff.py)
        assert (await c.get("/api/admin/stores/store-dead-hook/webhooks")).status_code == 401
