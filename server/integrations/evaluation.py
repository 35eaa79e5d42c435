"""Retrieval quality on labelled questions: hit@k (is the answering page among the top k passages?).

Used by bench/retrieval.py (prints the figures) and tests/test_retrieval_quality.py (holds a floor).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from langchain_core.retrievers import BaseRetriever


@dataclass(frozen=True)
class Pair:
    question: str
    doc_id: str  # the page that answers it, as indexed (e.g. "sample:en/returns.md")


@dataclass
class HitReport:
    k: int
    hits: int = 0
    total: int = 0
    misses: list[tuple[str, str, list[str]]] = field(default_factory=list)  # question, expected, got

    @property
    def value(self) -> float:
        return self.hits / self.total if self.total else 0.0


def load_pairs(path: Path, source: str = "sample") -> list[Pair]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return [Pair(p["q"], f"{source}:{p['page']}") for p in data["pairs"]]


async def hit_at_k(retriever: BaseRetriever, pairs: list[Pair], *, k: int = 3, store_id: str | None = "eval"
                   ) -> HitReport:
    report = HitReport(k=k)
    for pair in pairs:
        found = await retriever.ainvoke(pair.question, k=k, store_id=store_id)
        pages = [str(d.metadata.get("doc_id")) for d in found]
        report.total += 1
        if pair.doc_id in pages[:k]:
            report.hits += 1
        else:
            report.misses.append((pair.question, pair.doc_id, pages))
    return report
