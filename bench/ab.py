"""First-token overhead of two versions of the service, side by side: each a server of its own (one worker) on
its own database of the same PostgreSQL, on the same paced model, driven turn by turn in alternation (A then B,
then B then A, ...) so that this machine's drift (±25 % between runs) falls on both alike.

    python bench/ab.py A B [--turns 60] [--tokens 1] [--db-delay-ms 0.5]    # --tokens 150: a whole answer's CPU
    python bench/ab.py A B --open-loop --workers 2 [--rates 5 10 20 30] [--seconds 20] [--embeddings local]
    python bench/ab.py . . --servers uvicorn granian ...    # the same code under uvicorn and granian

A and B are git revisions (checked out into temporary worktrees) or directories of a checkout; `.` is this one.
Each session gets sequential turns "How much is shipping? (i)"; the first 3 are warm-up. Prints p10/p50/p90 and
the mean of the overhead (time to the first token minus the model's 600 ms) for each, and each server's CPU per
turn (gross: its idle share while the other answers is in it, alike for both). With --open-loop: bench/run.py's
open loop on each in turn at each rate (A, B; then B, A), first-token overhead p50/p99, errors, peak open streams,
peak RSS and server CPU per turn, and the turns per second each meets the objective at.
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
import statistics
import subprocess
import tempfile
from contextlib import ExitStack

import psycopg

from bench._throwaway import throwaway_postgres
from bench.delay_proxy import DelayProxy
from bench.run import (
    LOCAL_EMBEDDINGS,
    OBJECTIVE_P99_MS,
    OPEN_FIRST_TOKEN_MS,
    OPEN_TOKEN_MS,
    ROOT,
    Ours,
    fmt,
    open_loop,
    paced_model,
    rate_before,
    sequential_turns,
    serve_ours,
)
from tests.server_process import ChildProcess

WARM_UP = 3


def checkout(spec: str, stack: ExitStack) -> Path:
    """A directory of the service's code: `spec` itself, or a worktree of revision `spec` (removed at the end)."""
    if Path(spec).is_dir():
        return Path(spec).resolve()
    where = Path(tempfile.mkdtemp(prefix="sixshop-ab-")) / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", "-q", str(where), spec], cwd=ROOT, check=True)
    stack.callback(subprocess.run, ["git", "worktree", "remove", "--force", str(where)], cwd=ROOT, check=False)
    return where


async def alternate(clients: list[Ours], servers: list[ChildProcess], turns: int
                    ) -> tuple[list[list[float]], list[float]]:
    """(first-token overheads per server, server CPU ms per turn per server: its own turns' time, and its idle
    share of the other's)."""
    sessions = [await c.new_session() for c in clients]
    overheads: list[list[float]] = [[] for _ in clients]
    cpu = [0.0, 0.0]
    for i in range(WARM_UP + turns):
        if i == WARM_UP:
            cpu = [s.cpu_s() for s in servers]
        for j in (0, 1) if i % 2 == 0 else (1, 0):
            first, _ = await clients[j].turn(sessions[j], f"How much is shipping? ({i})")
            if i >= WARM_UP:
                overheads[j].append(first * 1000 - OPEN_FIRST_TOKEN_MS)
            await asyncio.sleep(0.1)
    return overheads, [(s.cpu_s() - c) * 1000 / turns for s, c in zip(servers, cpu, strict=True)]


