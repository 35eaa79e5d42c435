"""Language-aware text helpers shared by the full-text index and the offline answerer."""

from __future__ import annotations

import functools
import re
import threading
from typing import Any

import snowballstemmer

from graph.lexicon import help_centre_words

_HANGUL_RUN = re.compile(r"[\uac00-\ud7a3]+")
_HANGUL_CHAR = re.compile(r"[\uac00-\ud7a3]")
_LATIN_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset(
    "a an and are as at be by can do does did for from how i if in is it my of on or our the this to "
    "was what when where which who why will with you your me we about that those these there have has had "
    "been would could should any some than then just also very not no yes please pls im u".split()
)


def hangul_bigrams(text: str) -> list[str]:
    """Character bigrams of each Hangul run; a one-syllable run stays whole."""
    grams: list[str] = []
    for run in _HANGUL_RUN.findall(text):
        if len(run) == 1:
            grams.append(run)
        else:
            grams.extend(run[i : i + 2] for i in range(len(run) - 1))
    return grams


# How Korean is cut for the full-text index (KOREAN_ANALYZER): Hangul character bigrams, Kiwi's morphemes, or both
ANALYZERS = ("bigrams", "kiwi", "kiwi+bigrams")
DEFAULT_ANALYZER = "kiwi"  # measured on knowledge/eval/cases.json (docs/answer-quality.md)
# content morphemes: nouns, verb and adjective stems, roots, foreign words and Hanja (particles and endings
# say how something is asked, not what about)
_CONTENT_TAGS = frozenset({"NNG", "NNP", "NR", "VV", "VA", "XR", "SL", "SH"})


# how Kiwi is set up (its dictionaries): part of an index's recipe, so a change re-indexes at the next sync
KIWI_SETUP = "kiwi-0.24-model-only"


@functools.cache
def _kiwi() -> Any:
    from kiwipiepy import Kiwi  # its model ships in the kiwipiepy-model wheel: nothing is downloaded

    # Kiwi's language model alone, without its two dictionaries of proper nouns (Wikipedia and Namuwiki's
    # titles, WikiData's multi-word names): 498 → 234 MB per process. Of the 271 distinct Korean lines of the
    # sample help centre and the evaluation set, 3 are cut differently (배송지 → 배송, 지; 개인정보 → 개인, 정보),
    # alike in the index and in a question; `sixshop-agent eval` gives the same result for each of the 175 cases
    # (docs/concepts/knowledge.md; bench/streams.py for the memory)
    return Kiwi(load_multi_dict=False, load_default_dict=False)


@functools.lru_cache(maxsize=4096)
def _tokens(text: str) -> tuple[tuple[str, str], ...]:
    """Kiwi's (form, tag) pairs of a text with Hangul in it, cut once whatever is asked of it; () without Hangul."""
    if not _HANGUL_CHAR.search(text):
        return ()
    return tuple((t.form, t.tag) for t in _kiwi().tokenize(text))


def korean_tokens(text: str) -> tuple[tuple[str, str], ...]:
    """Kiwi's (form, tag) pairs of a text with Hangul in it (cached); () without Hangul."""
    return _tokens(text)


def _content_forms(text: str) -> tuple[str, ...]:
    """Kiwi's content morphemes of a text with Hangul in it, Latin words ("AS", "PG") included; () without Hangul."""
    return tuple(form for form, tag in _tokens(text) if tag in _CONTENT_TAGS)


def korean_morphemes(text: str) -> list[str]:
    """Kiwi's content morphemes of the Hangul in `text` ("배송비는 얼마인가요" → 배송비, 얼마; "걸려요" → 걸리)."""
    return [form for form in _content_forms(text) if _HANGUL_CHAR.search(form)]


def korean_nouns(text: str) -> list[str]:
    """Kiwi's nouns (common, proper, foreign words) of `text`: what a Korean question names."""
    return [form for form, tag in _tokens(text) if tag in ("NNG", "NNP", "SL")]


def search_text(text: str, analyzer: str = DEFAULT_ANALYZER) -> str:
    """What the full-text index sees (and a query is searched as): the text plus its Korean terms.

    PostgreSQL has no Korean dictionary and Korean glues particles to words ("배송비는"): Kiwi's morphemes
    give the words themselves ("배송비", and "걸리" for "걸립니다"/"걸려요"), the bigrams catch what it does
    not split alike; Latin words are stemmed by the english configuration.
    """
    extra: list[str] = []
    if "kiwi" in analyzer:
        extra += korean_morphemes(text)
    if "bigrams" in analyzer:
        extra += hangul_bigrams(text)
    return f"{text} {' '.join(extra)}" if extra else text


_STEMMERS = threading.local()  # a Snowball stemmer keeps state while it stems: one per thread


@functools.lru_cache(maxsize=8192)
def stem(word: str) -> str:
    """An English word's Snowball (Porter 2) stem, as PostgreSQL's `english` configuration stems the full-text
    index: "taxes" and "tax", "shipped" and "shipping", "cancelling" and "cancel" are one term."""
    stemmer = getattr(_STEMMERS, "english", None)
    if stemmer is None:
        stemmer = _STEMMERS.english = snowballstemmer.stemmer("english")
    return str(stemmer.stemWord(word))


