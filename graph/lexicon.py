"""Shoppers' words for what a help centre names otherwise: "무배" for 무료배송, "비번" for 비밀번호, "ads" for marketing
messages, "mug" for ceramics. A question's terms (graph/text.py question_terms) and its full-text search
(persistence/knowledge.py) take the help centre's words beside the shopper's, so that a shortened or everyday word
finds the page that uses the formal one or the general one; the index is not touched (nothing re-indexes when this
table changes).

The table is general shopping vocabulary (Korean internet shorthand, everyday words for what a shop's help centre
covers), not one store's. It is kept to words for the same thing or a kind of it: an entry that maps a word to a
different thing ("아이디" to 계정) would make the offline answerer answer what the help centre does not say.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

# shopper's word = the help centre's words. A Korean key is one of Kiwi's morphemes of the question ("무배에요" → 무배),
# so that "색" does not match inside "검색"; an English key is a whole word or phrase, in any case.
_TABLE = """
무배 = 무료배송 무료 배송
당일배송 = 당일 출고
택배비 = 배송비
택비 = 배송비
반품비 = 반품 배송비
교환비 = 반품 배송비
출발 = 출고
발송 = 출고
비번 = 비밀번호
패스워드 = 비밀번호
폰번호 = 전화번호
핸드폰 = 휴대폰 전화번호
연락처 = 전화번호
카톡 = 카카오
카카오톡 = 카카오
네페 = 네이버페이
무통 = 무통장입금
현영 = 현금영수증
포인트 = 적립금
마일리지 = 적립금
포토 = 사진
광고 = 마케팅
스팸 = 마케팅
빨래 = 세탁
손빨래 = 손세탁
에이에스 = 품질 보증
AS = 품질 보증
셔츠 = 옷
티셔츠 = 옷
바지 = 옷
치마 = 옷
원피스 = 옷
스웨터 = 니트
가디건 = 니트
접시 = 도자기
그릇 = 도자기
머그 = 도자기
컵 = 도자기
색깔 = 색상 색감
색 = 색상 색감
ads = marketing messages
advertising = marketing messages
promo = marketing messages
promotions = marketing messages
spam = marketing messages
newsletter = marketing messages
import tax = customs duties
import taxes = customs duties
duty = customs duties
duties = customs duties
text = text message
sms = text message
pic = photo
pics = photo
picture = photo
pictures = photo
sign in = log in
login = log in
money back = refund
mobile = phone
cellphone = phone
package = parcel
box = parcel
cup = ceramics
mug = ceramics
mugs = ceramics
bowl = ceramics
plate = ceramics
vase = ceramics
sweater = knitwear
jumper = knitwear
cardigan = knitwear
"""


IN_USE = True  # off only to measure what it adds (bench/ablation.py)


@functools.cache
def _table() -> tuple[dict[str, str], tuple[tuple[re.Pattern[str], str], ...]]:
    korean: dict[str, str] = {}
    english: list[tuple[re.Pattern[str], str]] = []
    for line in _TABLE.strip().splitlines():
        key, _, words = (part.strip() for part in line.partition("="))
        if re.search(r"[\uac00-\ud7a3]", key) or key.isupper():  # Hangul, or a Latin abbreviation inside Korean
            korean[key] = words
        else:
            english.append((re.compile(rf"\b{re.escape(key)}\b", re.I), words))
    return korean, tuple(english)


def help_centre_words(text: str, morphemes: Iterable[str]) -> list[str]:
    """The help centre's words for the shopper's words in `text` (whose Kiwi morphemes are `morphemes`), in table
    order, each once; [] when it uses none of the table's."""
    if not IN_USE:
        return []
    korean, english = _table()
    found = [korean[m] for m in dict.fromkeys(morphemes) if m in korean]
    found += [words for pattern, words in english if pattern.search(text)]
    return list(dict.fromkeys(found))


def known_word(morpheme: str) -> bool:
    """Whether a Korean morpheme is a shopper's word the table knows the help centre's words for."""
    return morpheme in _table()[0]
