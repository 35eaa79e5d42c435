"""Retrieval quality on the shipped sample knowledge base: hit@3 per backend available offline.

    python bench/retrieval.py [--k 3] [--misses]

Prints one line per backend, `hit@3 <backend> <value>`, over the labelled questions in
tests/retrieval_pairs.json (Korean and English, each with the page that answers it):

- fulltext: PostgreSQL full-text search (english stemming + Hangul bigrams), the offline default;
- pgvector: vectors from the local OpenAI-compatible embeddings endpoint (tests/fake_openai.py, a
  hashed bag of words and character n-grams, not a semantic model) in pgvector with an HNSW index;
- hybrid: both, fused by reciprocal rank.

With a real OPENAI_API_KEY in the environment, `--openai` measures pgvector/hybrid with the real
embedding model instead of the local endpoint. Everything runs on a throwaway embedded PostgreSQL.
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
import os
from contextlib import ExitStack

ROOT = Path(__file__).resolve().parent.parent

from bench._throwaway import throwaway_postgres  # noqa: E402
from persistence.db import PoolConfig, open_pool  # noqa: E402
from persistence.migrations import migrate  # noqa: E402
from server.integrations.evaluation import HitReport, hit_at_k, load_pairs  # noqa: E402
from server.integrations.ingest import ingest_path  # noqa: E402
from server.integrations.knowledge import build_knowledge  # noqa: E402
from server.settings import Settings  # noqa: E402

PAIRS = ROOT / "tests" / "retrieval_pairs.json"
SAMPLE = ROOT / "knowledge" / "sample"


async def measure(conninfo: str, embeddings_url: str | None, api_key: str, k: int) -> dict[str, HitReport]:
    pool = await open_pool(PoolConfig(conninfo=conninfo, min_size=1, max_size=4))
    try:
        await migrate(pool)
        pairs = load_pairs(PAIRS)
        vector = dict(openai_api_key=api_key, openai_base_url=embeddings_url, vector_store="pgvector")
        stacks = {
            "fulltext": await build_knowledge(Settings(vector_store="none"), pool),
            "pgvector": await build_knowledge(Settings(**vector, retrieval_mode="vector"), pool),  # type: ignore[arg-type]
            "hybrid": await build_knowledge(Settings(**vector, retrieval_mode="hybrid"), pool),  # type: ignore[arg-type]
        }
        await ingest_path(stacks["pgvector"].indexer, SAMPLE, source="sample")  # chunks and vectors
        return {name: await hit_at_k(stack.retriever, pairs, k=k) for name, stack in stacks.items()}
    finally:
        await pool.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--misses", action="store_true", help="list the questions each backend missed")
    parser.add_argument("--openai", action="store_true", help="use the real OpenAI embeddings (OPENAI_API_KEY)")
    args = parser.parse_args()
    with ExitStack() as stack:
        pg = stack.enter_context(throwaway_postgres())
        if args.openai:
            key = os.environ.get("OPENAI_API_KEY")
            if not key:
                print("--openai needs OPENAI_API_KEY", file=sys.stderr)
                return 2
            url, label = os.environ.get("OPENAI_BASE_URL"), "openai"
        else:
            from tests.fake_openai import FakeOpenAIServer

            fake = stack.enter_context(FakeOpenAIServer())
            url, key, label = fake.base_url, "sk-local-bench", "local hashed embeddings"
        reports = asyncio.run(measure(pg.conninfo, url, key, args.k))
    print(f"# {next(iter(reports.values())).total} questions (tests/retrieval_pairs.json), "
          f"sample knowledge base, vectors: {label}")
    for name, report in reports.items():
        print(f"hit@{args.k} {name} {report.value:.3f}")
        if args.misses:
            for question, expected, got in report.misses:
                print(f"    miss: {question!r} wanted {expected}, got {got}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
