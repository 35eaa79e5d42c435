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

from graph.text import is_korean, korean_tokens, one_edit

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
UNANSWERED_LIMIT = 2  # "I don't know" this many times in a row hands the shopper to a person

# Asking for a person, read from the message's structure rather than matched against phrases (asks_for_person):
# it names a person of the store, asks to talk with one (a verb of talking or connecting, or a wish) and asks nothing
# about the support team itself (its hours, days, number, address: those are answered from the help centre). Korean is
# read in Kiwi's morphemes, so spacing and endings (반말, 존댓말) do not matter; English words are matched with one typo
# allowed. The word sets are of kinds (people, talking, wishing, details), not of sentences.
PERSON_KO = frozenset("""
상담원 상담사 상담 직원 사람 담당자 매니저 운영자 관리자 인간 판매자 사장 사장님 상담직원 실제사람
""".split())
TALK_KO = frozenset("연결 바꾸 바꿔 부르 대화 통화 얘기 이야기 말하 채팅 상담 묻 물어보 요청 넘기 연결하".split())
WISH_KO = frozenset("싶 원하 부탁 주 줘 해주 드리 가능 되 있".split())
# what a question about the support team asks: when, which days, which number or address
DETAILS_KO = frozenset("""
시간 몇 시 언제 번호 전화번호 연락처 이메일 메일 주소 위치 어디 운영 주말 평일 요일
월요일 화요일 수요일 목요일 금요일 토요일 일요일 공휴일 휴일 휴무 점심 방법 까지 부터 몇시
""".split())
BOT_KO = frozenset("봇 챗봇 로봇 AI 기계 자동".split())
PERSON_EN = ("human", "person", "people", "someone", "somebody", "agent", "representative", "rep", "operator",
             "staff", "employee", "manager", "humans", "agents", "representatives", "operators")
SUPPORT_EN = ("support", "service", "team", "helpdesk", "desk")  # "customer service": a person only when reached for
TALK_EN = ("talk", "speak", "chat", "connect", "transfer", "escalate")
_THROUGH_EN = re.compile(r"\b(?:put|pass|hand|switch|forward)\w*\s+(?:me|this|us)\s+(?:through|over|on)\b")
WISH_EN = ("want", "need", "like", "can", "could", "may", "let", "get", "give", "please", "pls", "plz", "wanna")
DETAILS_EN = ("hours", "hour", "time", "when", "open", "opens", "close", "closes", "closing", "until", "till", "number",
              "phone", "email", "e-mail", "address", "weekend", "weekends", "saturday", "saturdays", "sunday",
              "sundays", "holiday", "holidays", "lunch", "contact", "reach", "days", "day")
FILLER_EN = frozenset("a an the some real actual live now please pls plz i me you to with just only not no bot chatbot "
                      "ai robot machine hey hi hello ok want need stop is there any".split())
_EN_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
_KO_TAGS_NOUN = frozenset({"NNG", "NNP", "NNB", "NR", "SL", "NP"})
_KO_TAGS_CONTENT = _KO_TAGS_NOUN | {"VV", "VA", "XR"}


def _near(word: str, words: tuple[str, ...]) -> bool:
    """The word, or within one edit of one (a typo: "humna", "reprsentative"), for words of five letters or more."""
    if word in words:
        return True
    return len(word) >= 5 and any(len(w) >= 5 and one_edit(word, w) for w in words)


def _asks_in_korean(text: str) -> bool:
    tokens = [(form, tag) for form, tag in korean_tokens(text)]
    forms = {form for form, _ in tokens}
    spaced = text.replace(" ", "")
    if not (forms & PERSON_KO or any(p in spaced for p in ("실제사람", "진짜사람", "상담원", "상담사"))):
        return False
    # a detail, alone or inside a compound noun ("점심시간", "운영시간"); never read from an ending (the honorific 시 of
    # "연결해 주시겠어요" is not an hour)
    words = {form for form, tag in tokens if not tag.startswith("E")}
    if words & DETAILS_KO or any(d in form for form in words for d in DETAILS_KO if len(d) > 1):
        return False
    if forms & TALK_KO - {"상담"} or ("상담" in forms and forms & WISH_KO and not forms & {"시간"}):
        return True
    # nothing named but a person (and perhaps the bot not wanted): "상담원", "사람이요", "챗봇 말고 사람",
    # "진짜 사람 없어요?"
    others = {form for form, tag in tokens if tag in _KO_TAGS_CONTENT} - PERSON_KO - BOT_KO - WISH_KO \
        - {"말", "말고", "없", "진짜", "좀", "제발", "그냥", "빨리", "지금", "실제", "저", "나"}
    return not others


def _asks_in_english(text: str) -> bool:
    words = _EN_WORD.findall(text.lower().replace("’", "'"))
    if not words:
        return False
    person = any(_near(w, PERSON_EN) for w in words)
    support = any(w in SUPPORT_EN for w in words)
    if not (person or support) or any(w in DETAILS_EN for w in words):
        return False
    # "talk to a human", "connect me to customer service", "put me through to support"
    if any(_near(w, TALK_EN) for w in words) or _THROUGH_EN.search(text.lower()):
        return True
    # nothing but a person, and perhaps a wish: "human please", "i need a real person", "can you get me a human"
    return person and all(w in FILLER_EN or w in WISH_EN or w.endswith("'d") or _near(w, PERSON_EN) for w in words)


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
    """Whether the shopper asks to be put through to a person (the rule; a model may recognise more): "상담원 연결해
    주세요", "사람이랑 얘기하고 싶어요", "talk to a human", "can I speak to an agent" do; "상담원 몇 시까지 해요?",
    "what is your support phone number" ask about the support team and are answered from the help centre."""
    if not text.strip():
        return False
    return _asks_in_korean(text) if is_korean(text) else _asks_in_english(text)


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
