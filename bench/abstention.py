"""Where the service should stop answering, swept on knowledge/eval/cases.json:

    python bench/abstention.py coverage [--thresholds 0.1 0.15 ...]     # the offline answerer's min_coverage
    python bench/abstention.py similarity [--thresholds 0.8 0.82 ...]   # RETRIEVAL_MIN_SIMILARITY, local model

`coverage`: the weighted share of the question's terms the best section must contain (graph/models.py
MIN_COVERAGE), full-text retrieval only. `similarity`: the local embedding model's cosine for the closest passage
below which no passage goes to the model (server/integrations/embeddings.py LOCAL_MIN_SIMILARITY), hybrid
retrieval. Prints, per threshold: facts (answerable cases whose answer states every required fact), citation,
abstention precision / recall / F1. A default is the threshold that keeps facts within a point of their best and
maximises abstention F1. Everything runs on a throwaway embedded PostgreSQL with no key.
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

from langgraph.checkpoint.memory import InMemorySaver

from bench._throwaway import throwaway_postgres
from graph.graph import build_graph
from graph.models import MIN_COVERAGE, ExtractiveChatModel
from graph.state import ChatContext
from persistence.db import PoolConfig, open_pool
from persistence.migrations import migrate
from server.integrations.embeddings import LOCAL_MIN_SIMILARITY
from server.integrations.evaluation import Case, evaluate_variants, load_cases
from server.integrations.ingest import ingest_path
from server.integrations.knowledge import build_knowledge
from server.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


async def sweep(conninfo: str, what: str, thresholds: list[float]) -> None:
    pool = await open_pool(PoolConfig(conninfo=conninfo, min_size=1, max_size=4))
    try:
        await migrate(pool)
        embeddings = "local" if what == "similarity" else "none"
        stack = await build_knowledge(Settings(embeddings=embeddings), pool)  # type: ignore[arg-type]
        await ingest_path(stack.indexer, ROOT / "knowledge" / "sample", source="sample")
        cases = load_cases()
        graph = build_graph(InMemorySaver())
        default = MIN_COVERAGE if what == "coverage" else LOCAL_MIN_SIMILARITY
        print(f"{len(cases)} cases, retriever {stack.backend}; default min_{what} {default}")
        print(f"{'min_' + what:>14} {'facts':>7} {'citation':>9} {'abst. P':>8} {'abst. R':>8} {'abst. F1':>9}")
        for threshold in thresholds:
            model = ExtractiveChatModel(min_coverage=threshold if what == "coverage" else MIN_COVERAGE)
            similarity = threshold if what == "similarity" else None

            def context(variant: str, case: Case, model: ExtractiveChatModel = model,
                        similarity: float | None = similarity) -> ChatContext:
                return ChatContext(store_id="eval", audience=case.audience, model=model, retriever=stack.retriever,
                                   k=4, prompt_variant=variant, min_similarity=similarity)

            (report,) = await evaluate_variants(graph, cases, ["v1"], 3, context)
            f = report.figures()
            print(f"{threshold:>14.3f} {f['facts']:>7.3f} {f['citation']:>9.3f} {f['abstention_precision']:>8.3f} "
                  f"{f['abstention_recall']:>8.3f} {f['abstention_f1']:>9.3f}")
    finally:
        await pool.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["coverage", "similarity"])
    parser.add_argument("--thresholds", type=float, nargs="+")
    args = parser.parse_args()
    thresholds = args.thresholds or ([0.0, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4] if args.what == "coverage" else
                                     [0.0, 0.8, 0.82, 0.83, 0.84, 0.845, 0.85, 0.855, 0.86, 0.87])
    with throwaway_postgres() as pg:
        asyncio.run(sweep(pg.conninfo, args.what, thresholds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