_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3})")
_REPEATED = re.compile(r"([a-z])\1{2,}")
_LONG_NUMBER = re.compile(r"#?\b\d{5,}\b(?!\s*(?:원|won|krw))", re.I)  # not an amount
_SINO = {"일": 1, "이": 2, "삼": 3, "사": 4, "오": 5, "육": 6, "칠": 7, "팔": 8, "구": 9}
_UNIT = {"십": 10, "백": 100, "천": 1000}
_NUMERAL = "일이삼사오육칠팔구십백천만"
_KOREAN_AMOUNT = re.compile(rf"(?<![가-힣])([{_NUMERAL}]*[십백천만][{_NUMERAL}]*)(?=\s*원)")


def _korean_amount(words: str) -> str:
    """"오만" → "50000", "삼천" → "3000", "이만오천" → "25000": a sum of money written in Sino-Korean numerals."""
    total = section = digit = 0
    for ch in words:
        if ch in _SINO:
            digit = _SINO[ch]
        elif ch in _UNIT:
            section += (digit or 1) * _UNIT[ch]
            digit = 0
        elif ch == "만":
            total += (section + digit or 1) * 10000
            section = digit = 0
    return str(total + section + digit)


def normalized_numbers(text: str) -> str:
    """Numbers as the help centre writes them: no thousands separators ("50,000" → "50000"), and amounts in
    Sino-Korean numerals as digits ("오만원" → "50000원")."""
    text = _THOUSANDS.sub("", text)
    return _KOREAN_AMOUNT.sub(lambda m: _korean_amount(m.group(1)), text)


def one_edit(a: str, b: str) -> bool:
    """Whether a and b differ by at most one insertion, deletion, substitution or swap of neighbours."""
    if a == b:
        return True
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1
                                  and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    return any(long_[:i] + long_[i + 1:] == short for i in range(len(long_)))


@functools.lru_cache(maxsize=4096)  # the same passages come back turn after turn
def terms(text: str) -> frozenset[str]:
    """Content terms for overlap scoring: Latin words (no stop words, Snowball-stemmed; numbers without thousands
    separators, letters typed three times or more as twice), Hangul bigrams and Kiwi's Korean morphemes (prefixed
    "@", so that a one-syllable morpheme never equals a bigram)."""
    lowered = _REPEATED.sub(r"\1\1", normalized_numbers(text.lower()))
    words = {stem(w) for w in _LATIN_WORD.findall(lowered) if w not in _STOP and len(w) > 1}
    morphemes = {f"@{m}" for m in korean_morphemes(text)} if TERMS_USE_KIWI else set()
    return frozenset(words | set(hangul_bigrams(lowered)) | morphemes)


TERMS_USE_KIWI = True


def is_korean(text: str) -> bool:
    hangul = len(_HANGUL_CHAR.findall(text))
    letters = sum(ch.isalpha() for ch in text)
    return letters > 0 and hangul / letters >= 0.3


# -- what a question asks about: its terms without the words of asking (the offline answerer's coverage, the
#    condense rule's topic check)

# Hangul bigrams of question endings and question words: they say how something is asked, not what about
_ASKING = frozenset("""
나요 어요 해요 세요 까요 는데 은데 습니 니다 있나 있어 되나 돼요 되요 에요 예요 이에 인가 건가
하나 하는 어떻 떻게 어디 언제 얼마 뭐에 뭐예 무엇 엇인 려면 으면 하면 가요 는지 은지 을까 할까
수있 할수 는거 거에 싶어 고싶 아요 해주 주세 드려 려요 인데 한데 했는 했어 었어
""".split())
# English words of asking: light verbs and quantity words that any section may contain
_ASKING_EN = frozenset(
    stem(w) for w in "take get have make need want know tell say let see much many long there any".split())


# Kiwi morphemes of asking (question words, light verbs)
_ASKING_KO = frozenset(f"@{m}" for m in """
얼마 언제 어디 무엇 뭐 어떻 어떡 되 하 있 싶 알 주 보 가 수 것 거 이 그
""".split())
# Korean nouns that ask rather than name a topic (a question naming none of its own leans on the one before)
ASKING_NOUNS_KO = frozenset("얼마 언제 며칠 무엇 뭐 어디 누구 몇".split())


def with_help_centre_words(text: str) -> str:
    """A question with the help centre's words for the shopper's words in it (graph/lexicon.py): "얼마 이상 사면
    무배에요?" → "… 무료배송 무료 배송". What the full-text search looks for, and whose terms the answerer weighs."""
    words = help_centre_words(text, _content_forms(text))
    return f"{text} {' '.join(words)}" if words else text


def question_terms(question: str) -> set[str]:
    """`terms` of a question and of the help centre's words for its words, without the words of asking and without
    long numbers (an order or a phone number says which, not what about)."""
    question = _LONG_NUMBER.sub(" ", question)
    return {t for t in terms(with_help_centre_words(question))
            if t not in _ASKING and t not in _ASKING_EN and t not in _ASKING_KO}
