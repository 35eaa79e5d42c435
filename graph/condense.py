"""The search query of a turn, formed from the conversation (history-aware retrieval).

"And to Jeju?" or "배송비는 누가 내요?" only mean something after what was asked before. The graph's `condense`
node turns such a follow-up into a query that stands alone: a question that plainly points back ("and...",
"it", "그럼...") is rewritten by the language model when there is one, in a short call with its own prompt
(graph/prompts.py CONDENSE_PROMPT); a merely short one, and any follow-up offline, by the rule below, which
carries the previous question's topic into it. Nothing runs on a session's first turn nor for a question that
stands alone, so a turn pays for a model call only when its question needs one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from langchain_core.messages import BaseMessage, HumanMessage

from graph.text import ASKING_NOUNS_KO, is_korean, korean_nouns, question_terms, terms

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


def _korean_shape(question: str) -> tuple[int, int]:
    """(words, nouns besides the asking ones) of a Korean question."""
    words = re.findall(r"[^\s?!.~ㅠㅜ]+", question)
    return len(words), len([n for n in korean_nouns(question) if n not in ASKING_NOUNS_KO])


def points_back(question: str) -> bool:
    """Whether a question plainly cannot stand alone: it starts like a follow-up ("and", "what about", "그럼"),
    points back ("it", "that", "그거"), or in Korean is two words or names nothing. These are worth a model call
    to rewrite (CONDENSE_PROMPT) when there is a model."""
    if is_korean(question):
        words, nouns = _korean_shape(question)
        return bool(_FOLLOW_UP_KO.search(question)) or words <= 2 or nouns == 0
    return bool(_FOLLOW_UP_EN.search(question) or _POINTS_BACK_EN.search(question))


def is_follow_up(question: str) -> bool:
    """Whether a question may lean on what came before: it points back (above), or names at most one thing of
    its own (one English content word; in Korean one noun, in at most four words): "how long do i have to pay",
    "배송비는 누가 내요?". Such a short question is searched with the previous one by the rule (no model call:
    "How much is shipping?" is short too, and stands alone), and the search falls back on the question alone
    when the carried topic drowns it (speaks_of)."""
    if points_back(question):
        return True
    if is_korean(question):
        words, nouns = _korean_shape(question)
        return nouns <= 1 and words <= 4
    content = [w for w in _ENGLISH_WORD.findall(question.lower()) if w not in _FUNCTION_WORDS and len(w) > 1]
    return len(content) <= 1


def standalone_question(messages: Sequence[BaseMessage]) -> str:
    """The rule: the last question, with the one before it in front when it is a follow-up (only that one: a
    chain of short questions does not pile up). The retriever searches for every term of both (an OR query),
    ranking sections that match the follow-up and its topic together first."""
    questions = user_questions(messages)
    if not questions:
        return ""
    last = questions[-1]
    if len(questions) > 1 and is_follow_up(last) and terms(questions[-2]):
        return f"{questions[-2]} {last}"
    return last


def speaks_of(question: str, text: str) -> bool:
    """Whether `text` contains a content term of `question`: a search made with a follow-up's carried-over topic
    that finds nothing about the follow-up itself was a topic switch, not a follow-up ("how much is shipping",
    then "do you take kakaopay")."""
    wanted = question_terms(question)
    return not wanted or bool(wanted & terms(text))


def needs_condensing(messages: Sequence[BaseMessage]) -> bool:
    """A turn after the first whose question may be a follow-up (the rule applies)."""
    questions = user_questions(messages)
    return len(questions) > 1 and is_follow_up(questions[-1])


def worth_a_model_call(messages: Sequence[BaseMessage]) -> bool:
    """A turn after the first whose question plainly points back: the model rewrites it."""
    questions = user_questions(messages)
    return len(questions) > 1 and points_back(questions[-1])
