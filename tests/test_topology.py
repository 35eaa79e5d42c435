"""The service as it is deployed, end to end: HAProxy → three replicas (app role, MIGRATE_ON_START=false) →
PgBouncer in transaction mode → PostgreSQL with scram passwords (TLS end to end on Debian's PostgreSQL 15,
the seed's RDS version; on the wheel's PostgreSQL 18, built without TLS, TLS ends at PgBouncer). Real
processes throughout (tests/cluster.py); .ci/run installs pgbouncer, haproxy and postgresql-15."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.cluster import PASSWORDS, Cluster, TurnLoad, stored_turns
from tests.server_process import free_port
from tests.sse import read_sse

pytestmark = pytest.mark.e2e


def _needs_the_packages() -> None:
    if shutil.which("pgbouncer") and shutil.which("haproxy"):
        return
    if os.environ.get("CI"):  # a green CI must not hide a missing install step
        pytest.fail("pgbouncer and haproxy are not installed: .ci/run installs them before the tests")
    pytest.skip("needs Debian's pgbouncer and haproxy (apt-get install pgbouncer haproxy postgresql-15)")
API = "/api/session-chat"
LIFECYCLE_EVERY_S, SAMPLE_EVERY_S = 3.0, 2.0
OUTAGE_S = 5.0  # how long PgBouncer, then PostgreSQL, stay down under load
TURN_TIMEOUT_S = 10  # a dead replica's claim on a session is taken over after this (turns here last ~1 s)
LEASE_S = 3  # a dead replica's turns are re-run by another after this


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    _needs_the_packages()
    # a request waits at most 2 s for a database connection, then answers 503 database_unavailable
    env = {"OFFLINE_CHUNK_DELAY_MS": "15", "TURN_TIMEOUT_SECONDS": str(TURN_TIMEOUT_S),
           "TURN_LEASE_SECONDS": str(LEASE_S),
           "DB_CONNECTION_TIMEOUT": "2000",
           # background jobs every few seconds, so that "once per interval across replicas" shows in a test
           "SESSION_CLEANUP_INTERVAL_MINUTES": str(LIFECYCLE_EVERY_S / 60),
           "CAPACITY_SAMPLE_SECONDS": str(SAMPLE_EVERY_S)}
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



async def test_rejoin_and_cancel_across_replicas_through_pgbouncer(cluster: Cluster, store_key: str) -> None:
    """Durable turns on the deployment: NOTIFY goes through PgBouncer, LISTEN on each replica's direct
    connection. A stream left mid-answer is rejoined on every other replica; a turn is cancelled from one that
    does not run it."""
    direct = [p.base_url for p in cluster.replicas if p is not None]
    async with httpx.AsyncClient(headers=_h(store_key), timeout=60) as c:
        sid = (await c.post(f"{direct[0]}{API}/sessions", json={"store_id": "cluster-store"})).json()["session_id"]
        seen: list[tuple[int, str, dict[str, Any]]] = []
        async with c.stream("POST", f"{direct[0]}{API}/sessions/{sid}/chat/stream",
                            json={"message": "How much is shipping?"}) as r:
            async for n, event, data in read_sse(r):
                seen.append((n, event, data))
                if n == 5:
                    break  # the shopper's connection drops
        mid = seen[0][2]["message_id"]
        for base in direct[1:]:  # the turn runs on replica 1; rejoin on the others, while it runs or after
            async with c.stream("GET", f"{base}{API}/sessions/{sid}/messages/{mid}/stream",
                                headers={"Last-Event-ID": "5"}) as r:
                rest = [item async for item in read_sse(r)]
            assert rest[-1][1] == "done" and all(n > 5 for n, _, _ in rest)
            text = "".join(d["delta"] for n, e, d in seen if e == "token") + \
                "".join(d["delta"] for _, e, d in rest if e == "token")
            assert text == rest[-1][2]["message"]["content"]

        events: list[tuple[int, str, dict[str, Any]]] = []
        async with c.stream("POST", f"{direct[0]}{API}/sessions/{sid}/chat/stream",
                            json={"message": "Tell me about returns, at length"}) as r:
            async for n, event, data in read_sse(r):
                events.append((n, event, data))
                if event == "token" and sum(e == "token" for _, e, _ in events) == 2:
                    cancel = await c.post(f"{direct[2]}{API}/sessions/{sid}/messages/{_message_id(events)}/cancel")
                    assert cancel.status_code == 202, cancel.text
        assert events[-1][1] == "error" and events[-1][2]["code"] == "cancelled"


def _message_id(events: list[tuple[int, str, dict[str, Any]]]) -> str:
    return str(events[0][2]["message_id"])


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


async def test_a_killed_replica_loses_no_turn(cluster: Cluster, store_key: str) -> None:
    """SIGKILL of a replica under 12 streaming shoppers who rejoin a cut stream through HAProxy, as the chat page
    does: the turns it was running are re-run by the other replicas once their lease (TURN_LEASE_SECONDS, 3 s
    here) runs out, the rejoined streams see `restart` and then the whole answer; no turn fails, no session is
    refused, and each message and answer is stored once, `complete`, as the shopper received it."""
    load = TurnLoad(cluster.haproxy.base_url, store_key, clients=12, rejoin=True)
    stop = asyncio.Event()
    running = asyncio.create_task(load.run(stop))
    await asyncio.sleep(2)
    killed_at = time.monotonic()
    await asyncio.to_thread(cluster.stop_replica, 0, signal.SIGKILL)
    await asyncio.sleep(LEASE_S * 2 + 4)
    stop.set()
    await asyncio.wait_for(running, 120)
    await asyncio.to_thread(cluster.start_replica, 0)
    await asyncio.to_thread(cluster.wait_all_up)

    assert load.failed == [], [(r.error, r.started - killed_at) for r in load.failed]
    restarted = [r for r in load.results if r.restarts]
    assert restarted, "the killed replica was streaming turns"
    assert all(r.started <= killed_at and r.rejoins >= 1 for r in restarted)
    assert all(r.ended - killed_at < LEASE_S + 8 for r in restarted)  # re-run within about a lease

    rows = stored_turns(cluster.pg, load.sessions)
    users = Counter((r["session_id"], r["content"]) for r in rows if r["role"] == "user")
    assert max(users.values()) == 1  # no duplicates
    assert set(users) == {(load.sessions[r.client], r.text) for r in load.results if r.acknowledged}
    answers = {}
    for i, row in enumerate(rows):
        if row["role"] == "user":
            assert rows[i + 1]["role"] == "assistant"
            answers[row["content"]] = rows[i + 1]
    assert {a["status"] for a in answers.values()} == {"complete"}
    assert all(answers[r.text]["content"] == r.content for r in load.results if r.done)


async def test_pgbouncer_and_postgresql_restarting_under_load(cluster: Cluster, store_key: str) -> None:
    """PgBouncer restarted, then PostgreSQL restarted, under 12 streaming shoppers: while each is down, requests
    are answered 503 database_unavailable (never hang, never 500); afterwards everything works again, and no
    acknowledged message is lost or stored twice."""
    load = TurnLoad(cluster.haproxy.base_url, store_key, clients=12)
    stop = asyncio.Event()
    t0 = time.monotonic()
    running = asyncio.create_task(load.run(stop))
    await asyncio.sleep(2)
    outages, probes = [], []
    async with httpx.AsyncClient(base_url=cluster.haproxy.base_url, headers=_h(store_key), timeout=30) as probe:
        for down, up in ((cluster.bouncer.stop, cluster.bouncer.start),
                         (lambda: cluster.pg.stop("fast"), cluster.pg.start)):
            began = time.monotonic()
            await asyncio.to_thread(down)
            await asyncio.sleep(1)
            asked = time.monotonic()
            r = await probe.post(f"{API}/sessions", json={"store_id": "cluster-store"})
            probes.append((r.status_code, r.json().get("code"), time.monotonic() - asked))
            # down for OUTAGE_S in all: shorter than the turn timeout, so the turns it caught mid-stream keep
            # their session claimed only until their final write goes through after it
            await asyncio.sleep(max(0.0, began + OUTAGE_S - time.monotonic()))
            await asyncio.to_thread(up)
            outages.append((began, time.monotonic()))
            await asyncio.sleep(4)
    stop.set()
    await asyncio.wait_for(running, 120)

    def during_outage(r: Any) -> bool:  # a turn that overlapped an outage (or started just after it)
        return any(r.started <= end + 1.5 and r.ended >= began for began, end in outages)

    # during each outage a request is answered 503 database_unavailable, not left hanging: a replica waits
    # DB_CONNECTION_TIMEOUT (2 s) for a connection once, then answers at once for a second; HAProxy may try
    # another replica (retry-on 503 is there for draining replicas; nothing was stored, so it is safe)
    assert [(status, code) for status, code, _ in probes] == [(503, "database_unavailable")] * 2, probes
    assert all(waited < OUTAGE_S - 1 for _, _, waited in probes), probes
    unexpected = [r for r in load.failed if not during_outage(r)]
    assert unexpected == [], ([(r.error, round(r.started - t0, 1), round(r.ended - t0, 1)) for r in unexpected],
                              [(round(b - t0, 1), round(e - t0, 1)) for b, e in outages])
    errors = Counter(r.error for r in load.failed)
    # a turn not yet begun is refused; one already streaming ends with an error event, and is stored so
    assert {r.error for r in load.failed if not r.acknowledged} <= {"database_unavailable"}, errors
    assert {r.error for r in load.failed if r.acknowledged} <= {"database_unavailable"}, errors
    for client in range(load.clients):  # recovered: each shopper's last turn was answered
        last = [r for r in load.results if r.client == client and r.ended][-1]
        assert last.done, (client, last.error, errors)
    rows = stored_turns(cluster.pg, load.sessions)
    users = Counter((r["session_id"], r["content"]) for r in rows if r["role"] == "user")
    assert max(users.values()) == 1
    assert set(users) == {(load.sessions[r.client], r.text) for r in load.results if r.acknowledged}
    statuses = Counter(r["status"] for r in rows if r["role"] == "assistant")
    assert set(statuses) <= {"complete", "error"} and statuses["complete"] >= len(load.results) - len(load.failed)



def test_background_jobs_run_once_per_interval_across_the_replicas(cluster: Cluster) -> None:
    """The lifecycle job and the capacity sample, through PgBouncer: three replicas, one run per interval (a
    replica polls every second and runs a job when it claims the interval), not one per replica."""
    def counts() -> tuple[dict[str, int], int]:
        runs = {r["name"]: int(r["runs"]) for r in cluster.pg.admin("select name, runs from background_jobs")}
        samples = cluster.pg.admin("select count(*) as n from capacity_samples")[0]["n"]
        return runs, int(samples)

    before, samples_before, started = *counts(), time.monotonic()
    time.sleep(12)
    after, samples_after = counts()
    elapsed = time.monotonic() - started
    for name, every, done in (("lifecycle", LIFECYCLE_EVERY_S, after["lifecycle"] - before.get("lifecycle", 0)),
                              ("capacity-sample", SAMPLE_EVERY_S,
                               after["capacity-sample"] - before.get("capacity-sample", 0))):
        # between one run per (interval + poll) and one per interval, give or take one at the edges; three
        # replicas each running it would be three times that
        assert elapsed / (every + 1) - 1 <= done <= elapsed / every + 1, (name, done, elapsed)
    assert samples_after - samples_before == after["capacity-sample"] - before.get("capacity-sample", 0)

# -- start-up errors: one line naming the setting, exit 2, no stack trace -------------------------------

def _fails_to_start(cluster: Cluster, command: str = "serve", **env: str) -> str:
    out = cluster.cli(command, *(["--port", "1"] if command == "serve" else []), **env)
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    lines = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert PASSWORDS["app"] not in out.stderr and "wrong-password" not in out.stderr  # no secret in the line
    return lines[0]


def test_start_up_errors_name_the_setting(cluster: Cluster) -> None:
    pg, bouncer = cluster.pg, cluster.bouncer.port
    line = _fails_to_start(cluster, DATABASE_URL=pg.url("app", port=bouncer, sslmode="require",
                                                        password="wrong-password"))
    assert "password" in line and "DATABASE_URL" in line
    line = _fails_to_start(cluster, DATABASE_URL=pg.url("app", port=bouncer, sslmode="disable"))
    assert "requires TLS" in line and "DB_SSLMODE" in line
    if pg.tls:  # PostgreSQL itself refuses a connection without TLS (hostssl only)
        line = _fails_to_start(cluster, DATABASE_URL=pg.url("app", sslmode="disable"))
        assert "requires TLS" in line and "DB_SSLMODE" in line
        line = _fails_to_start(cluster, DATABASE_URL=pg.url("app"), DB_SSLROOTCERT="/etc/ssl/certs/ca-certificates.crt")
        assert "DB_SSLROOTCERT" in line
    line = _fails_to_start(cluster, DATABASE_URL=f"postgresql://app:x@127.0.0.1:{free_port()}/sixshop")
    assert "cannot reach" in line and "DATABASE_URL" in line
    # the Stage 1 names work, and are named
    line = _fails_to_start(cluster, DATABASE_URL="", DB_HOST="127.0.0.1", DB_PORT=str(bouncer), DB_USER="app",
                           DB_PASSWORD="wrong-password", DB_NAME="sixshop", DB_SSLMODE="require")
    assert "DB_HOST/DB_PORT/DB_USER/DB_PASSWORD" in line
    # production signs shoppers' session tokens with a secret of its own: none, and it does not start
    line = _fails_to_start(cluster, SESSION_TOKEN_SECRET="")
    assert "SESSION_TOKEN_SECRET" in line and "production" in line


def test_roles_and_migrations_as_a_deploy_step(cluster: Cluster) -> None:
    pg = cluster.pg
    # the app role cannot migrate, and says so
    line = _fails_to_start(cluster, "migrate", DATABASE_URL=pg.url("app"))
    assert "may not change the schema" in line and "migration role" in line
    # a replica told to migrate through the pooler, with no direct URL for the migration lock
    line = _fails_to_start(cluster, MIGRATE_ON_START="true", DATABASE_DIRECT_URL="")
    assert "DATABASE_DIRECT_URL" in line and "MIGRATE_ON_START" in line
    # ... or with none for LISTEN (turns are cancelled across replicas through it)
    line = _fails_to_start(cluster, DATABASE_DIRECT_URL="")
    assert "DATABASE_DIRECT_URL" in line and "LISTEN" in line
    line = _fails_to_start(cluster, DATABASE_DIRECT_URL=pg.url("app", port=cluster.bouncer.port, sslmode="require"))
    assert "DATABASE_DIRECT_URL" in line and "pooler too" in line
    # ... and with one, it migrates there (nothing to do: already at this release's version)
    assert cluster.cli("migrate", DATABASE_URL=pg.url("app", port=cluster.bouncer.port, sslmode="require"),
                       DATABASE_DIRECT_URL=pg.url("migrator")).returncode == 0
    # a replica on a database nobody migrated, or as a role without privileges: told what to run or grant
    pg.admin("create database unmigrated owner migrator", dbname="postgres")
    line = _fails_to_start(cluster, DATABASE_URL=pg.url("app").replace("/sixshop?", "/unmigrated?"))
    assert "sixshop-agent migrate" in line and "000" in line
    pg.admin("drop role if exists nobody_in_particular", dbname="postgres")
    pg.admin("create role nobody_in_particular login password 'nobody-secret-1'", dbname="postgres")
    pg.admin("grant usage on schema public to nobody_in_particular")
    line = _fails_to_start(cluster, DATABASE_URL=pg.url("app", password="nobody-secret-1").replace(
        "app:", "nobody_in_particular:"))
    assert "nobody_in_particular" in line and "grant" in line
