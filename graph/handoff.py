"""Handing a shopper to a person (issue "each store's own assistant").

The graph routes to its `handoff` node when the shopper asks for a person (the rule below, in Korean and English;
with a language model, also the model, through the `request_human` tool it is offered) or when the assistant has
had to say it does not know twice in a row. The node tells the shopper a person will reply — outside the store's
handoff hours, when — and `wait_for_operator` calls `interrupt()`: the thread stops there, the service marks the
session `handoff`, and no bot turn runs until an operator releases it, which resumes the graph with
`Command(resume={"messages": [...]})` carrying what the shopper and the operator wrote meanwhile, so the next
answer has the whole conversation.
"""

from __future__ import annotations

import re
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from graph.text import is_korean

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
UNANSWERED_LIMIT = 2  # "I don't know" this many times in a row hands the shopper to a person

# Asking for a person: a word for one, then a word of reaching them. "상담원 운영시간" (asking about the hours)
# is not a request; "상담원 연결해 주세요", "사람이랑 얘기하고 싶어요", "talk to a human" are.
_PERSON_KO = r"(?:상담원|상담사|상담 ?직원|직원|사람|담당자|매니저|실제 ?사람|고객 ?센터|고객센타|상담)"
_REACH_KO = (r"(?:연결|바꿔|바꾸|불러|대화|통화|얘기|이야기|애기|상담\s*(?:하고|받고|원|요청|부탁|해)|"
             r"문의\s*하고|랑\s*할래|이랑\s*할래|과\s*할래|하고\s*싶|원해|주세요|부탁)")
_ASKS_KO = re.compile(rf"{_PERSON_KO}\s*(?:분|님)?\s*(?:이랑|랑|하고|과|와|한테|에게|께|을|를|으로|로|이|가|좀|님)?\s*"
                      rf"(?:좀\s*)?{_REACH_KO}")
_ALONE_KO = re.compile(r"^\s*(?:상담원|상담사|사람|직원|담당자)\s*(?:님|이요|요|좀|!|\?|\.)*\s*$")
_HUMAN_EN = r"(?:a |an |the |some |real |actual |live )*(?:human|person|people|someone|somebody|agent|" \
            r"representative|rep|operator|staff|employee|support team|customer service)"
_ASKS_EN = re.compile(
    rf"\b(?:talk|speak|chat|connect|transfer|put)\w*\s+(?:me\s+)?(?:to|with|through to)\s+{_HUMAN_EN}\b|"
    r"\b(?:real|actual|live)\s+(?:human|person|agent)\b|\bhuman\s+(?:agent|support|being)\b|"
    r"\b(?:want|need|get)\s+(?:a |an )?(?:human|person|representative|operator|agent)\b|"
    r"^\s*(?:human|agent|operator|representative)\s*(?:please|pls)?\s*[!.?]*\s*$",
    re.I)

# how an answer says the help centre does not hold what was asked (the offline answerer's words, and a model's
# usual ones under the passage-only rule)
_NOT_KNOWN = re.compile(
    r"찾지 못했|찾을 수 없|정보가 없|나와 있지 않|포함되어 있지 않|확인할 수 없|알 수 없|답변드리기 어렵|"
    r"could not find|couldn't find|can't find|cannot find|do not have|don't have|does not (?:contain|say|cover)|"
    r"doesn't (?:contain|say|cover)|not (?:in|covered by) the (?:help[- ]cent(?:re|er)|passages)|no information",
    re.I)

HANDOFF_NOTICE = {
    "ko": "상담원에게 연결해 드릴게요. 곧 상담원이 이 대화창에서 직접 답변드립니다.",
    "en": "I'm connecting you with a person from the store. They will reply here in this chat shortly.",
}
HANDOFF_LATER = {
    "ko": "상담원에게 연결해 드릴게요. 지금은 상담 시간이 아니어서, 상담원이 {when}에 이 대화창에서 답변드립니다.",
    "en": "I'm connecting you with a person from the store. It is outside their hours now; they will reply "
          "here from {when}.",
}
_DAY_NAMES = {"ko": ("월", "화", "수", "목", "금", "토", "일"), "en": ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")}


# greetings, thanks, acknowledgements: no question the help centre could have answered
_SMALL_TALK = re.compile(
    r"^\W*(?:hi+|hello|hey|yo|thanks?|thank you|thx|ty|ok(?:ay)?|k|yes|no|yep|nope|cool|great|bye|good ?bye|"
    r"안녕(?:하세요|하십니까)?|ㅎㅇ|하이|감사(?:합니다|해요)?|고마워(?:요)?|ㄱㅅ|네|넵|예|응|ㅇㅋ|오케이|알겠(?:습니다|어요)|"
    r"좋아요|잘 ?있어요)\W*(?:\s+\w+)?\W*$", re.I)


def is_small_talk(text: str) -> bool:
    """A greeting or a thank-you: an answer that found nothing for it is no sign the shopper needs a person."""
    return bool(_SMALL_TALK.match(text.strip()))


def asks_for_person(text: str) -> bool:
    """Whether the shopper asks to be put through to a person (the rule; a model may recognise more)."""
    return bool(_ASKS_KO.search(text) or _ALONE_KO.match(text) or _ASKS_EN.search(text))


def said_not_known(answer: str) -> bool:
    """Whether an answer says the help centre does not hold what was asked."""
    return bool(_NOT_KNOWN.search(answer))


def opens_at(hours: dict[str, Any] | None, now: datetime) -> datetime | None:
    """When operators are next in (`now` itself while they are); None: no hours set, always open.
    `hours` is a store's handoff_hours: {"timezone", "days": ["mon", ...], "from": "09:00", "to": "18:00"}."""
    if not hours:
        return None
    zone = ZoneInfo(str(hours["timezone"]))
    local = now.astimezone(zone)
    start, end = time.fromisoformat(hours["from"]), time.fromisoformat(hours["to"])
    for ahead in range(8):
        day = (local + timedelta(days=ahead)).date()
        if DAYS[day.weekday()] not in hours["days"]:
            continue
        opening = datetime.combine(day, start, zone)
        closing = datetime.combine(day, end, zone)
        if ahead == 0 and opening <= local < closing:
            return now
        if opening > local:
            return opening
    return None  # validated hours name at least one day: not reached


def operator_hours_open(hours: dict[str, Any] | None, now: datetime) -> bool:
    at = opens_at(hours, now)
    return at is None or at <= now


def notice(language: str, hours: dict[str, Any] | None, now: datetime) -> str:
    """What the shopper is told on handoff, in their language: a person will reply (outside hours: from when)."""
    lang = language if language in HANDOFF_NOTICE else "en"
    at = opens_at(hours, now)
    if at is None or at <= now:
        return HANDOFF_NOTICE[lang]
    day = _DAY_NAMES[lang][at.weekday()]
    when = (f"{at.month}월 {at.day}일({day}) {at:%H:%M}" if lang == "ko"
            else f"{day} {at.day} {at:%b} at {at:%H:%M} ({hours['timezone'] if hours else 'UTC'})")
    return HANDOFF_LATER[lang].format(when=when)


def language_of(question: str, preferred: str | None) -> str:
    """The shopper's language for the notice: what they wrote in, else the store's preferred one."""
    if question.strip():
        return "ko" if is_korean(question) else "en"
    return preferred or "ko"
