"""What following a turn on another replica costs: the lag of events relayed through PostgreSQL NOTIFY.

    python bench/rejoin.py [--turns 10]

Two `sixshop-agent serve` processes on one embedded PostgreSQL and a paced local model (first token after
200 ms, then 100 tokens 20 ms apart). For each turn a client streams it from replica A, and another client
rejoins it on replica B with Last-Event-ID 3 while it runs (B asks A through NOTIFY to relay it). Prints the
lag of each live event at B's client behind A's client (events past the catch-up), p50/p95/max.
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
import time

import httpx

from bench._throwaway import throwaway_postgres
from tests.fake_openai import FakeOpenAIServer, Pace
from tests.server_process import ServerProcess
from tests.sse import read_sse

API = "/api/session-chat"


async def one_turn(c: httpx.AsyncClient, a: str, b: str) -> list[float]:
    sid = (await c.post(f"{a}{API}/sessions", json={"store_id": "bench"})).json()["session_id"]
    at_a: dict[int, float] = {}
    at_b: dict[int, float] = {}
    started: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def original() -> None:
        async with c.stream("POST", f"{a}{API}/sessions/{sid}/chat/stream", json={"message": "q"}) as r:
            async for n, event, data in read_sse(r):
                at_a[n] = time.monotonic()
                if event == "metadata":
                    started.set_result(data["message_id"])

    reading = asyncio.create_task(original())
    mid = await started
    await asyncio.sleep(0.3)
    async with c.stream("GET", f"{b}{API}/sessions/{sid}/messages/{mid}/stream",
                        headers={"Last-Event-ID": "3"}) as r:
        async for n, _, _ in read_sse(r):
            at_b[n] = time.monotonic()
    await reading
    return [(at_b[n] - at_a[n]) * 1000 for n in at_b if n in at_a and n > 20]


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turns", type=int, default=10)
    args = ap.parse_args()
    with throwaway_postgres() as pg:
        with FakeOpenAIServer(Pace(0.2, 0.02, 100)) as model:
            env = {"DATABASE_URL": pg.conninfo, "OPENAI_API_KEY": "sk-local-bench",
                   "OPENAI_BASE_URL": model.base_url, "CAPACITY_SAMPLE_SECONDS": "0"}
            with ServerProcess(env) as a, ServerProcess(env) as b:
                lags: list[float] = []
                async with httpx.AsyncClient(timeout=60) as c:
                    for _ in range(args.turns):
                        lags += await one_turn(c, a.base_url, b.base_url)
        lags.sort()
        print(f"relay lag of a follower on another replica behind the turn's own client, over {len(lags)} live "
              f"events of {args.turns} turns: p50 {lags[len(lags) // 2]:.1f} ms, "
              f"p95 {lags[int(len(lags) * 0.95)]:.1f} ms, max {lags[-1]:.1f} ms")


if __name__ == "__main__":
    asyncio.run(main())
