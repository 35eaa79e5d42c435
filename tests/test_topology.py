"""The service as it is deployed, end to end: HAProxy → three replicas (app role, MIGRATE_ON_START=false) →
PgBouncer in transaction mode → PostgreSQL with scram passwords (TLS end to end on Debian's PostgreSQL 15,
the seed's RDS version; on the wheel's PostgreSQL 18, built without TLS, TLS ends at PgBouncer). Real
processes throughout (tests/cluster.py); .ci/run installs pgbouncer, haproxy and postgresql-15."""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.cluster import Cluster, TurnLoad, stored_turns

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not (shutil.which("pgbouncer") and shutil.which("haproxy")),
                       reason="needs Debian's pgbouncer and haproxy (apt-get install pgbouncer haproxy)"),
]
API = "/api/session-chat"
TURN_TIMEOUT_S = 6  # a dead replica's claim on a session is taken over after this (turns here last ~1 s)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    env = {"OFFLINE_CHUNK_DELAY_MS": "15", "TURN_TIMEOUT_SECONDS": str(TURN_TIMEOUT_S)}
    c = Cluster(tmp_path_factory.mktemp("cluster"), replicas=3, env=env)
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def store_key(cluster: Cluster) -> str:
    return cluster.store_key("cluster-store")


def _h(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _stream(c: httpx.AsyncClient, session_id: str, text: str) -> list[tuple[str, str]]:
    events: list[tuple[str, str]] = []
    async with c.stream("POST", f"{API}/sessions/{session_id}/chat/stream", json={"message": text}) as r:
        assert r.status_code == 200, await r.aread()
        name = ""
        async for line in r.aiter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, line[6:]))
    return events


def test_the_deployment_is_what_it_claims(cluster: Cluster) -> None:
    """Replicas run as the app role (no superuser, no DDL), find the pooler by themselves, and PostgreSQL sees
    only TLS connections from them where it has TLS."""
    for proc in cluster.replicas:
        assert proc is not None and "transaction pooler: no prepared statements" in proc.output()
    rows = cluster.pg.admin("select usename, ssl from pg_stat_activity a join pg_stat_ssl s using (pid) "
                            "where usename = 'app'")
    assert rows, "the replicas reach PostgreSQL through PgBouncer as `app`"
    if cluster.pg.tls:
        assert all(r["ssl"] for r in rows)
    assert cluster.pg.admin("select rolsuper from pg_roles where rolname = 'app'") == [{"rolsuper": False}]
    import psycopg

    with psycopg.connect(cluster.pg.url("app")) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("create table not_allowed (id int)")


async def test_main_flows_through_the_load_balancer(cluster: Cluster, store_key: str) -> None:
    async with httpx.AsyncClient(base_url=cluster.haproxy.base_url, headers=_h(store_key), timeout=60) as c:
        created = await c.post(f"{API}/sessions", json={"store_id": "cluster-store", "user_id": "u1"})
        assert created.status_code == 201, created.text
        sid = created.json()["session_id"]
        replicas_seen = set()
        for text in ("How much is shipping?", "배송비는 얼마인가요?", "And returns?"):
            events = await _stream(c, sid, text)
            assert events[0][0] == "metadata" and events[-1][0] == "done", events[-1]
        for _ in range(6):  # round robin over the replicas, each answering from the same database
            r = await c.get(f"{API}/sessions/{sid}")
            assert r.status_code == 200 and r.json()["message_count"] == 6
            replicas_seen.add(r.headers.get("x-served-by", ""))
        history = (await c.get(f"{API}/sessions/{sid}/messages")).json()["items"]
        assert [m["role"] for m in history] == ["user", "assistant"] * 3
        assert all(m["status"] == "complete" for m in history)
        answer = history[-1]["message_id"]
        fb = await c.post(f"{API}/messages/{answer}/feedback", json={"score": 1, "comment": "good"})
        assert fb.status_code == 201, fb.text
        stats = (await c.get(f"{API}/sessions/{sid}/stats")).json()
        assert stats["message_count"] == 6
        store = await c.get(f"{API}/stats", params={"store_id": "cluster-store"})
        assert store.status_code == 200 and store.json()["session_count"] >= 1
        assert replicas_seen == {"replica1", "replica2", "replica3"}  # HAProxy spread the reads

    from langgraph_sdk import get_client

    client = get_client(url=cluster.haproxy.base_url, api_key=store_key)
    thread = await client.threads.create(metadata={"store_id": "cluster-store"})
    parts = [p async for p in client.runs.stream(thread["thread_id"], "agent", stream_mode="values",
                                                  input={"messages": [{"role": "user", "content": "Shipping?"}]})]
    assert not [p for p in parts if p.event == "error"]
    state = await client.threads.get_state(thread["thread_id"])
    assert state["values"]["messages"][-1]["type"] == "ai"


