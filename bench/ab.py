"""First-token overhead of two versions of the service, side by side: each a server of its own (one worker) on
its own database of the same PostgreSQL, on the same paced model, driven turn by turn in alternation (A then B,
then B then A, ...) so that this machine's drift (±25 % between runs) falls on both alike.

    python bench/ab.py A B [--turns 60] [--tokens 1] [--db-delay-ms 0.5]    # --tokens 150: a whole answer's CPU

A and B are git revisions (checked out into temporary worktrees) or directories of a checkout; `.` is this one.
Each session gets sequential turns "How much is shipping? (i)"; the first 3 are warm-up. Prints p10/p50/p90 and
the mean of the overhead (time to the first token minus the model's 600 ms) for each, and each server's CPU per
turn (gross: its idle share while the other answers is in it, alike for both).
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

from bench.delay_proxy import DelayProxy
from bench.run import OPEN_FIRST_TOKEN_MS, OPEN_TOKEN_MS, ROOT, Ours, paced_model, serve_ours
from persistence.embedded import embedded_conninfo, start_embedded
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--turns", type=int, default=60)
    parser.add_argument("--tokens", type=int, default=1, help="tokens per answer (the first is what is measured)")
    parser.add_argument("--db-delay-ms", type=float, default=0,
                        help="hold every packet to and from PostgreSQL this long each way (bench/delay_proxy.py)")
    args = parser.parse_args()

    pg = start_embedded(Path(tempfile.mkdtemp(prefix="sixshop-bench-pg-")) / "data", delete_on_exit=True)
    servers: list[ChildProcess] = []
    try:
        with ExitStack() as stack:
            codes = [checkout(args.a, stack), checkout(args.b, stack)]
            with psycopg.connect(embedded_conninfo(pg), autocommit=True) as conn:
                conn.execute("create database ab_a")
                conn.execute("create database ab_b")
            proxy = stack.enter_context(DelayProxy(pg, args.db_delay_ms)) if args.db_delay_ms else None
            base = proxy.conninfo if proxy is not None else embedded_conninfo(pg)
            model_url, _ = stack.enter_context(paced_model(OPEN_FIRST_TOKEN_MS, OPEN_TOKEN_MS, args.tokens))
            clients = []
            for code, db in zip(codes, ("ab_a", "ab_b"), strict=True):
                server, client = serve_ours(psycopg.conninfo.make_conninfo(base, dbname=db), model_url, code=code)
                servers.append(server)
                clients.append(client)
            results, cpu = asyncio.run(alternate(clients, servers, args.turns))
            for server in servers:
                server.stop()
            servers.clear()
    finally:
        for server in servers:
            server.stop()
        pg.cleanup()
    delay = f", database {args.db_delay_ms:g} ms away each way" if args.db_delay_ms else ""
    print(f"## first-token overhead ms, {args.turns} turns of {args.tokens} tokens each, alternating (model: first "
          f"token {OPEN_FIRST_TOKEN_MS} ms, then {OPEN_TOKEN_MS} ms/token{delay}); server CPU ms per turn")
    for name, r, c in zip((args.a, args.b), results, cpu, strict=True):
        deciles = statistics.quantiles(r, n=10)
        print(f"{name:<12} p10 {deciles[0]:6.2f}  p50 {statistics.median(r):6.2f}  p90 {deciles[-1]:6.2f}  "
              f"mean {statistics.mean(r):6.2f}   CPU {c:6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
