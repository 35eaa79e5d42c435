"""Smoke figures for the foundation: session creation and an offline streamed turn, over HTTP.

    .venv/bin/python bench/smoke.py [--sessions 200] [--turns 100]

Starts `sixshop-agent serve` on 127.0.0.1 with a throwaway embedded PostgreSQL, drives it
sequentially from this process, prints medians and p95, and stops everything. The full benchmark
suite (LangGraph server comparison, concurrency) is a later issue's `bench/run.py`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--turns", type=int, default=100)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pg_dir = Path(tempfile.mkdtemp(prefix="sixshop-bench-")) / "pg"
    env = {**os.environ, "EMBEDDED_PG_DIR": str(pg_dir), "OPENAI_API_KEY": "", "LOG_LEVEL": "WARNING",
           "APP_ENV": "test"}
    env.pop("DATABASE_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--port", str(port)], cwd=ROOT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=30) as c:
            for _ in range(300):
                try:
                    if c.get("/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            create, ids = [], []
            for _ in range(args.sessions):
                t0 = time.perf_counter()
                r = c.post("/api/session-chat/sessions", json={"store_id": "bench"})
                create.append((time.perf_counter() - t0) * 1000)
                ids.append(r.json()["session_id"])
            first, total = [], []
            for sid in (ids * (args.turns // len(ids) + 1))[: args.turns]:
                t0, seen = time.perf_counter(), None
                with c.stream("POST", f"/api/session-chat/sessions/{sid}/chat/stream",
                              json={"message": "How much is shipping?"}) as r:
                    for line in r.iter_lines():
                        if seen is None and line == "event: token":
                            seen = (time.perf_counter() - t0) * 1000
                total.append((time.perf_counter() - t0) * 1000)
                first.append(seen if seen is not None else float("nan"))
        print(f"session_create_ms p50 {statistics.median(create):.2f} p95 {pct(create, 0.95):.2f} (n={len(create)})")
        print(f"offline_turn_first_token_ms p50 {statistics.median(first):.2f} p95 {pct(first, 0.95):.2f}")
        print(f"offline_turn_total_ms p50 {statistics.median(total):.2f} p95 {pct(total, 0.95):.2f} (n={len(total)})")
    finally:
        proc.terminate()
        proc.wait(20)  # the server stops its embedded PostgreSQL on exit
        shutil.rmtree(pg_dir.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