async def alternate_open_loop(names: list[str], clients: list[Ours], servers: list[ChildProcess],
                              rates: list[float], seconds: float) -> None:
    """bench/run.py's open loop (Poisson arrivals, a fresh session each, the 4.3 s model) on each server in turn at
    each rate, A then B, then B then A at the next rate; turns/s at the objective for each."""
    for client in clients:  # warm-up: every worker process, then one by one
        warm = [await client.new_session() for _ in range(8)]
        await asyncio.gather(*(client.turn(s, "How do I return an item?") for s in warm))
        await sequential_turns(client, 2, {})
    print(f"{'server':<12} {'rate/s':>7} {'turns':>6} {'ovh p50':>8} {'ovh p99':>8} {'errors':>7} {'open pk':>8} "
          f"{'RSS MB':>7} {'CPU ms/turn':>12}")
    best = {name: 0.0 for name in names}
    for k, rate in enumerate(rates):
        for j in (0, 1) if k % 2 == 0 else (1, 0):
            r = await open_loop(clients[j], rate, seconds, servers[j], {})
            met = r["errors"] == 0 and r["p99"] <= OBJECTIVE_P99_MS
            print(f"{names[j]:<12} {rate:>7g} {r['arrivals']:>6} {fmt(r['p50']):>8} {fmt(r['p99']):>8} "
                  f"{r['errors']:>7} {r['open_peak']:>8} {fmt(r['rss_mb']):>7} {fmt(r['cpu_server']):>12}"
                  f"{'' if met else '   <- objective missed'}", flush=True)
            if met and best[names[j]] == rate_before(rates, rate):
                best[names[j]] = rate
            await asyncio.sleep(2)
    for name, rate in best.items():
        print(f"turns/s at objective  {name:<12} {rate:g}" + ("" if rate else f" (missed at {rates[0]:g}/s)"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--turns", type=int, default=60)
    parser.add_argument("--tokens", type=int, default=1, help="tokens per answer (the first is what is measured)")
    parser.add_argument("--db-delay-ms", type=float, default=0,
                        help="hold every packet to and from PostgreSQL this long each way (bench/delay_proxy.py)")
    parser.add_argument("--embeddings", choices=["none", "local"], default="none",
                        help="local: both search hybrid with the local embedding model, as `serve` does with no key")
    parser.add_argument("--workers", type=int, default=1, help="each server's worker processes")
    parser.add_argument("--servers", nargs=2, choices=["uvicorn", "granian"], default=["uvicorn", "uvicorn"],
                        help="A's and B's HTTP server (`. . --servers uvicorn granian`: the same code on each)")
    parser.add_argument("--open-loop", action="store_true",
                        help="bench/run.py's open loop at --rates, alternating, instead of sequential turns")
    parser.add_argument("--rates", type=float, nargs="+", default=[5, 10, 15, 20, 30, 40])
    parser.add_argument("--seconds", type=float, default=20, help="open-loop duration per rate")
    args = parser.parse_args()
    names = [f"{spec} ({server})" if args.servers[0] != args.servers[1] else spec
             for spec, server in zip((args.a, args.b), args.servers, strict=True)]
    if args.open_loop:
        args.tokens = 150

    with throwaway_postgres() as pg:
        servers: list[ChildProcess] = []
        try:
            with ExitStack() as stack:
                codes = [checkout(args.a, stack), checkout(args.b, stack)]
                with psycopg.connect(pg.conninfo, autocommit=True) as conn:
                    conn.execute("create database ab_a")
                    conn.execute("create database ab_b")
                proxy = stack.enter_context(DelayProxy(pg.server, args.db_delay_ms)) if args.db_delay_ms else None
                base = proxy.conninfo if proxy is not None else pg.conninfo
                model_url, _ = stack.enter_context(paced_model(OPEN_FIRST_TOKEN_MS, OPEN_TOKEN_MS, args.tokens))
                clients = []
                for code, db, http_server in zip(codes, ("ab_a", "ab_b"), args.servers, strict=True):
                    server, client = serve_ours(psycopg.conninfo.make_conninfo(base, dbname=db), model_url,
                                                workers=args.workers, code=code, http_server=http_server,
                                                env=LOCAL_EMBEDDINGS if args.embeddings == "local" else None)
                    servers.append(server)
                    clients.append(client)
                setting = (f"{args.workers} worker(s) each, embeddings {args.embeddings}, "
                           f"servers {' / '.join(args.servers)}")
                if args.open_loop:
                    print(f"## open loop, alternating: {setting}; objective: first-token overhead p99 <= "
                          f"{OBJECTIVE_P99_MS:g} ms, 0 errors", flush=True)
                    asyncio.run(alternate_open_loop(names, clients, servers, args.rates, args.seconds))
                    return 0
                results, cpu = asyncio.run(alternate(clients, servers, args.turns))
                for server in servers:
                    server.stop()
                servers.clear()
        finally:
            for server in servers:
                server.stop()
    delay = f", database {args.db_delay_ms:g} ms away each way" if args.db_delay_ms else ""
    print(f"## first-token overhead ms, {args.turns} turns of {args.tokens} tokens each, alternating (model: first "
          f"token {OPEN_FIRST_TOKEN_MS} ms, then {OPEN_TOKEN_MS} ms/token{delay}); server CPU ms per turn; "
          f"{args.workers} worker(s) each, embeddings {args.embeddings}")
    for name, r, c in zip(names, results, cpu, strict=True):
        deciles = statistics.quantiles(r, n=10)
        print(f"{name:<12} p10 {deciles[0]:6.2f}  p50 {statistics.median(r):6.2f}  p90 {deciles[-1]:6.2f}  "
              f"mean {statistics.mean(r):6.2f}   CPU {c:6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
