"""Soak of the production topology with faults on a schedule: HAProxy → replicas → PgBouncer (transaction
mode) → PostgreSQL (scram; TLS end to end on Debian's PostgreSQL 15), as tests/test_topology.py builds it.

    python bench/cluster.py [--minutes 4] [--clients 20] [--replicas 3]

Shoppers stream turns without pause (offline answerer, OFFLINE_CHUNK_DELAY_MS per chunk) while the faults
come one after another, evenly spread: a rolling restart (SIGTERM, start again, one replica at a time), a
replica SIGKILLed and started again, PgBouncer down for 5 s, PostgreSQL down for 5 s. One line per event,
then a table: turns/s, errors by code, acknowledged vs stored vs duplicated user messages, and first-token
overhead (first token minus the answerer's chunk delay) p50/p99 in the 15 s before, during, and the 15 s
after each fault. Shoppers rejoin a cut stream with Last-Event-ID as the chat page does (--no-rejoin: they
do not); TURN_LEASE_SECONDS=3, so a killed replica's turns are re-run by the others. Everything binds to
127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _venv import reexec_in_venv

    reexec_in_venv(__file__)

import argparse
import asyncio
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tests.cluster import Cluster, TurnLoad, TurnResult, stored_turns

CHUNK_DELAY_MS = 15
OUTAGE_S = 5.0
WINDOW_S = 15.0


@dataclass
class Event:
    name: str
    began: float = 0.0
    ended: float = 0.0


def pct(values: list[float], q: float) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000:.0f}"


def overheads(results: list[TurnResult], start: float, end: float) -> list[float]:
    return [r.first_token_s - CHUNK_DELAY_MS / 1000 for r in results
            if r.first_token_s is not None and start <= r.started < end]


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=4)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--no-rejoin", action="store_true", help="shoppers do not rejoin a cut stream")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="sixshop-cluster-"))
    cluster = Cluster(root, replicas=args.replicas, env={
        "OFFLINE_CHUNK_DELAY_MS": str(CHUNK_DELAY_MS), "TURN_TIMEOUT_SECONDS": "10", "TURN_LEASE_SECONDS": "3",
        "DB_CONNECTION_TIMEOUT": "2000", "SESSION_CLEANUP_INTERVAL_MINUTES": "0.5", "CAPACITY_SAMPLE_SECONDS": "10"})
    t0 = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - t0:7.1f} s] {text}", flush=True)

    await asyncio.to_thread(cluster.start)
    say(f"up: PostgreSQL {cluster.pg.version} ({'TLS' if cluster.pg.tls else 'no TLS: it ends at PgBouncer'}), "
        f"PgBouncer transaction mode, {args.replicas} replicas, HAProxy; {args.clients} shoppers, "
        f"{args.minutes:g} min")
    key = await asyncio.to_thread(cluster.store_key, "soak-store")
    load = TurnLoad(cluster.haproxy.base_url, key, clients=args.clients, store_id="soak-store",
                    rejoin=not args.no_rejoin)
    stop = asyncio.Event()
    running = asyncio.create_task(load.run(stop))
    events: list[Event] = []

    async def timed(name: str, act: Callable[[], Awaitable[str]]) -> None:
        event = Event(name, time.monotonic())
        events.append(event)
        detail = await act()
        event.ended = time.monotonic()
        say(f"{name}: {detail} ({event.ended - event.began:.1f} s)")

    async def rolling_restart() -> str:
        codes = []
        for i in range(args.replicas):
            codes.append(await asyncio.to_thread(cluster.stop_replica, i, signal.SIGTERM))
            await asyncio.to_thread(cluster.start_replica, i)
            await asyncio.to_thread(cluster.wait_all_up)
        return f"each replica SIGTERMed and started again, exit codes {codes}"

    async def kill_replica() -> str:
        await asyncio.to_thread(cluster.stop_replica, 0, signal.SIGKILL)
        await asyncio.sleep(2)
        await asyncio.to_thread(cluster.start_replica, 0)
        await asyncio.to_thread(cluster.wait_all_up)
        return "replica1 SIGKILLed, started again after 2 s"

    async def outage(down: Callable[[], None], up: Callable[[], None], what: str) -> str:
        began = time.monotonic()
        await asyncio.to_thread(down)
        await asyncio.sleep(max(0.0, began + OUTAGE_S - time.monotonic()))
        await asyncio.to_thread(up)
        return f"{what} down {OUTAGE_S:g} s, then up"

    schedule: list[tuple[str, Callable[[], Awaitable[str]]]] = [
        ("rolling restart", rolling_restart),
        ("replica killed", kill_replica),
        ("pgbouncer restart", lambda: outage(cluster.bouncer.stop, cluster.bouncer.start, "PgBouncer")),
        ("postgresql restart", lambda: outage(lambda: cluster.pg.stop("fast"), cluster.pg.start, "PostgreSQL")),
    ]
    total_s = args.minutes * 60
    gap = total_s / (len(schedule) + 1)
    started = time.monotonic()
    try:
        for n, (name, act) in enumerate(schedule, start=1):
            await asyncio.sleep(max(0.0, started + n * gap - time.monotonic()))
            await timed(name, act)
        await asyncio.sleep(max(0.0, started + total_s - time.monotonic()))
    finally:
        stop.set()
        await asyncio.wait_for(running, 180)
    ended = time.monotonic()
    say(f"load stopped: {len(load.results)} turns")

    rows = await asyncio.to_thread(stored_turns, cluster.pg, load.sessions)
    await asyncio.to_thread(cluster.stop)

    acknowledged = {(load.sessions[r.client], r.text) for r in load.results if r.acknowledged}
    stored = Counter((r["session_id"], r["content"]) for r in rows if r["role"] == "user")
    done = [r for r in load.results if r.done]
    errors = Counter(r.error for r in load.results if not r.done)
    print()
    print(f"turns: {len(load.results)} started, {len(done)} answered in {ended - started:.0f} s "
          f"({len(done) / (ended - started):.1f} turns/s answered)")
    print("not answered, by code: " + (", ".join(f"{code} {n}" for code, n in errors.most_common()) or "none"))
    print(f"user messages: acknowledged {len(acknowledged)}, stored {sum(stored.values())}, "
          f"acknowledged but not stored {len(acknowledged - set(stored))}, "
          f"stored but not acknowledged {len(set(stored) - acknowledged)}, "
          f"duplicated {sum(n - 1 for n in stored.values() if n > 1)}")
    rejoined = [r for r in load.results if r.rejoins]
    rerun = sum(1 for r in load.results if r.restarts)
    print(f"streams cut and rejoined (Last-Event-ID through HAProxy): {len(rejoined)}, answered after it "
          f"{sum(r.done for r in rejoined)}; re-run after their replica died: {rerun}")
    statuses = Counter(r["status"] for r in rows if r["role"] == "assistant")
    print("assistant messages by status: " + ", ".join(f"{s} {n}" for s, n in statuses.most_common()))
    print()
    print(f"first-token overhead, ms (p50 / p99; first token minus the {CHUNK_DELAY_MS} ms chunk delay)")
    print(f"{'fault':<20} {'15 s before':>14} {'during':>14} {'15 s after':>14} {'failed during':>14}")
    for e in events:
        windows = ((e.began - WINDOW_S, e.began), (e.began, e.ended), (e.ended, e.ended + WINDOW_S))
        cells = [f"{pct(v, 0.5)} / {pct(v, 0.99)}" for v in (overheads(load.results, a, b) for a, b in windows)]
        failed = sum(1 for r in load.results if not r.done and r.started < e.ended and r.ended >= e.began)
        print(f"{e.name:<20} {cells[0]:>14} {cells[1]:>14} {cells[2]:>14} {failed:>14}")
    overall = overheads(load.results, started, ended)
    print(f"{'whole run':<20} {'':>14} {pct(overall, 0.5) + ' / ' + pct(overall, 0.99):>14}")
    ok = not (acknowledged - set(stored)) and not (set(stored) - acknowledged) and max(stored.values(), default=1) == 1
    print("\n" + ("OK: every acknowledged message stored exactly once" if ok else "FAILED: messages lost or doubled"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
