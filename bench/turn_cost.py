"""What one turn costs our server, alone: sequential turns of 150 streamed tokens on the open-loop model (first token
after 600 ms, then 25 ms/token), one worker, nothing else running.

    python bench/turn_cost.py [--turns 40] [--tokens 150] [--no-sse] [--db-delay-ms 0.5] [--profile /tmp/turn.txt]
                              [--credential key|session-token]

Prints the first-token overhead (time to the first SSE token minus the model's 600 ms) p50/p90, and the server's
CPU per turn: gross (its whole CPU over the turns / turns) and net (less what it burns idle over the same time,
measured for 20 s before the turns). With --profile, py-spy samples the worker during the turns and the file gets
the functions by own and by total time (`py-spy record --format raw`, folded stacks, summarised here).
The SQL statements per turn are bench/run.py's (pg_stat_statements).
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
import shutil
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from contextlib import ExitStack

from bench._throwaway import throwaway_postgres
from bench.delay_proxy import DelayProxy
from bench.run import API, OPEN_FIRST_TOKEN_MS, OPEN_TOKEN_MS, OPEN_TOKENS, Ours, paced_model, pct, serve_ours
from tests.server_process import ChildProcess, process_cpu_s

IDLE_S = 20.0


def summarise(folded: Path, out: Path, top: int = 40) -> None:
    """Own time and total time per function from py-spy's folded stacks."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = stack.split(";")
        samples += n
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    with out.open("w") as f:
        f.write(f"# {samples} samples\n## own time\n")
        for frame, n in own.most_common(top):
            f.write(f"{100 * n / samples:5.1f}%  {frame}\n")
        f.write("## total time (the frame or what it called)\n")
        for frame, n in total.most_common(top):
            f.write(f"{100 * n / samples:5.1f}%  {frame}\n")


async def turns(ours: Ours, n: int, streamed: bool = True, credential: str = "key") -> list[float]:
    """n turns in one session; first-token overheads (ms) when streamed, else whole-turn times (POST /chat).
    credential "session-token": the turns carry the session's own token (a shopper's browser), not the key."""
    if credential == "session-token":
        created = await ours.json.post(f"{API}/sessions", {"store_id": "bench"})
        session = str(created["session_id"])
        ours = Ours(ours.base_url, {"Authorization": f"Bearer {created['session_token']}"})
    else:
        session = await ours.new_session()
    overheads = []
    for i in range(n):
        if streamed:
            first, _ = await ours.turn(session, f"How much is shipping? ({i})")
            overheads.append(first * 1000 - OPEN_FIRST_TOKEN_MS)
        else:
            t0 = time.perf_counter()
            await ours.json.post(f"{API}/sessions/{session}/chat", {"message": f"How much is shipping? ({i})"})
            overheads.append((time.perf_counter() - t0) * 1000)
    return overheads


async def alternating(ours: Ours, n: int) -> tuple[list[float], list[float]]:
    """n turns with the key and n with a session token, turn by turn in alternation on one server (this machine
    drifts: only figures taken side by side compare): (key overheads, token overheads), ms."""
    keyed = await ours.new_session()
    created = await ours.json.post(f"{API}/sessions", {"store_id": "bench"})
    shopper = Ours(ours.base_url, {"Authorization": f"Bearer {created['session_token']}"})
    await turns(ours, 3)  # warm: imports, pools, plans
    by_key, by_token = [], []
    for i in range(n):
        for client, session, out in ((ours, keyed, by_key), (shopper, str(created["session_id"]), by_token)):
            first, _ = await client.turn(session, f"How much is shipping? ({i})")
            out.append(first * 1000 - OPEN_FIRST_TOKEN_MS)
    return by_key, by_token


