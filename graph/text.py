"""Language-aware text helpers shared by the full-text index and the offline answerer."""

from __future__ import annotations

import re

_HANGUL_RUN = re.compile(r"[\uac00-\ud7a3]+")
_HANGUL_CHAR = re.compile(r"[\uac00-\ud7a3]")
_LATIN_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset(
    "a an and are as at be by can do does for from how i if in is it my of on or our the this to "
    "was what when where which who why will with you your me we".split()
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


def search_text(text: str) -> str:
    """What the full-text index sees: the text plus its Hangul bigrams.

    PostgreSQL has no Korean dictionary and Korean glues particles to words ("배송비는"), so the
    bigrams let "배송비" match; Latin words are stemmed by the english configuration.
    """
    grams = hangul_bigrams(text)
    return f"{text} {' '.join(grams)}" if grams else text


def terms(text: str) -> set[str]:
    """Content terms for overlap scoring: Latin words (no stop words, crude plural folding) and bigrams."""
    lowered = text.lower()
    words = {w.removesuffix("s") if len(w) > 3 else w for w in _LATIN_WORD.findall(lowered)}
    return {w for w in words if w not in _STOP and len(w) > 1} | set(hangul_bigrams(lowered))


def is_korean(text: str) -> bool:
    hangul = len(_HANGUL_CHAR.findall(text))
    letters = sum(ch.isalpha() for ch in text)
    return letters > 0 and hangul / letters >= 0.3
