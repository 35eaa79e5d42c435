"""Many open streams at once: N shoppers' answers streaming together from a slow model, on one server.

    python bench/streams.py [--streams 1000] [--ramp-seconds 20] [--workers 1] [--embeddings local]

The model (tests/fake_openai.py, its own process) answers slowly, so that every stream is still open when the
last one starts: first token after 1 s, then one token every 2 s, 15 tokens (29 s). N turns, each in a session of
its own, start evenly over --ramp-seconds; each reads its SSE stream to the end. Prints the peak of streams open
at once (a stream is open from its first event to its last), errors by reason, the server's peak RSS (its
process and children; PostgreSQL is a separate server) and its CPU per turn. Everything binds to 127.0.0.1.
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
from collections import Counter

from bench._throwaway import throwaway_postgres
from bench.run import API, LOCAL_EMBEDDINGS, Ours, PeakRss, paced_model, serve_ours, sse_lines
from tests.server_process import ChildProcess

FIRST_TOKEN_MS, TOKEN_MS, TOKENS = 1000, 2000, 15


async def drive(ours: Ours, server: ChildProcess, n: int, ramp_s: float) -> dict[str, object]:
    sessions = []
    for _ in range(n):  # sessions first, so that the ramp is turns only
        sessions.append(await ours.new_session())
    open_now = peak_open = done = 0
    errors: Counter[str] = Counter()

    async def one(session: str) -> None:
        nonlocal open_now, peak_open, done
        opened = False
        try:
            async for line in sse_lines(ours.base_url, f"{API}/sessions/{session}/chat/stream",
                                        {"message": "How much is shipping?"}, ours.headers):
                if not opened and line.startswith(b"event:"):
                    opened = True
                    open_now += 1
                    peak_open = max(peak_open, open_now)
                if line == b"event: error":
                    errors["error event"] += 1
                elif line == b"event: done":
                    done += 1
        except Exception as exc:
            errors[f"{type(exc).__name__}: {str(exc)[:100]}"] += 1
        finally:
            if opened:
                open_now -= 1

    cpu0, t0 = server.cpu_s(), time.perf_counter()
    tasks = []
    async with PeakRss(server, 0.5) as rss:
        for i, session in enumerate(sessions):
            await asyncio.sleep(max(0.0, t0 + i * ramp_s / n - time.perf_counter()))
            tasks.append(asyncio.create_task(one(session)))
        await asyncio.gather(*tasks)
    return {"peak_open": peak_open, "done": done, "errors": errors, "peak_rss": rss.mb,
            "cpu_per_turn_ms": (server.cpu_s() - cpu0) / n * 1000, "seconds": time.perf_counter() - t0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--ramp-seconds", type=float, default=20)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--token-ms", type=int, default=TOKEN_MS,
                        help="the model's pause between tokens (default 2000: a 29 s answer); shorter answers must "
                             "still outlast the ramp for every stream to be open at once")
    parser.add_argument("--embeddings", choices=["none", "local"], default="none",
                        help="local: hybrid search with the local embedding model, as `serve` does with no key")
    args = parser.parse_args()

    with throwaway_postgres() as pg:
        conninfo = pg.conninfo
        server: ChildProcess | None = None
        try:
            with paced_model(FIRST_TOKEN_MS, args.token_ms, TOKENS) as (model_url, _):
                server, ours = serve_ours(conninfo, model_url, args.workers,
                                          env=LOCAL_EMBEDDINGS if args.embeddings == "local" else None)
                idle_rss = server.rss_mb()
                r = asyncio.run(drive(ours, server, args.streams, args.ramp_seconds))
        finally:
            if server is not None:
                server.stop()
    errors = r["errors"]
    assert isinstance(errors, Counter)
    print(f"## {args.streams} streams started over {args.ramp_seconds:g} s, {args.workers} worker(s), embeddings "
          f"{args.embeddings}; model: first "
          f"token {FIRST_TOKEN_MS} ms, then one every {args.token_ms} ms, {TOKENS} tokens")
    print(f"open at once (peak)   {r['peak_open']}")
    print(f"answers done          {r['done']}   errors {sum(errors.values())}")
    for reason, count in errors.most_common():
        print(f"   error x{count}: {reason}")
    print(f"server RSS MB         idle {idle_rss:,.0f}   peak {r['peak_rss']:,.0f}")
    print(f"server CPU per turn   {r['cpu_per_turn_ms']:.1f} ms  (all {r['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