async def measure(ours: Ours, pid: int, n: int, folded: Path | None, streamed: bool, credential: str = "key"
                  ) -> tuple[float, float, float, list[float]]:
    """(idle CPU s/s, seconds of the turns, CPU s over them, first-token overheads ms); py-spy to `folded`."""
    await turns(ours, 3)  # warm: imports, pools, plans
    t0, c0 = time.perf_counter(), process_cpu_s(pid)
    await asyncio.sleep(IDLE_S)
    idle_per_s = (process_cpu_s(pid) - c0) / (time.perf_counter() - t0)
    spy = None
    if folded is not None:
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        spy = await asyncio.create_subprocess_exec(
            py_spy, "record", "--pid", str(pid), "--rate", "500", "--format", "raw", "--output", str(folded),
            "--nonblocking", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await asyncio.sleep(1)
    t0, c0 = time.perf_counter(), process_cpu_s(pid)
    overheads = await turns(ours, n, streamed, credential)
    span, cpu = time.perf_counter() - t0, process_cpu_s(pid) - c0
    if spy is not None:
        spy.send_signal(2)
        await asyncio.wait_for(spy.wait(), 30)
    return idle_per_s, span, cpu, overheads


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=40)
    parser.add_argument("--tokens", type=int, default=OPEN_TOKENS, help="tokens per answer (fixed cost: try 1)")
    parser.add_argument("--no-sse", action="store_true",
                        help="POST /chat (the answer as one JSON) instead of the SSE stream: what the SSE side costs")
    parser.add_argument("--profile", type=Path, default=None, help="py-spy the worker; summary to this file")
    parser.add_argument("--credential", choices=["key", "session-token", "both"], default="key",
                        help="what the turns carry: the admin key, the session's own token (a shopper's browser), "
                             "or both in alternation (first-token overheads only)")
    parser.add_argument("--db-delay-ms", type=float, default=0,
                        help="hold every packet to and from PostgreSQL this long each way (bench/delay_proxy.py)")
    args = parser.parse_args()

    with throwaway_postgres() as pg:
        server: ChildProcess | None = None
        try:
            with paced_model(OPEN_FIRST_TOKEN_MS, OPEN_TOKEN_MS, args.tokens) as (model_url, _), ExitStack() as stack:
                conninfo = pg.conninfo
                if args.db_delay_ms:  # the database across a network: every packet held this long each way
                    conninfo = stack.enter_context(DelayProxy(pg.server, args.db_delay_ms)).conninfo
                server, ours = serve_ours(conninfo, model_url)
                if args.credential == "both":
                    by_key, by_token = asyncio.run(alternating(ours, args.turns))
                    print(f"## {args.turns} + {args.turns} sequential turns of {args.tokens} tokens in alternation, "
                          "one worker: first-token overhead ms")
                    for name, values in (("admin key", by_key), ("session token", by_token)):
                        print(f"{name:<14} p50 {statistics.median(values):.2f}  p90 {pct(values, 0.9):.2f}  "
                              f"mean {statistics.fmean(values):.2f}")
                    print(f"difference of the p50s (token - key): "
                          f"{statistics.median(by_token) - statistics.median(by_key):+.2f} ms")
                    return 0
                folded = Path(tempfile.mkdtemp(prefix="sixshop-spy-")) / "turns.folded"
                idle_per_s, span, cpu, overheads = asyncio.run(measure(
                    ours, server.proc.pid, args.turns, folded if args.profile else None, not args.no_sse,
                    args.credential))
                server.stop()
                server = None
            if args.profile:
                summarise(folded, args.profile)
        finally:
            if server is not None:
                server.stop()
    delay = f", database {args.db_delay_ms:g} ms away each way" if args.db_delay_ms else ""
    print(f"## {args.turns} sequential turns of {args.tokens} tokens, one worker "
          f"(model: first token {OPEN_FIRST_TOKEN_MS} ms, then {OPEN_TOKEN_MS} ms/token{delay}), "
          f"credential: {args.credential}")
    what = "whole turn ms (POST /chat)" if args.no_sse else "first-token overhead ms"
    print(f"{what:<24} p50 {statistics.median(overheads):.1f}  p90 {pct(overheads, 0.9):.1f}")
    print(f"server CPU ms per turn   gross {1000 * cpu / args.turns:.1f}  net of idle "
          f"{1000 * (cpu - idle_per_s * span) / args.turns:.1f}  (idle {1000 * idle_per_s:.1f} ms/s)"
          + (" [py-spy attached]" if args.profile else ""))
    if args.profile:
        print(f"profile: {args.profile}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
