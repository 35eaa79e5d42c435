"""The search query of a turn, formed from the conversation (history-aware retrieval).

"And to Jeju?" or "배송비는 누가 내요?" only mean something after what was asked before. The graph's `condense`
node turns such a follow-up into a query that stands alone: with a language model, a short call with its own
prompt (graph/prompts.py CONDENSE_PROMPT); offline, the rule below, which carries the previous question's topic
into the follow-up. Neither runs on a session's first turn nor for a question that stands alone.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from langchain_core.messages import BaseMessage, HumanMessage

from graph.text import is_korean, terms

# how a follow-up starts, or words that point back to what was said
_FOLLOW_UP_EN = re.compile(
    r"^\s*(?:and|also|what about|how about|then|so|but|or|same|what if|if so|ok(?:ay)?|and if)\b", re.I)
_POINTS_BACK_EN = re.compile(r"\b(?:it|its|that|them|they|those|this one|there|one)\b", re.I)
_FOLLOW_UP_KO = re.compile(r"^\s*(?:그럼|그러면|그런데|근데|그건|그거|그게|그리고|또|그때|그 |이건|이거|저건|혹시 그)")
# English words that carry no topic (a question is elliptical when it has few others)
_FUNCTION_WORDS = frozenset(
    "a an and are as at be by can could do does did for from how i if in is it its my of on or our the this to was "
    "what when where which who why will with you your me we im i'm get got have has had much many long does "
    "should would there their them they that those then so but also about just please pls u ur".split()
)
_ENGLISH_WORD = re.compile(r"[a-z0-9']+")


def _text(message: BaseMessage) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    return "".join(str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in content)


def user_questions(messages: Sequence[BaseMessage]) -> list[str]:
    return [_text(m) for m in messages if isinstance(m, HumanMessage)]


def is_follow_up(question: str) -> bool:
    """Whether a question leans on what came before: it starts like a follow-up, points back ("it", "그거"), or
    is too short to name its own topic (at most three words besides function words; three Korean words)."""
    if is_korean(question):
        if _FOLLOW_UP_KO.search(question):
            return True
        return len(re.findall(r"[^\s?!.~ㅠㅜ]+", question)) <= 3
    if _FOLLOW_UP_EN.search(question) or _POINTS_BACK_EN.search(question):
        return True
    content = [w for w in _ENGLISH_WORD.findall(question.lower()) if w not in _FUNCTION_WORDS]
    return len(content) <= 3


def standalone_question(messages: Sequence[BaseMessage]) -> str:
    """The offline rule: the last question, with the previous question (itself made standalone) in front when it
    is a follow-up. The retriever searches for every term of both (an OR query), ranking sections that match
    the follow-up and its topic together first."""
    questions = user_questions(messages)
    if not questions:
        return ""
    query = questions[0]
    for question in questions[1:]:
        query = f"{query} {question}" if is_follow_up(question) and terms(query) else question
    return query


def speaks_of(question: str, text: str) -> bool:
    """Whether `text` contains a content term of `question`: a search made with a follow-up's carried-over topic
    that finds nothing about the follow-up itself was a topic switch, not a follow-up ("how much is shipping",
    then "do you take kakaopay")."""
    from graph.models import question_terms  # the answerer's terms, without the words of asking

    wanted = question_terms(question)
    return not wanted or bool(wanted & terms(text))


def needs_condensing(messages: Sequence[BaseMessage]) -> bool:
    """A turn after the first whose question is a follow-up."""
    questions = user_questions(messages)
    return len(questions) > 1 and is_follow_up(questions[-1])
