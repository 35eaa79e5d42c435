"""Retrieval quality on the sample knowledge base (tests/retrieval_pairs.json), per offline backend.

The figures themselves are printed by `python bench/retrieval.py`; here each backend must keep a
floor, so a change to chunking, the full-text configuration or fusion that loses answers fails.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from persistence.db import Pool
from server.integrations.evaluation import hit_at_k, load_pairs
from server.integrations.ingest import ingest_path
from server.integrations.knowledge import build_knowledge
from server.settings import Settings
from tests.conftest import ROOT
from tests.fake_openai import FakeOpenAIServer

PAIRS = ROOT / "tests" / "retrieval_pairs.json"
FLOOR = 0.9


def test_the_question_set_covers_both_languages_and_every_page() -> None:
    pairs = load_pairs(PAIRS)
    assert len(pairs) >= 30
    korean = [p for p in pairs if any("\uac00" <= ch <= "\ud7a3" for ch in p.question)]
    assert len(korean) >= 15 and len(pairs) - len(korean) >= 15
    pages = {f"sample:{p.relative_to(ROOT / 'knowledge' / 'sample').as_posix()}"
             for p in (ROOT / "knowledge" / "sample").rglob("*.md")}
    assert {p.doc_id for p in pairs} == pages


@pytest.mark.parametrize("mode", ["fulltext", "vector", "hybrid"])
async def test_hit_at_3_floor(pool: Pool, fake_openai: FakeOpenAIServer, mode: str) -> None:
    settings = Settings(openai_api_key="sk-local-test", openai_base_url=fake_openai.base_url,  # type: ignore[arg-type]
                        vector_store="pgvector", retrieval_mode=mode)  # type: ignore[arg-type]
    stack = await build_knowledge(settings, pool)
    await ingest_path(stack.indexer, ROOT / "knowledge" / "sample", source="sample")
    report = await hit_at_k(stack.retriever, load_pairs(PAIRS), k=3)
    assert report.total >= 30
    assert report.value >= FLOOR, report.misses


def test_bench_prints_one_line_per_backend() -> None:
    out = subprocess.run([sys.executable, "bench/retrieval.py"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    lines = [line.split() for line in out.stdout.splitlines() if line.startswith("hit@3 ")]
    assert [parts[1] for parts in lines] == ["fulltext", "pgvector", "hybrid"]
    assert all(0.0 <= float(parts[2]) <= 1.0 for parts in lines)


@pytest.mark.parametrize("mode", ["fulltext", "vector", "hybrid"])
async def test_a_shopper_never_gets_a_seller_page(pool: Pool, fake_openai: FakeOpenAIServer, mode: str) -> None:
    """Audiences (front matter `audience:`): the seller guide is found for sellers, never for shoppers, whatever
    the backend; pages for `all` reach both."""
    settings = Settings(openai_api_key="sk-local-test", openai_base_url=fake_openai.base_url,  # type: ignore[arg-type]
                        vector_store="pgvector", retrieval_mode=mode)  # type: ignore[arg-type]
    stack = await build_knowledge(settings, pool)
    await ingest_path(stack.indexer, ROOT / "knowledge" / "sample", source="sample")
    seller_pages = {"sample:en/store-setup.md", "sample:ko/store-setup.md"}
    for question in ("When are seller settlements paid to my bank account?", "상품 등록 어떻게 해요",
                     "shipping settings free shipping threshold"):
        for_shopper = await stack.retriever.ainvoke(question, k=6, store_id="eval", audience="shopper")
        for_seller = await stack.retriever.ainvoke(question, k=6, store_id="eval", audience="seller")
        assert not {d.metadata["doc_id"] for d in for_shopper} & seller_pages, question
        assert {d.metadata["doc_id"] for d in for_seller} & seller_pages, question
    both = [await stack.retriever.ainvoke("forgot my password reset link", k=3, store_id="eval", audience=a)
            for a in ("shopper", "seller")]
    assert all("sample:en/account.md" in {d.metadata["doc_id"] for d in found} for found in both)


async def test_the_answerers_english_stems_are_the_full_text_indexs(pool: Pool) -> None:
    """graph/text.py stems English words with Snowball's English stemmer, the one PostgreSQL's `english`
    configuration uses for the full-text index: a word is one term to both."""
    from graph.text import stem

    words = ["taxes", "shipping", "shipped", "cancelling", "cancelled", "arrives", "deliveries", "refunded",
             "expired", "installments", "knitwear", "ceramics", "businesses", "recalculated", "dishwasher"]
    async with pool.connection() as conn:
        cur = await conn.execute("select w, array_to_string(tsvector_to_array(to_tsvector('english', w)), '') as s"
                                 " from unnest(%s::text[]) as w", (words,))
        rows = await cur.fetchall()
    assert {r["w"]: r["s"] for r in rows} == {w: stem(w) for w in words}
