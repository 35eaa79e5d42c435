"""Quality on labelled questions.

- Retrieval: hit@k on tests/retrieval_pairs.json (bench/retrieval.py prints it, tests/test_retrieval_quality.py
  holds a floor).
- Answers: `sixshop-agent eval` runs knowledge/eval/cases.json through the graph per prompt variant and reports
  retrieval hit@k and MRR, required facts in the answer, the page the answer points to, abstention on questions
  the help centre cannot answer, seller pages shown in shopper sessions, and latency.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

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


# -- answers: `sixshop-agent eval` ------------------------------------------------------------------------

EVAL_CASES = Path(__file__).resolve().parents[2] / "knowledge" / "eval" / "cases.json"
SELLER_PAGES = frozenset({"en/store-setup.md", "ko/store-setup.md"})
# how an answer says the help centre does not have it: the offline answerer's sentences, and the usual
# phrasings of a model told to say so (prompts v1/v2)
ABSTAINS = re.compile(
    r"could ?n[o']t find|can ?n[o']t find|cannot find|not able to find|unable to find|do(?:es)? ?n[o']t "
    r"(?:have|contain|mention|say)|no information|not (?:covered|mentioned|included) in|"
    r"찾지 못|찾을 수 없|정보가 없|나와 있지 않|안내되어 있지 않|포함되어 있지 않|확인되지 않", re.I)


# how the offline answerer says it quotes the closest section rather than an answer (graph/models.py)
CLOSEST = re.compile(r"가장 가까운 안내는|The closest our help centre comes", re.I)


@dataclass(frozen=True)
class Case:
    id: str
    kind: str  # single | follow-up | unanswerable | seller | confusable | support | person
    turns: tuple[str, ...]  # the shopper's messages; the last is the one judged
    pages: tuple[str, ...]  # pages that answer it ("en/returns.md"); none: the right answer is to say so
    facts: tuple[tuple[str, ...], ...]  # each fact: its alternatives
    audience: str = "shopper"
    section: str | None = None  # the heading of the section that answers it, where the set names one
    # whether the shopper must be handed to a person (True: a request for one; False: a question about the support
    # team, answered from the help centre); None: not judged (the case runs with the handoff off)
    handoff: bool | None = None

    @property
    def answerable(self) -> bool:
        return bool(self.pages)

    @property
    def judged_on_abstention(self) -> bool:
        """Answerable cases, and the questions the help centre cannot answer; not the requests for a person, which
        are judged on the handoff alone."""
        return self.answerable or not self.handoff


def load_cases(path: Path = EVAL_CASES) -> list[Case]:
    data = json.loads(path.read_text(encoding="utf-8"))
    cases = []
    for raw in data["cases"]:
        page = raw.get("page")
        pages = tuple(page) if isinstance(page, list) else ((page,) if page else ())
        facts = tuple(tuple(f) if isinstance(f, list) else (f,) for f in raw.get("facts", []))
        handoff = raw.get("handoff")
        if handoff is None and raw["kind"] in ("support", "person"):
            handoff = raw["kind"] == "person"
        cases.append(Case(raw["id"], raw["kind"], tuple(raw["turns"]), pages, facts, raw.get("audience", "shopper"),
                          raw.get("section"), handoff))
    return cases


def normalized(text: str) -> str:
    """For matching facts: lower case, no whitespace, no thousands separators ("6,000 원" = "6000원")."""
    return re.sub(r"\s+", "", re.sub(r"(?<=\d),(?=\d)", "", text.lower()))


def facts_present(answer: str, facts: tuple[tuple[str, ...], ...]) -> bool:
    said = normalized(answer)
    return all(any(normalized(alt) in said for alt in fact) for fact in facts)


def page_of(passage_id: str) -> str:
    """`sample:en/returns.md#2` → `en/returns.md`."""
    doc = passage_id.rsplit("#", 1)[0]
    return doc.split(":", 1)[1] if ":" in doc else doc


@dataclass
class CaseResult:
    case: Case
    answer: str
    pages: list[str]  # of the retrieved passages, in rank order
    titles: list[str]
    latency_ms: float
    handed_off: bool = False  # the graph handed the shopper to a person (only cases with `handoff` run with it on)
    search_query: str = ""  # what the last turn was searched for (a follow-up made to stand alone)

    @property
    def abstained(self) -> bool:
        return not self.handed_off and bool(ABSTAINS.search(self.answer))

    @property
    def hedged(self) -> bool:
        """The answer quotes the closest section and says that it is the closest, not the answer."""
        return not self.abstained and bool(CLOSEST.search(self.answer))

    @property
    def cited_title(self) -> str | None:
        """The title of the passage the answer quotes (the top passage's when it names none); None when it
        abstained or nothing was retrieved."""
        if self.abstained or not self.pages:
            return None
        return next((t for t in self.titles if t and t in self.answer), self.titles[0])

    @property
    def section_ok(self) -> bool | None:
        """Whether the answer quotes the section the case names (its heading, the last part of a passage's title);
        None when the case names none."""
        if not self.case.section:
            return None
        title = self.cited_title
        return title is not None and title.rsplit(" › ", 1)[-1].strip() == self.case.section

    @property
    def rank(self) -> int | None:
        """1-based rank of the first passage from a page that answers the case."""
        return next((i for i, p in enumerate(self.pages, start=1) if p in self.case.pages), None)

    @property
    def cited_page(self) -> str | None:
        """The page the answer names (a passage title it quotes), else the top passage's: what the shopper is
        pointed to. None when it abstained or nothing was retrieved."""
        if self.abstained or not self.pages:
            return None
        for page, title in zip(self.pages, self.titles, strict=True):
            if title and title in self.answer:
                return page
        return self.pages[0]

    @property
    def facts_ok(self) -> bool:
        return self.case.answerable and not self.abstained and facts_present(self.answer, self.case.facts)


def _share(hits: int, total: int) -> float:
    return hits / total if total else 0.0


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


@dataclass
class VariantReport:
    variant: str
    k: int
    results: list[CaseResult] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        answerable = [r for r in self.results if r.case.answerable]
        followups = [r for r in answerable if r.case.kind == "follow-up"]
        hits = [r for r in answerable if r.rank is not None and r.rank <= self.k]
        judged = [r for r in self.results if r.case.judged_on_abstention]
        abstained = [r for r in judged if r.abstained]
        unanswerable = [r for r in judged if not r.case.answerable]
        sectioned = [r for r in answerable if r.section_ok is not None]
        support = [r for r in self.results if r.case.handoff is False]
        person = [r for r in self.results if r.case.handoff is True]
        precision = _share(sum(not r.case.answerable for r in abstained), len(abstained))
        recall = _share(sum(r.abstained for r in unanswerable), len(unanswerable))
        latencies = [r.latency_ms for r in self.results]
        return {
            "variant": self.variant,
            "cases": len(self.results),
            f"hit@{self.k}": round(_share(len(hits), len(answerable)), 3),
            "mrr": round(sum(1 / r.rank for r in answerable if r.rank) / len(answerable), 3) if answerable else 0.0,
            f"followup_hit@{self.k}": round(_share(sum(r in hits for r in followups), len(followups)), 3),
            "facts": round(_share(sum(r.facts_ok for r in answerable), len(answerable)), 3),
            "citation": round(_share(sum(r.cited_page in r.case.pages for r in answerable), len(answerable)), 3),
            "abstention_precision": round(precision, 3),
            "abstention_recall": round(recall, 3),
            "abstention_f1": round(2 * precision * recall / (precision + recall), 3) if precision + recall else 0.0,
            # answerable questions answered "not found"
            "false_declines": round(_share(sum(r.abstained for r in answerable), len(answerable)), 3),
            # answers that quote the closest section and say so, on answerable questions and on the others (a hedge
            # is not an abstention above: it shows a section)
            "hedged_answerable": round(_share(sum(r.hedged for r in answerable), len(answerable)), 3),
            "hedged_unanswerable": round(_share(sum(r.hedged for r in unanswerable), len(unanswerable)), 3),
            # questions the help centre cannot answer that were not answered as if it could: declined, or the closest
            # section quoted and said to be the closest
            "unanswerable_not_passed_off": round(
                _share(sum(r.abstained or r.hedged for r in unanswerable), len(unanswerable)), 3),
            "section": round(_share(sum(bool(r.section_ok) for r in sectioned), len(sectioned)), 3),
            # questions about the support team handed to a person (should be none), requests for one that were
            "handoff_on_support": sum(r.handed_off for r in support),
            "handoff_on_person": round(_share(sum(r.handed_off for r in person), len(person)), 3),
            # shopper sessions shown a seller page: retrieved for the model, not only cited
            "seller_pages_in_shopper_answers": sum(
                1 for r in self.results if r.case.audience == "shopper" and set(r.pages) & SELLER_PAGES),
            "latency_ms_p50": round(_pct(latencies, 0.5), 1),
            "latency_ms_p95": round(_pct(latencies, 0.95), 1),
        }

    def misses(self) -> list[str]:
        out = []
        for r in self.results:
            wrong = []
            if r.case.answerable and (r.rank is None or r.rank > self.k):
                wrong.append(f"page not in top {self.k} (got {r.pages[: self.k]})")
            if r.case.answerable and not r.facts_ok:
                wrong.append("facts missing" if not r.abstained else "abstained")
            if r.section_ok is False:
                wrong.append(f"section {r.cited_title!r} instead of {r.case.section!r}")
            if r.case.judged_on_abstention and not r.case.answerable and not r.abstained:
                wrong.append("answered instead of saying it does not know")
            if r.case.handoff is not None and r.handed_off != r.case.handoff:
                wrong.append("handed to a person" if r.handed_off else "not handed to a person")
            if wrong:
                out.append(f"{r.case.id} {' / '.join(r.case.turns)!r}: {'; '.join(wrong)} → {r.answer[:120]!r}")
        return out


def retrieval_legs(retriever: BaseRetriever) -> dict[str, BaseRetriever]:
    """The rankings to compare: each leg of a fused retriever alone (its `name`: the vector store's, postgres-fts),
    and the fused one; a retriever of one leg is that leg alone."""
    from graph.retrieval import HybridRetriever

    if isinstance(retriever, HybridRetriever):
        legs = {str(r.name or type(r).__name__): r for r in retriever.retrievers}
        return {**legs, "fused": retriever}
    return {str(retriever.name or type(retriever).__name__): retriever}


def ranking_figures(ranked: Sequence[tuple[Case, Sequence[Any]]], k: int) -> dict[str, float]:
    """hit@1, hit@k and MRR of rankings (each case with the passages found for it, best first; a passage's id names
    its page)."""
    first = top = 0
    reciprocal = 0.0
    for case, found in ranked:
        pages = [page_of(str(d.id or "")) for d in found]
        rank = next((i for i, p in enumerate(pages, start=1) if p in case.pages), None)
        first += rank == 1
        top += rank is not None and rank <= k
        reciprocal += 1 / rank if rank else 0.0
    n = len(ranked) or 1
    return {"hit@1": first / n, f"hit@{k}": top / n, "mrr": reciprocal / n}


async def leg_figures(legs: dict[str, BaseRetriever], results: list[CaseResult], *, k: int, store_id: str | None
                      ) -> dict[str, dict[str, float]]:
    """hit@1, hit@k and MRR of each ranking on the answerable cases, each searched for what the graph searched for
    (a follow-up made to stand alone): where fusion helps, and where a leg alone would do better."""
    answerable = [r for r in results if r.case.answerable and r.search_query]
    out: dict[str, dict[str, float]] = {}
    for name, leg in legs.items():
        ranked = [(r.case, await leg.ainvoke(r.search_query, k=k, store_id=store_id, audience=r.case.audience))
                  for r in answerable]
        out[name] = {key: round(value, 3) for key, value in ranking_figures(ranked, k).items()}
    return out


async def run_case(graph: Any, case: Case, context: Any) -> CaseResult:
    """The case's turns through the graph as the service runs a turn (same nodes and context), in a thread of
    its own; the last one is judged."""
    from langchain_core.messages import HumanMessage

    from graph.models import content_text

    config = {"configurable": {"thread_id": f"eval-{case.id}-{uuid4().hex[:8]}"}}
    # what is judged is the answer: a case whose turns could not be helped twice is not handed to a person here
    # (the handoff has its own tests, tests/test_handoff.py); a case that says whether it must be, runs with it on
    context = dataclasses.replace(context, handoff=case.handoff is not None)
    for earlier in case.turns[:-1]:
        await graph.ainvoke({"messages": [HumanMessage(content=earlier)]}, config, context=context)
    started = time.perf_counter()
    state = await graph.ainvoke({"messages": [HumanMessage(content=case.turns[-1])]}, config, context=context)
    latency_ms = (time.perf_counter() - started) * 1000
    passages = state.get("passages", [])
    handed_off = bool(state.get("__interrupt__") or state.get("handoff"))
    return CaseResult(case, content_text(state["messages"][-1].content), [page_of(p["id"]) for p in passages],
                      [p["title"] for p in passages], latency_ms, handed_off, str(state.get("search_query") or ""))


async def evaluate_variants(graph: Any, cases: list[Case], variants: list[str], k: int,
                            make_context: Any) -> list[VariantReport]:
    """Every case under every prompt variant; `make_context(variant, case)` gives the run's ChatContext."""
    reports = []
    for variant in variants:
        report = VariantReport(variant, k)
        for case in cases:
            report.results.append(await run_case(graph, case, make_context(variant, case)))
        reports.append(report)
    return reports


# -- the same in LangSmith: a dataset per version of the set, an experiment per prompt variant ------------------

def dataset_name(path: Path = EVAL_CASES) -> str:
    """The dataset's name carries a hash of the set's content: an unchanged set is uploaded once, an edited one
    becomes a new dataset (experiments stay comparable within one)."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return f"sixshop-eval-{digest}"


def ensure_dataset(client: Any, cases: list[Case], name: str) -> Any:
    """The dataset `name`, created with one example per case unless it exists (idempotent)."""
    if client.has_dataset(dataset_name=name):
        return client.read_dataset(dataset_name=name)
    dataset = client.create_dataset(name, description="sixshop-ai-agent evaluation set (knowledge/eval/cases.json)")
    client.create_examples(dataset_id=dataset.id, examples=[
        {"inputs": {"case_id": c.id, "turns": list(c.turns), "audience": c.audience},
         "outputs": {"pages": list(c.pages), "facts": [list(f) for f in c.facts], "kind": c.kind},
         "metadata": {"case_id": c.id, "kind": c.kind}}
        for c in cases])
    return dataset


def _result(case: Case, outputs: dict[str, Any]) -> CaseResult:
    return CaseResult(case, outputs["answer"], outputs["pages"], outputs["titles"], outputs["latency_ms"])


def row_evaluators(by_id: dict[str, Case], k: int) -> list[Any]:
    """Per-case feedback in LangSmith: the figures of VariantReport, case by case (None where one does not apply)."""

    def hit(inputs: dict[str, Any], outputs: dict[str, Any]) -> dict[str, Any]:
        result = _result(by_id[inputs["case_id"]], outputs)
        score = None if not result.case.answerable else int(result.rank is not None and result.rank <= k)
        return {"key": f"hit@{k}", "score": score}

    def reciprocal_rank(inputs: dict[str, Any], outputs: dict[str, Any]) -> dict[str, Any]:
        result = _result(by_id[inputs["case_id"]], outputs)
        score = None if not result.case.answerable else (1 / result.rank if result.rank else 0.0)
        return {"key": "reciprocal_rank", "score": score}

    def facts(inputs: dict[str, Any], outputs: dict[str, Any]) -> dict[str, Any]:
        result = _result(by_id[inputs["case_id"]], outputs)
        return {"key": "facts", "score": int(result.facts_ok) if result.case.answerable else None}

    def citation(inputs: dict[str, Any], outputs: dict[str, Any]) -> dict[str, Any]:
        result = _result(by_id[inputs["case_id"]], outputs)
        return {"key": "citation",
                "score": int(result.cited_page in result.case.pages) if result.case.answerable else None}

    def abstention(inputs: dict[str, Any], outputs: dict[str, Any]) -> dict[str, Any]:
        result = _result(by_id[inputs["case_id"]], outputs)
        return {"key": "abstention", "score": int(result.abstained == (not result.case.answerable))}

    return [hit, reciprocal_rank, facts, citation, abstention]


def correctness_judge(model: Any) -> Any:
    """openevals' LLM-as-judge with its CORRECTNESS_PROMPT, judging the answer against the facts the case names
    (or, for a question the help centre cannot answer, against saying so)."""
    from openevals.llm import create_async_llm_as_judge
    from openevals.prompts import CORRECTNESS_PROMPT

    judge = create_async_llm_as_judge(prompt=CORRECTNESS_PROMPT, judge=model, feedback_key="correctness")

    async def correctness(inputs: dict[str, Any], outputs: dict[str, Any],
                          reference_outputs: dict[str, Any]) -> Any:
        facts = ["/".join(f) for f in reference_outputs["facts"]]
        reference = (f"An answer from the help page(s) {', '.join(reference_outputs['pages'])} stating: "
                     f"{'; '.join(facts) or 'what the page says'}" if reference_outputs["pages"] else
                     "The help centre does not answer this: a correct answer says so and suggests contacting the "
                     "store, without inventing anything.")
        return await judge(inputs=" / ".join(inputs["turns"]), outputs=outputs["answer"], reference_outputs=reference)

    return correctness


async def evaluate_in_langsmith(client: Any, graph: Any, cases: list[Case], variants: list[str], k: int,
                                make_context: Any, *, name: str, revision: str, metadata: dict[str, Any],
                                judge: Any = None) -> tuple[list[VariantReport], list[str]]:
    """Each variant as a LangSmith experiment (`<variant>-<revision>`) on the set's dataset: every case through
    the graph as the target, the row evaluators above (and the judge, given a model) as feedback. Returns the
    same reports as `evaluate_variants` (from the very runs) and the experiments' names."""
    from langsmith.evaluation import aevaluate

    await asyncio.to_thread(ensure_dataset, client, cases, name)
    by_id = {c.id: c for c in cases}
    evaluators = row_evaluators(by_id, k) + ([correctness_judge(judge)] if judge is not None else [])
    reports, experiments = [], []
    for variant in variants:
        report = VariantReport(variant, k)

        async def target(inputs: dict[str, Any], variant: str = variant, report: VariantReport = report
                         ) -> dict[str, Any]:
            case = by_id[inputs["case_id"]]
            result = await run_case(graph, case, make_context(variant, case))
            report.results.append(result)
            return {"answer": result.answer, "pages": result.pages, "titles": result.titles,
                    "latency_ms": result.latency_ms}

        results = await aevaluate(target, data=name, evaluators=evaluators, client=client, max_concurrency=1,
                                  experiment_prefix=f"{variant}-{revision}",
                                  metadata={**metadata, "variant": variant, "revision": revision})
        experiments.append(results.experiment_name)
        report.results.sort(key=lambda r: list(by_id).index(r.case.id))
        reports.append(report)
    return reports, experiments
