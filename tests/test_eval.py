"""The evaluation set (knowledge/eval/cases.json) and `sixshop-agent eval`, which runs it through the graph."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

from server.integrations.evaluation import CaseResult, facts_present, load_cases, normalized
from tests.conftest import ROOT
from tests.fake_langsmith import API_KEY as LS_KEY
from tests.fake_langsmith import FakeLangSmithServer
from tests.fake_openai import FakeOpenAIServer

SAMPLE = ROOT / "knowledge" / "sample"


def test_the_set_is_worth_the_name() -> None:
    """≥ 150 cases in both languages, ≥ 25 follow-ups, ≥ 20 the help centre cannot answer, ≥ 10 in seller sessions,
    shopper questions worded like a seller page; every named page exists and states every required fact."""
    cases = load_cases()
    assert len(cases) >= 150 and len({c.id for c in cases}) == len(cases)
    korean = [c for c in cases if re.search(r"[\uac00-\ud7a3]", c.turns[-1])]
    assert len(korean) >= 60 and len(cases) - len(korean) >= 60
    assert sum(len(c.turns) > 1 for c in cases) >= 25
    assert sum(not c.answerable for c in cases) >= 20
    assert sum(c.audience == "seller" for c in cases) >= 10
    assert sum(c.kind == "confusable" for c in cases) >= 10
    for case in cases:
        for page in case.pages:
            text = (SAMPLE / page).read_text(encoding="utf-8")
            assert facts_present(text, case.facts), (case.id, case.facts)
        assert not case.answerable or case.facts or case.kind == "confusable", case.id


def test_the_held_out_sets_are_sound() -> None:
    """knowledge/eval/holdout.json and holdout2.json (docs/answer-quality.md): written apart from cases.json to
    check the vocabulary and abstention rules on questions they were not fitted to; dev-colloquial.json, the
    development set the answerer's thresholds are chosen on, written as shoppers type; the same checks of pages and
    facts, ids of their own, both languages, both kinds."""
    ids = {c.id for c in load_cases()}
    for name in ("holdout.json", "holdout2.json", "dev-colloquial.json"):
        cases = load_cases(ROOT / "knowledge" / "eval" / name)
        assert len({c.id for c in cases}) == len(cases) >= 40 and not ids & {c.id for c in cases}
        assert sum(not c.answerable for c in cases) >= 15 and sum(c.answerable for c in cases) >= 20
        assert sum(bool(re.search(r"[\uac00-\ud7a3]", c.turns[-1])) for c in cases) >= 15
        for case in cases:
            for page in case.pages:
                assert facts_present((SAMPLE / page).read_text(encoding="utf-8"), case.facts), (name, case.id)
            assert not case.answerable or case.facts, (name, case.id)
        ids |= {c.id for c in cases}


def test_the_fresh_sets_are_what_they_say() -> None:
    """knowledge/eval/fresh.json (the sample help centre) and electronics.json (a second help centre,
    knowledge/electronics/): written before the answer-quality work they measure, used only to measure. Every fact
    stands on the page named; the minimums the work was given hold."""
    seen = {c.id for name in ("cases.json", "holdout.json", "holdout2.json")
            for c in load_cases(ROOT / "knowledge" / "eval" / name)}
    electronics = ROOT / "knowledge" / "electronics"
    for name, root, least in (("fresh.json", SAMPLE, 200), ("electronics.json", electronics, 60)):
        cases = load_cases(ROOT / "knowledge" / "eval" / name)
        ids = {c.id for c in cases}
        assert len(ids) == len(cases) >= least and not ids & seen, name
        korean = sum(bool(re.search(r"[\uac00-\ud7a3]", c.turns[-1])) for c in cases)
        assert 0.45 <= korean / len(cases) <= 0.55, (name, korean)
        for case in cases:
            for page in case.pages:
                assert facts_present((root / page).read_text(encoding="utf-8"), case.facts), (name, case.id)
            assert not case.answerable or case.facts, (name, case.id)
        seen |= ids
    raw = json.loads((ROOT / "knowledge" / "eval" / "fresh.json").read_text(encoding="utf-8"))["cases"]
    kinds = Counter(c["kind"] for c in raw)
    assert kinds["unanswerable"] >= 40 and kinds["follow-up"] >= 30 and kinds["support"] + kinds["person"] >= 40
    per_section = Counter((c["page"].split("/")[1], c["section"]) for c in raw if c["kind"] in ("single", "seller"))
    assert len(per_section) >= 60 and min(per_section.values()) >= 3  # every section of both languages, 3 each
    assert all(c["handoff"] is (c["kind"] == "person") for c in raw if c["kind"] in ("support", "person"))
    assert len(list((ROOT / "knowledge" / "electronics" / "ko").glob("*.md"))) >= 8
    assert len(list((ROOT / "knowledge" / "electronics" / "en").glob("*.md"))) >= 8


def test_facts_and_abstention_are_read_as_written() -> None:
    assert normalized("왕복 배송비 6,000원이") == "왕복배송비6000원이"
    assert facts_present("It costs 3,000 KRW; free from 50000 KRW", (("3,000 KRW",), ("50,000 KRW",)))
    assert not facts_present("It costs 3,000 KRW", (("3,000 KRW",), ("50,000 KRW",)))
    assert facts_present("3-7 days", (("3 to 7", "3-7"),))
    (case,) = [c for c in load_cases() if c.id == "en-01"]
    said = CaseResult(case, "According to our help centre (Shipping and delivery › Shipping fees): 3,000 KRW.",
                      ["en/returns.md", "en/shipping.md"], ["Returns", "Shipping and delivery › Shipping fees"], 1.0)
    assert said.rank == 2 and said.cited_page == "en/shipping.md" and said.facts_ok and not said.abstained
    for text in ("Sorry, I could not find the answer to that in the help centre.",
                 "죄송합니다. 도움말 센터에서 이 질문에 대한 답을 찾지 못했습니다.",
                 "The passages don't mention gift cards."):
        assert CaseResult(case, text, [], [], 1.0).abstained, text


def test_eval_command_reports_every_figure_per_variant(database_url: str) -> None:
    """The command on the offline default (no key): every figure, holding the floors the offline default reaches
    (docs/answer-quality.md). One variant: the offline answerer reads no prompt's wording, so a second would only
    repeat the first (test_eval_runs_each_variant_as_a_langsmith_experiment reports two)."""
    env = {**os.environ, "DATABASE_URL": database_url, "OPENAI_API_KEY": "", "LANGSMITH_API_KEY": "",
           "LANGSMITH_TRACING": "false"}
    out = subprocess.run([sys.executable, "-m", "server.cli", "eval", "--json", "--variants", "v1"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["cases"] == len(load_cases()) and report["model"] == "offline-extractive-v1"
    (v1,) = report["variants"]
    assert v1["variant"] == "v1"
    for figures in (v1,):
        assert set(figures) >= {"hit@3", "mrr", "followup_hit@3", "facts", "citation", "abstention_precision",
                                "abstention_recall", "abstention_f1", "seller_pages_in_shopper_answers",
                                "latency_ms_p50", "latency_ms_p95", "false_declines", "section",
                                "handoff_on_support", "handoff_on_person", "hedged_answerable",
                                "hedged_unanswerable", "unanswerable_not_passed_off"}
        assert figures["hit@3"] >= FLOORS["hit@3"] and figures["facts"] >= FLOORS["facts"], figures
        assert figures["followup_hit@3"] >= FLOORS["followup_hit@3"], figures
        assert figures["false_declines"] <= FLOORS["false_declines"], figures
        assert figures["unanswerable_not_passed_off"] >= FLOORS["unanswerable_not_passed_off"], figures
        assert figures["seller_pages_in_shopper_answers"] <= FLOORS["seller_pages_in_shopper_answers"], figures
    # each ranking alone, on what the turns searched for: the fused one loses to neither leg
    legs = report["retrieval_legs"]
    assert set(legs) == {"pgvector", "postgres-fts", "fused"}, legs
    for figure in ("hit@1", "hit@3"):
        assert legs["fused"][figure] >= max(legs["pgvector"][figure], legs["postgres-fts"][figure]), legs
    bad = subprocess.run([sys.executable, "-m", "server.cli", "eval", "--variants", "nope"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown prompt variant" in bad.stderr


def test_eval_takes_another_help_centre(tmp_path: Path) -> None:
    """--knowledge: the second help centre indexed alone in a throwaway embedded PostgreSQL (no page of the sample
    in reach), its cases' pages relative to it; full-text retrieval here to keep it short."""
    picked = [c for c in json.loads((ROOT / "knowledge" / "eval" / "electronics.json").read_text())["cases"]
              if c["id"] in ("el-051", "el-053", "el-un-01")]  # words the full-text index holds
    dataset = tmp_path / "three.json"
    dataset.write_text(json.dumps({"cases": picked}, ensure_ascii=False), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "TEST_DATABASE_URL")}
    env.update({"OPENAI_API_KEY": "", "LANGSMITH_TRACING": "false", "EMBEDDINGS": "none", "VECTOR_STORE": "none"})
    out = subprocess.run([sys.executable, "-m", "server.cli", "eval", "--json", "--local", "--dataset", str(dataset),
                          "--knowledge", "knowledge/electronics"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["cases"] == 3 and report["knowledge"] == "knowledge/electronics"
    assert report["variants"][0]["hit@3"] == 1.0  # found on the electronics pages, the only ones indexed
    missing = subprocess.run([sys.executable, "-m", "server.cli", "eval", "--knowledge", "knowledge/nowhere"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "no such folder" in missing.stderr


# what the offline default reaches today; raised as retrieval and the answerer improve (never lowered). Abstention
# F1 (0.8 here before) gave way to declining only on evidence (docs/answer-quality.md): a question it cannot answer
# is declined, or answered with the closest section said to be the closest; what is held is that neither answerable
# questions are declined nor unanswerable ones passed off as answered
FLOORS = {"hit@3": 0.97, "facts": 0.92, "followup_hit@3": 0.95, "false_declines": 0.03,
          "unanswerable_not_passed_off": 0.8, "seller_pages_in_shopper_answers": 0}


def test_eval_runs_each_variant_as_a_langsmith_experiment(database_url: str, fake_openai: FakeOpenAIServer,
                                                            tmp_path: Path) -> None:
    """With LangSmith configured (the fake) the set is uploaded once as a dataset named by its content, each
    variant runs as an experiment `<variant>-<revision>` with the per-case figures as feedback, and with an OpenAI
    key (the fake) openevals' correctness judge scores every answer too."""
    cases = json.loads((ROOT / "knowledge" / "eval" / "cases.json").read_text(encoding="utf-8"))
    keep = {"en-01", "ko-10", "fu-02", "na-03", "se-05"}
    subset = tmp_path / "cases.json"
    subset.write_text(json.dumps({"cases": [c for c in cases["cases"] if c["id"] in keep]}), encoding="utf-8")
    with FakeLangSmithServer() as langsmith:
        env = {**os.environ, "DATABASE_URL": database_url, "OPENAI_API_KEY": "sk-local-test",
               "OPENAI_BASE_URL": fake_openai.base_url, "OPENAI_MAX_RETRIES": "0", "LANGSMITH_API_KEY": LS_KEY,
               "LANGSMITH_ENDPOINT": langsmith.api_url, "LANGSMITH_PROJECT": "sixshop-eval-test"}
        runs = []
        for _ in range(2):
            out = subprocess.run([sys.executable, "-m", "server.cli", "eval", "--json", "--variants", "v1,v2",
                                  "--dataset", str(subset)], cwd=ROOT, env=env, capture_output=True, text=True,
                                 timeout=300)
            assert out.returncode == 0, out.stderr[-3000:]
            runs.append(json.loads(out.stdout))
        (dataset,) = langsmith.datasets.values()  # the second run found it: uploaded once
        assert dataset["name"].startswith("sixshop-eval-") and dataset["example_count"] == len(keep)
        assert {e["inputs"]["case_id"] for e in langsmith.examples.values()} == keep
        names = [n for r in runs for n in r["langsmith_experiments"]]
        assert len(names) == 4 and len(set(names)) == 4
        assert [n.split("-")[0] for n in names] == ["v1", "v2", "v1", "v2"]
        experiments = {e["name"]: e for e in langsmith.experiments.values()}
        assert set(experiments) == set(names)
        assert all(e["reference_dataset_id"] == dataset["id"] for e in experiments.values())
        meta = experiments[names[0]]["extra"]["metadata"]
        assert meta["variant"] == "v1" and meta["revision"] and meta["model"] == runs[0]["model"]
        assert langsmith.wait_for(lambda s: {f.get("key") for f in s.feedback.values()} >= {
            "hit@3", "reciprocal_rank", "facts", "citation", "abstention", "correctness"}, timeout=20)
        judged = [f for f in langsmith.feedback.values() if f.get("key") == "correctness"]
        assert len(judged) >= len(keep) * 2
        assert any("I saw" in str(r.get("outputs", {}).get("answer", "")) for r in langsmith.runs.values()
                   if r.get("outputs"))  # the model's answers were traced as the experiment's runs
    assert runs[0]["variants"][0]["variant"] == "v1" and runs[0]["variants"][0]["cases"] == len(keep)


def test_the_scale_set_is_what_it_says() -> None:
    """knowledge/scale (2,000 pages of tldr-pages, CC BY 4.0, with its attribution) and knowledge/eval/scale.json
    (bench/make_scale_set.py): every question's pages exist, and the task it asks is on its own page."""
    scale = ROOT / "knowledge" / "scale"
    pages = sorted(scale.rglob("*.md"))
    assert len(pages) >= 2000 and "Creative Commons Attribution 4.0" in (scale / "NOTICE").read_text()
    cases = load_cases(ROOT / "knowledge" / "eval" / "scale.json")
    assert len(cases) >= 300 and len({c.turns[-1] for c in cases}) == len(cases)
    for case in cases:
        assert all((scale / page).is_file() for page in case.pages), case.id
        task = case.turns[-1].removeprefix("how do i ")
        assert task.lower() in (scale / case.pages[0]).read_text(encoding="utf-8").lower(), case.id
