"""How to fuse the dense and the full-text rankings: each leg alone and each way of fusing them, on every set.

    python bench/fusion.py [--depth 20] [--k 3] [--scale]

For each evaluation set (the sample help centre's sets, and the electronics shop's on an index of its own), every
answerable case is searched as the graph searches it offline (a follow-up read with the question before it,
graph/condense.py), once per leg with its scores, on a throwaway embedded PostgreSQL with the local embeddings
(what `serve` runs with no key). The fusions are then computed from those two rankings:

- `dense`, `fts`: a leg alone;
- `rrf`: reciprocal rank fusion, 1/(60 + rank) summed (the fusion before this bench);
- `score a=…`: score-aware fusion (graph/retrieval.py score_fusion), a·dense + (1-a)·full-text, each leg's score
  divided by its best in the list (a passage one leg did not find scores 0 there).

The weight `a` the service uses (RETRIEVAL_DENSE_WEIGHT's default) is chosen on knowledge/eval/cases.json alone;
the other sets only measure it.
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
from typing import Any

from langchain_core.documents import Document
from langchain_core.messages import HumanMessage

ROOT = Path(__file__).resolve().parent.parent

from bench._throwaway import help_centre  # noqa: E402
from graph.condense import needs_condensing, standalone_question  # noqa: E402
from graph.retrieval import reciprocal_rank_fusion, score_fusion  # noqa: E402
from server.integrations.evaluation import Case, load_cases, ranking_figures  # noqa: E402

SETS = [("cases", ROOT / "knowledge/eval/cases.json", ROOT / "knowledge/sample"),
        ("holdout", ROOT / "knowledge/eval/holdout.json", ROOT / "knowledge/sample"),
        ("holdout2", ROOT / "knowledge/eval/holdout2.json", ROOT / "knowledge/sample"),
        ("fresh", ROOT / "knowledge/eval/fresh.json", ROOT / "knowledge/sample"),
        ("electronics", ROOT / "knowledge/eval/electronics.json", ROOT / "knowledge/electronics")]
SCALE = ("scale", ROOT / "knowledge/eval/scale.json", ROOT / "knowledge/scale")  # 2,000 pages: ~9 min to index
WEIGHTS = (0.5, 0.6, 0.7, 0.8, 0.9)


def searched_for(case: Case) -> str:
    """What the graph searches for offline on the case's last turn."""
    messages = [HumanMessage(t) for t in case.turns]
    return standalone_question(messages) if needs_condensing(messages) else case.turns[-1]


async def rankings(knowledge: Path, cases: list[Case], depth: int) -> list[tuple[Case, list[Document],
                                                                                list[Document]]]:
    """Each answerable case with its dense and its full-text ranking (`depth` deep), on an index of `knowledge`."""
    async with help_centre(knowledge) as stack:
        dense, fulltext = stack.retriever.retrievers  # type: ignore[attr-defined]
        out = []
        for case in cases:
            if not case.answerable:
                continue
            query = searched_for(case)
            scope: dict[str, Any] = {"k": depth, "store_id": "eval", "audience": case.audience}
            out.append((case, await dense.ainvoke(query, **scope), await fulltext.ainvoke(query, **scope)))
        return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=20, help="how deep each leg searches before fusing")
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--scale", action="store_true", help="the scale set too (knowledge/scale, 2,000 pages)")
    args = parser.parse_args()
    rows: dict[str, dict[str, tuple[float, float, float]]] = {}
    for name, path, knowledge in [*SETS, *([SCALE] if args.scale else [])]:
        data = asyncio.run(rankings(knowledge, load_cases(path), args.depth))
        methods: dict[str, list[tuple[Case, list[Document]]]] = {
            "dense": [(c, d[: args.k]) for c, d, _ in data],
            "fts": [(c, f[: args.k]) for c, _, f in data],
            "rrf": [(c, reciprocal_rank_fusion([d, f], k=args.k)) for c, d, f in data],
        }
        for a in WEIGHTS:
            methods[f"score a={a}"] = [(c, score_fusion([d, f], [a, 1 - a], k=args.k)) for c, d, f in data]
        rows[name] = {m: tuple(ranking_figures(r, args.k).values()) for m, r in methods.items()}
        print(f"# {name}: {len(data)} answerable cases", file=sys.stderr)
    print(f"{'hit@1 hit@' + str(args.k) + ' mrr':<16}" + "".join(f"{n:>22}" for n in rows))
    for method in next(iter(rows.values())):
        print(f"{method:<16}" + "".join("{:>10.3f} {:.3f} {:.3f}".format(*rows[n][method]) for n in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