async def test_rolling_restart_under_load_fails_no_turn(cluster: Cluster, store_key: str) -> None:
    """20 shoppers streaming turns without pause while each replica in turn gets SIGTERM and is started again
    (a deploy): no turn fails, and every acknowledged message is stored exactly once."""
    load = TurnLoad(cluster.haproxy.base_url, store_key, clients=20)
    stop = asyncio.Event()
    running = asyncio.create_task(load.run(stop))
    await asyncio.sleep(3)
    codes = []
    for i in range(len(cluster.replicas)):
        codes.append(await asyncio.to_thread(cluster.stop_replica, i, signal.SIGTERM))
        await asyncio.to_thread(cluster.start_replica, i)
        await asyncio.to_thread(cluster.wait_all_up)
        await asyncio.sleep(1)
    await asyncio.sleep(2)
    stop.set()
    await asyncio.wait_for(running, 120)

    assert all(code in (0, -signal.SIGTERM) for code in codes), codes
    assert len(load.results) > 60, "the load kept turns running through the restarts"
    assert load.failed == [], Counter(r.error for r in load.failed)
    _assert_stored_exactly_once(cluster, load)


def _assert_stored_exactly_once(cluster: Cluster, load: TurnLoad) -> None:
    rows = stored_turns(cluster.pg, load.sessions)
    by_session: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_session.setdefault(row["session_id"], []).append(row)
    for i, sid in enumerate(load.sessions):
        acknowledged = [r.text for r in load.results if r.client == i and r.acknowledged]
        users = [r["content"] for r in by_session.get(sid, []) if r["role"] == "user"]
        assert users == acknowledged  # each acknowledged message once, in order; nothing unacknowledged
        statuses = [r["status"] for r in by_session.get(sid, []) if r["role"] == "assistant"]
        assert len(statuses) == len(users)
        done = [r for r in load.results if r.client == i and r.done]
        assert statuses.count("complete") >= len(done)


async def test_a_killed_replica_affects_only_its_own_turns(cluster: Cluster, store_key: str) -> None:
    """SIGKILL mid-load: the turns that replica was streaming are cut; their sessions answer 409 until the
    turn timeout (TURN_TIMEOUT_SECONDS, 6 s here), when the next turn takes the claim over and closes the dead
    turn as error/abandoned; every other shopper sees nothing. Each acknowledged message is stored once."""
    load = TurnLoad(cluster.haproxy.base_url, store_key, clients=12)
    stop = asyncio.Event()
    running = asyncio.create_task(load.run(stop))
    await asyncio.sleep(2)
    killed_at = time.monotonic()
    await asyncio.to_thread(cluster.stop_replica, 0, signal.SIGKILL)
    await asyncio.sleep(TURN_TIMEOUT_S + 6)
    stop.set()
    await asyncio.wait_for(running, 120)
    await asyncio.to_thread(cluster.start_replica, 0)
    await asyncio.to_thread(cluster.wait_all_up)

    cut = [r for r in load.failed if r.error != "session_busy"]
    assert cut, "the killed replica was streaming turns"
    assert all(r.started <= killed_at and r.acknowledged for r in cut), [(r.error, r.started - killed_at) for r in cut]
    hit = {r.client for r in cut}
    busy = [r for r in load.failed if r.error == "session_busy"]
    assert {r.client for r in busy} <= hit  # only the killed turns' own sessions wait
    assert all(r.started < killed_at + TURN_TIMEOUT_S + 2 for r in busy)  # and only until the timeout
    for client in range(load.clients):  # afterwards every shopper is answered again
        last = [r for r in load.results if r.client == client and r.ended][-1]
        assert last.done, (client, last.error)

    rows = stored_turns(cluster.pg, load.sessions)
    users = Counter((r["session_id"], r["content"]) for r in rows if r["role"] == "user")
    assert max(users.values()) == 1  # no duplicates
    assert set(users) == {(load.sessions[r.client], r.text) for r in load.results if r.acknowledged}
    cut_texts = {r.text for r in cut}
    by_text = {}
    for i, row in enumerate(rows):
        if row["role"] == "user":
            by_text[row["content"]] = rows[i + 1]
    assert {by_text[t]["status"] for t in cut_texts} == {"error"}  # closed by the takeover, not left streaming
