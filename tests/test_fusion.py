"""How hybrid retrieval fuses its legs (graph/retrieval.py): by score, and what a source's score then says."""

from __future__ import annotations

from langchain_core.documents import Document

from graph.retrieval import reciprocal_rank_fusion, score_fusion, with_relevance


def _doc(key: str, score: float, **meta: float) -> Document:
    return Document(id=key, page_content=key, metadata={"score": score, **meta})


def test_a_lead_one_leg_sees_survives_score_fusion_and_not_rank_fusion() -> None:
    """The dense leg finds `a` far closer than anything else; full-text ranks it second, just behind `b`. Rank
    fusion ties them and puts the full-text leg's first on top; score fusion keeps the dense leg's lead."""
    dense = [_doc("a", 0.93, similarity=0.93), _doc("b", 0.80, similarity=0.80), _doc("c", 0.79, similarity=0.79)]
    fulltext = [_doc("b", 0.50), _doc("a", 0.48), _doc("d", 0.10)]
    assert reciprocal_rank_fusion([fulltext, dense], k=3)[0].id == "b"
    fused = score_fusion([dense, fulltext], [0.8, 0.2], k=4)
    assert [d.id for d in fused] == ["a", "b", "c", "d"]
    # a: 0.8·1 + 0.2·0.95; b: 0.8·(0.01/0.14) + 0.2·1; c: 0.8·0; d: 0.2·0
    assert abs(fused[0].metadata["fused"] - 0.99) < 1e-3 and fused[2].metadata["fused"] == 0.0
    assert fused[0].metadata["score"] == 0.93  # the first leg's score is kept, the fused one beside it


def test_a_sources_score_is_a_relevance_that_reads_the_same_for_every_passage() -> None:
    """The cosine where the dense leg found the passage; the dense leg's lowest cosine (a bound: the passage was not
    among its closest) where only full-text did. Never the rank-fusion constant (≈ 0.03)."""
    dense = [_doc("a", 0.91, similarity=0.91), _doc("b", 0.84, similarity=0.84)]
    fulltext = [_doc("c", 0.7), _doc("a", 0.6)]
    out = with_relevance(score_fusion([dense, fulltext], [0.5, 0.5], k=3), [dense, fulltext])
    scores = {d.id: (d.metadata["score"], d.metadata.get("similarity_bound", False)) for d in out}
    assert scores == {"a": (0.91, False), "b": (0.84, False), "c": (0.84, True)}
    assert all(0 <= d.metadata["score"] <= 1 for d in out)
    # no dense leg (full-text alone): its own 0–1 scores stand
    assert [d.metadata["score"] for d in with_relevance(fulltext, [fulltext])] == [0.7, 0.6]
