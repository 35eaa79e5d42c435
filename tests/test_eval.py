"""The evaluation set (knowledge/eval/cases.json) and `sixshop-agent eval`, which runs it through the graph."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from server.integrations.evaluation import CaseResult, facts_present, load_cases, normalized
from tests.conftest import ROOT

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
    """The command on the offline default (no key): the figures for each variant asked for, holding the floors
    the offline default reaches (README, "Answer quality")."""
    env = {**os.environ, "DATABASE_URL": database_url, "OPENAI_API_KEY": "", "LANGSMITH_API_KEY": "",
           "LANGSMITH_TRACING": "false"}
    out = subprocess.run([sys.executable, "-m", "server.cli", "eval", "--json", "--variants", "v1,v2"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["cases"] == len(load_cases()) and report["model"] == "offline-extractive-v1"
    v1, v2 = report["variants"]
    assert (v1["variant"], v2["variant"]) == ("v1", "v2")
    for figures in (v1, v2):
        assert set(figures) >= {"hit@3", "mrr", "followup_hit@3", "facts", "citation", "abstention_precision",
                                "abstention_recall", "abstention_f1", "seller_pages_in_shopper_answers",
                                "latency_ms_p50", "latency_ms_p95"}
        assert figures["hit@3"] >= FLOORS["hit@3"] and figures["facts"] >= FLOORS["facts"], figures
        assert figures["followup_hit@3"] >= FLOORS["followup_hit@3"], figures
        assert figures["abstention_f1"] >= FLOORS["abstention_f1"], figures
        assert figures["seller_pages_in_shopper_answers"] <= FLOORS["seller_pages_in_shopper_answers"], figures
    bad = subprocess.run([sys.executable, "-m", "server.cli", "eval", "--variants", "nope"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown prompt variant" in bad.stderr


# what the offline default reaches today; raised as retrieval and the answerer improve (never lowered)
FLOORS = {"hit@3": 0.92, "facts": 0.82, "followup_hit@3": 0.9, "abstention_f1": 0.6,
          "seller_pages_in_shopper_answers": 0}
