"""Checkpoint storage per conversation: bytes per turn at 10, 100 and 500 turns.

    python bench/checkpoints.py [--turns 10,100,500] [--stock-up-to 100]

Runs offline turns (about 600-byte questions) through the service's chat path on a throwaway
embedded PostgreSQL and measures what one session's thread occupies in checkpoints,
checkpoint_blobs and checkpoint_writes (pg_column_size of each row):
- service: as configured in `serve`, one checkpoint write per turn (durability "exit") and the
  thread pruned to its latest checkpoint after each turn;
- stock: LangGraph's defaults (a checkpoint after every step, nothing pruned), for comparison.
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
import random
import time
from datetime import timedelta

from bench._throwaway import throwaway_postgres
from server.resources import Resources, open_resources
from server.services.chat import IntegratedChatService
from server.settings import Settings

# logical: the bytes the saver wrote (before PostgreSQL's TOAST compression); stored: as kept on disk
SIZE_SQL = """
select (select coalesce(sum(octet_length(checkpoint::text) + octet_length(metadata::text)), 0)
          from checkpoints where thread_id = %(t)s)
     + (select coalesce(sum(octet_length(blob)), 0) from checkpoint_blobs where thread_id = %(t)s)
     + (select coalesce(sum(octet_length(blob)), 0) from checkpoint_writes where thread_id = %(t)s) as logical,
       (select coalesce(sum(pg_column_size(checkpoint) + pg_column_size(metadata)), 0)
          from checkpoints where thread_id = %(t)s)
     + (select coalesce(sum(pg_column_size(blob)), 0) from checkpoint_blobs where thread_id = %(t)s)
     + (select coalesce(sum(pg_column_size(blob)), 0) from checkpoint_writes where thread_id = %(t)s) as stored,
       (select count(*) from checkpoints where thread_id = %(t)s) as checkpoints
"""
SAMPLE = Path(__file__).resolve().parent.parent / "knowledge" / "sample" / "en"
WORDS = " ".join(p.read_text(encoding="utf-8") for p in sorted(SAMPLE.glob("*.md"))).split()


def question(i: int, size: int = 600) -> str:
    """About `size` bytes of help-centre words, different for every turn (so compression cannot cheat)."""
    rnd = random.Random(i)
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < size:
        words.append(rnd.choice(WORDS))
    return " ".join(words) + "?"


def service(res: Resources, stock: bool) -> IntegratedChatService:
    return IntegratedChatService(
        graph=res.chat.graph, messages=res.messages, model=res.chat.model, retriever=res.chat.retriever,
        turn_timeout=timedelta(seconds=120), expire_after=timedelta(hours=24), max_message_chars=4000,
        max_metadata_bytes=4096, retrieval_k=4, history_messages=20, prompt_variant="v1",
        durability="async" if stock else "exit", prune_checkpoints=not stock,
    )


async def measure(res: Resources, turns: int, stock: bool) -> tuple[int, int, int, float]:
    chat = service(res, stock)
    session = await res.sessions.create("bench-checkpoints", None, {})
    started = time.perf_counter()
    for i in range(turns):
        turn = await chat.start_turn(session.session_id, question(i), {})
        async for _ in turn.stream():
            pass
        if turn.task is not None:
            await turn.task  # the checkpoint prune runs after the answer is out
    elapsed = time.perf_counter() - started
    async with res.pool.connection() as conn:
        row = await (await conn.execute(SIZE_SQL, {"t": str(session.session_id)})).fetchone()
    assert row is not None
    return int(row["logical"]), int(row["stored"]), int(row["checkpoints"]), elapsed


async def run(conninfo: str, counts: list[int], stock_up_to: int) -> None:
    settings = Settings(database_url=conninfo, session_cleanup_interval_minutes=0,  # type: ignore[arg-type]
                        capacity_sample_seconds=0, ingest_sample_if_empty=True)
    async with open_resources(settings) as res:
        print("# ~600-byte questions, offline answers; one thread's checkpoint rows, as written (logical) and "
              "as stored (after TOAST compression)")
        print(f"{'config':<8} {'turns':>6} {'logical':>12} {'per turn':>9} {'stored':>12} {'per turn':>9} "
              f"{'checkpoints':>12} {'ms/turn':>8}")
        for stock in (False, True):
            for n in counts:
                if stock and n > stock_up_to:
                    continue
                logical, stored, kept, elapsed = await measure(res, n, stock)
                print(f"{'stock' if stock else 'service':<8} {n:>6} {logical:>12,} {logical // n:>9,} {stored:>12,} "
                      f"{stored // n:>9,} {kept:>12} {elapsed * 1000 / n:>8.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", default="10,100,500")
    parser.add_argument("--stock-up-to", type=int, default=100, help="largest turn count for the stock saver")
    args = parser.parse_args()
    with throwaway_postgres() as pg:
        asyncio.run(run(pg.conninfo, [int(n) for n in args.turns.split(",")], args.stock_up_to))
    return 0


if __name__ == "__main__":
    sys.exit(main())
