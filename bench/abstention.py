"""Where the offline answerer should stop answering: knowledge/eval/cases.json at several `min_coverage`
thresholds (the weighted share of the question's terms the best section must contain).

    python bench/abstention.py [--thresholds 0.2 0.25 0.3 ...]

Prints, per threshold: facts (answerable cases whose answer states every required fact), citation, abstention
precision / recall / F1. The default (graph/models.py MIN_COVERAGE) is the threshold that keeps facts within a
point of their best and maximises abstention F1. Everything runs on a throwaway embedded PostgreSQL with the
offline defaults (full-text retrieval, no key).
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
import tempfile

from langgraph.checkpoint.memory import InMemorySaver

from graph.graph import build_graph
from graph.models import MIN_COVERAGE, ExtractiveChatModel
from graph.state import ChatContext
from persistence.db import PoolConfig, open_pool
from persistence.embedded import embedded_conninfo, start_embedded
from persistence.migrations import migrate
from server.integrations.evaluation import Case, evaluate_variants, load_cases
from server.integrations.ingest import ingest_path
from server.integrations.knowledge import build_knowledge
from server.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


async def sweep(conninfo: str, thresholds: list[float]) -> None:
    pool = await open_pool(PoolConfig(conninfo=conninfo, min_size=1, max_size=4))
    try:
        await migrate(pool)
        stack = await build_knowledge(Settings(vector_store="none"), pool)
        await ingest_path(stack.indexer, ROOT / "knowledge" / "sample", source="sample")
        cases = load_cases()
        graph = build_graph(InMemorySaver())
        print(f"{len(cases)} cases, retriever {stack.backend}; default min_coverage {MIN_COVERAGE}")
        print(f"{'min_coverage':>12} {'facts':>7} {'citation':>9} {'abst. P':>8} {'abst. R':>8} {'abst. F1':>9}")
        for threshold in thresholds:
            model = ExtractiveChatModel(min_coverage=threshold)

            def context(variant: str, case: Case, model: ExtractiveChatModel = model) -> ChatContext:
                return ChatContext(store_id="eval", audience=case.audience, model=model, retriever=stack.retriever,
                                   k=4, prompt_variant=variant)

            (report,) = await evaluate_variants(graph, cases, ["v1"], 3, context)
            f = report.figures()
            print(f"{threshold:>12.2f} {f['facts']:>7.3f} {f['citation']:>9.3f} {f['abstention_precision']:>8.3f} "
                  f"{f['abstention_recall']:>8.3f} {f['abstention_f1']:>9.3f}")
    finally:
        await pool.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--thresholds", type=float, nargs="+",
                        default=[0.0, 0.1, 0.15, 0.2, 0.25, 0.3, 0.34, 0.4, 0.45, 0.5, 0.6])
    args = parser.parse_args()
    server = start_embedded(Path(tempfile.mkdtemp(prefix="sixshop-bench-pg-")) / "data", delete_on_exit=True)
    try:
        asyncio.run(sweep(embedded_conninfo(server), args.thresholds))
    finally:
        server.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
