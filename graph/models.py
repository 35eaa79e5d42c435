"""Chat models: OpenAI (or any compatible server) when a key is set, else the offline extractive answerer."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from html import unescape
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, SystemMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

from graph.condense import speaks_of, standalone_question
from graph.lexicon import known_word
from graph.text import ASKING_NOUNS_KO, hangul_bigrams, is_korean, korean_nouns, one_edit, question_terms, terms

OFFLINE_MODEL_NAME = "offline-extractive-v1"

_PASSAGE = re.compile(
    r'<passage id="[^"]*" title="([^"]*)"(?: url="[^"]*")?(?: similarity="([-0-9.]+)")?>\n(.*?)\n</passage>', re.S)
_SENTENCE_END = re.compile(r"(?<=[.!?。])\s+|\n+")
_ABBREVIATION = re.compile(r"(?:\b[a-z]\.){2}$|\b(?:e\.g|i\.e|etc|vs|no)\.$", re.I)  # "p.m." "e.g." do not end one
_PIECE = re.compile(r"\S+\s*|\s+")
_MARKUP = re.compile(r"^\s*(?:[#>*|\-]+|\d+[.)])\s+")
_SOFT_BREAK = re.compile(r"(?<!\n)\n(?!\n)")


def _pieces(text: str) -> list[str]:
    """The offline model's unit of output and of usage: a word with its trailing space."""
    return _PIECE.findall(text)


def content_text(content: str | list[Any]) -> str:
    """The text of a message's content, whether a string or a list of content blocks."""
    if isinstance(content, str):
        return content
    return "".join(
        str(part.get("text", "")) if isinstance(part, dict) else str(part) for part in content
    )


def _text_of(message: BaseMessage) -> str:
    return content_text(message.content)


MIN_COVERAGE = 0.1
# how a question's term counts towards coverage: a whole word more than a Hangul bigram (a syllable pair
# also matches inside unrelated words)
_WORD_WEIGHT, _BIGRAM_WEIGHT, _TITLE_BONUS = 1.0, 0.6, 0.5
_RANK_PRIOR = (0.15, 0.08, 0.04)  # the retriever's order, as a tie-breaker between sections
# chosen with bench/answerer.py on the development sets (cases, holdout, holdout2, dev-colloquial): how much a section's
# similarity weighs in the choice (per unit of cosine), and the coverage below which, with no passage close in
# meaning, the answerer declines (the retrieve node cuts the passages there: graph/graph.py)
SIMILARITY_WEIGHT = 20.0
DECLINE_COVERAGE = 0.01  # that is, nothing of the question in the section


def sentences_of(text: str) -> list[str]:
    """Sentences of a passage: wrapped lines inside a paragraph are one text; a period ends a sentence only
    before a space or a line end, and not in "p.m." or "e.g." ("yourshop.sixshop.example" stays whole)."""
    text = _SOFT_BREAK.sub(" ", text)
    out: list[str] = []
    start = 0
    for m in _SENTENCE_END.finditer(text):
        piece = text[start:m.start()]
        if m.group().strip() == "" and "\n" not in m.group() and _ABBREVIATION.search(piece):
            continue
        out.append(piece)
        start = m.end()
    out.append(text[start:])
    return [p.strip() for p in out if p.strip()]


def _weight(term: str) -> float:
    """A word (Latin, or a Kiwi morpheme "@…") counts more than a Hangul bigram."""
    return _BIGRAM_WEIGHT if is_korean(term) and not term.startswith("@") else _WORD_WEIGHT


# Korean nouns that name no topic of their own (a quantity, a time, a way, a condition): a question may use them
# whether or not the help centre does ("골드 등급 조건", "적립금 최소 얼마부터")
LIGHT_NOUNS_KO = frozenset("""
조건 기준 최소 최대 방법 가능 여부 정도 종류 경우 관련 부분 이상 이하 내용 사항 때 후 전 중 날 번 개 분 님 쪽 데 등
오늘 내일 어제 지금 요즘 이번 다음 저번 처음 나중 혹시 제 저 우리 거 것 수 뭐 문의 질문 답변 확인 도움 상담
""".split())


def unknown_nouns(question: str, passages: list[tuple[str, str]]) -> list[str]:
    """The Korean nouns of a question that no passage given contains, that name something (not LIGHT_NOUNS_KO nor a
    word of asking) and that graph/lexicon.py does not know another word for: "학생" in "학생 할인 있어요?" when the
    help centre speaks of coupons and sale items but never of students. A noun the passages cut otherwise counts
    as found when each of its syllable pairs is ("반품비" in "반품 배송비" is not; "제주" in "제주도" is)."""
    have = frozenset().union(*(terms(f"{title} {body}") for title, body in passages)) if passages else frozenset()
    out = []
    for noun in dict.fromkeys(korean_nouns(question)):
        if not is_korean(noun) or noun in ASKING_NOUNS_KO or noun in LIGHT_NOUNS_KO or known_word(noun):
            continue
        if f"@{noun}" in have or (len(noun) > 1 and all(g in have for g in hangul_bigrams(noun))):
            continue
        out.append(noun)
    return out


def typed_near(missing: set[str], have: frozenset[str]) -> set[str]:
    """The English words of a question the section lacks but holds with one typo ("purchse", "cancle", "ddo" does
    not count: too short to tell), as found."""
    latin = [h for h in have if h.isascii() and h.isalpha() and len(h) >= 4]
    return {t for t in missing if t.isascii() and t.isalpha() and len(t) >= 5 and any(one_edit(t, h) for h in latin)}


@dataclass(frozen=True)
class Section:
    title: str
    body: str
    coverage: float  # weighted share of the question's terms found in the section (title included)
    score: float  # what the choice between sections weighs (best_section)
    similarity: float | None = None  # the section's embedding similarity to the question, where it is known


# A retrieved passage as the answerer reads it: (title, body) or (title, body, similarity or None)
PassageText = tuple[str, str] | tuple[str, str, float | None]


def best_section(question: str, passages: Sequence[PassageText], *, similarity_weight: float = 0.0
                 ) -> Section | None:
    """The passage (one section of a page) that answers the question best, or None when no passage was given or the
    question has no content terms. It weighs, for each section:

    - what the question means: the section's embedding similarity to the question, as its distance below the
      closest section's (`similarity_weight` per unit of cosine; passages without one count as far as the farthest
      that has one);
    - what the question says: the weighted share of its terms the section contains (coverage), and how well the
      section's own heading names the question's topic and nothing else (an F1 of heading terms: "배송비" over
      "반품 배송비" for a question about delivery that says nothing of returns);
    - the retriever's order, as a tie-breaker.
    """
    wanted = question_terms(question)
    total = sum(_weight(t) for t in wanted)
    if not passages or not total:
        return None
    sims = [p[2] for p in passages if len(p) > 2 and p[2] is not None]
    top, floor = (max(sims), min(sims)) if sims else (None, None)
    sections = []
    for rank, passage in enumerate(passages):
        title, body = passage[0], passage[1]
        similarity = passage[2] if len(passage) > 2 else None
        # the page's title is on each of its sections: only the section's own heading says what it is about
        have, in_title = terms(f"{title} {body}"), terms(title.rsplit(" › ", 1)[-1])
        coverage = sum(_weight(t) for t in wanted & have | typed_near(wanted - have, have)) / total
        shared = sum(_weight(t) for t in wanted & in_title)
        heading = sum(_weight(t) for t in in_title)
        recall, precision = shared / total, shared / heading if heading else 0.0
        bonus = _TITLE_BONUS * 2 * recall * precision / (recall + precision) if shared else 0.0
        prior = _RANK_PRIOR[rank] if rank < len(_RANK_PRIOR) else 0.0
        meaning = 0.0
        if top is not None and similarity_weight:
            meaning = similarity_weight * ((similarity if similarity is not None else floor) - top)  # type: ignore[operator]
        sections.append(Section(title, body, coverage, coverage + bonus + prior + meaning, similarity))
    return max(sections, key=lambda sec: sec.score)


class ExtractiveChatModel(BaseChatModel):
    """A deterministic, offline stand-in for an LLM: it quotes the best-matching passage sentences.

    It reads the same prompt an LLM gets (the system message's <passage> blocks and the last user
    message), so the graph, the streaming path and the stored usage are exercised exactly as with a
    real model. Usage counts its own units (whitespace-delimited pieces), reported like a
    provider's usage; it is not an estimate of OpenAI tokens.
    """

    model_name: str = OFFLINE_MODEL_NAME
    max_sentences: int = 3
    # below this share of the question's (weighted) terms found in the best section, with no similarity to go by, it
    # says it does not know; calibrated on knowledge/eval/cases.json with bench/abstention.py
    min_coverage: float = MIN_COVERAGE
    read_follow_ups: bool = True  # read a follow-up with the question before it (off only to measure what it adds)
    # with no similarity to go by (full-text retrieval alone), say it does not know when the question names something
    # (a Korean noun) no passage mentions (unknown_nouns); with similarities, no word decides alone
    abstain_on_unknown_nouns: bool = True
    # Where the passages carry their embedding similarity (the local model's cosine), the evidence is weighed
    # (band). Each figure was chosen with bench/answerer.py on the development sets (knowledge/eval/cases.json,
    # holdout.json, holdout2.json, dev-colloquial.json), never on the sets that measure it (docs/answer-quality.md):
    similarity_weight: float = SIMILARITY_WEIGHT  # per unit of cosine below the closest section, in the choice
    decline_on_evidence: bool = True  # off: decide as without similarities (only to measure what it adds)
    close_similarity: float = 0.84  # a passage this similar (the local model's cosine) is close in meaning
    decline_coverage: float = DECLINE_COVERAGE  # declining needs less coverage than this and no close passage
    sure_similarity: float = 0.87  # a section this similar, or covering this share, is answered outright; between
    sure_coverage: float = 0.6  # declining and sure, the answer quotes the closest section and says so
    chunk_delay_s: float = 0.0

    @property
    def _llm_type(self) -> str:
        return "offline-extractive"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name}

    def band(self, question: str, best: Section | None, passages: Sequence[PassageText]) -> str:
        """How sure the answer is: `answer`, `closest` (quote the closest section and say it is the closest) or
        `decline`. With similarities, declining needs evidence both ways: no section close in meaning and little of
        the question covered (a word the pages do not use only lowers the coverage); without, coverage alone
        decides, as does a Korean noun no passage mentions."""
        if best is None:
            return "decline"
        sims = [p[2] for p in passages if len(p) > 2 and p[2] is not None] if self.decline_on_evidence else []
        if not sims:
            if best.coverage < self.min_coverage or (
                    self.abstain_on_unknown_nouns and unknown_nouns(question, [(p[0], p[1]) for p in passages])):
                return "decline"
            return "answer"
        if max(sims) < self.close_similarity and best.coverage < self.decline_coverage:
            return "decline"
        similarity = best.similarity if best.similarity is not None else min(sims)
        if similarity >= self.sure_similarity or best.coverage >= self.sure_coverage:
            return "answer"
        return "closest"

    def answer(self, messages: list[BaseMessage]) -> str:
        """The best passage's section, quoted: the sentences of that one section that share a term with the
        question (all of it when it is short), never sentences of other sections; said to be the closest the help
        centre comes when the evidence is middling; or that the help centre does not say (band)."""
        question = next((_text_of(m) for m in reversed(messages) if isinstance(m, HumanMessage)), "")
        system = "\n".join(_text_of(m) for m in messages if isinstance(m, SystemMessage))
        passages: list[PassageText] = [(unescape(t), body, float(sim) if sim else None)
                                       for t, sim, body in _PASSAGE.findall(system)]
        korean = is_korean(question)
        # a follow-up ("And to Jeju?") is read with the question it follows, as the retriever searched it, unless
        # the section that reading picks says nothing of the question itself (a new topic)
        talk = [m for m in messages if not isinstance(m, SystemMessage)]
        carried = (standalone_question(talk) if self.read_follow_ups else question) or question
        weight = self.similarity_weight
        best = best_section(carried, passages, similarity_weight=weight)
        if carried != question and best is not None and not speaks_of(question, f"{best.title} {best.body}"):
            alone = best_section(question, passages, similarity_weight=weight)
            if alone is not None and speaks_of(question, f"{alone.title} {alone.body}"):
                best = alone
        band = self.band(question, best, passages)
        if band == "decline" or best is None:
            if korean:
                return "죄송합니다. 도움말 센터에서 이 질문에 대한 답을 찾지 못했습니다. 상점에 직접 문의해 주세요."
            return (
                "Sorry, I could not find the answer to that in the help centre. "
                "Please contact the store directly."
            )
        sentences = [x for x in (_MARKUP.sub("", raw).strip() for raw in sentences_of(best.body)) if len(x) >= 8]
        if len(sentences) > self.max_sentences:
            wanted = question_terms(question)
            scored = sorted(((len(wanted & terms(x)) / math.sqrt(len(terms(x)) or 1), i)
                             for i, x in enumerate(sentences)), reverse=True)
            keep = sorted(i for score, i in scored[: self.max_sentences] if score > 0) or [0]
            sentences = [sentences[i] for i in keep]
        body = " ".join(sentences)
        if band == "closest":
            if korean:
                return f"가장 가까운 안내는 「{best.title}」입니다: {body}"
            return f"The closest our help centre comes to that is ({best.title}): {body}"
        if korean:
            return f"도움말 「{best.title}」에 따르면: {body}"
        return f"According to our help centre ({best.title}): {body}"

    def _usage(self, messages: list[BaseMessage], output: list[str]) -> UsageMetadata:
        prompt_units = sum(len(_pieces(_text_of(m))) for m in messages)
        return UsageMetadata(
            input_tokens=prompt_units, output_tokens=len(output), total_tokens=prompt_units + len(output)
        )

    def reply(self, messages: list[BaseMessage]) -> tuple[list[str], AIMessage]:
        """The answer's pieces as it streams them, and the whole answer with its usage (graph/answer_stream.py)."""
        pieces = _pieces(self.answer(messages))
        return pieces, AIMessage(
            content="".join(pieces),
            usage_metadata=self._usage(messages, pieces),
            response_metadata={"model_name": self.model_name, "finish_reason": "stop"},
        )

    def _chunks(self, messages: list[BaseMessage]) -> Iterator[ChatGenerationChunk]:
        pieces, whole = self.reply(messages)
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            chunk = AIMessageChunk(
                content=piece,
                usage_metadata=whole.usage_metadata if last else None,
                response_metadata=whole.response_metadata if last else {},
            )
            yield ChatGenerationChunk(message=chunk)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self.reply(messages)[1])])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for chunk in self._chunks(messages):
            if run_manager:
                run_manager.on_llm_new_token(str(chunk.message.content), chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        for chunk in self._chunks(messages):
            if self.chunk_delay_s:
                await asyncio.sleep(self.chunk_delay_s)
            if run_manager:
                await run_manager.on_llm_new_token(str(chunk.message.content), chunk=chunk)
            yield chunk


def make_chat_model(
    *,
    openai_api_key: str | None,
    openai_base_url: str | None = None,
    model_name: str = "gpt-4o-mini",
    temperature: float = 0.2,
    timeout_s: float = 60.0,
    max_retries: int = 2,
    offline_chunk_delay_s: float = 0.0,
    http_client: Literal["aiohttp", "httpx"] = "aiohttp",
) -> BaseChatModel:
    """The offline answerer without a key; else ChatOpenAI (any OpenAI-compatible server at `openai_base_url`), on
    the SDK's aiohttp transport unless `http_client` says httpx (graph/openai_model.py)."""
    if not openai_api_key:
        return ExtractiveChatModel(chunk_delay_s=offline_chunk_delay_s)
    from pydantic import SecretStr

    from graph.openai_model import ChatOpenAIFastRequest, aiohttp_client

    return ChatOpenAIFastRequest(
        model=model_name,
        api_key=SecretStr(openai_api_key),
        base_url=openai_base_url or None,
        temperature=temperature,
        timeout=timeout_s,
        max_retries=max_retries,
        streaming=True,
        stream_usage=True,  # the final chunk carries the provider's usage: we bill from it
        # no per-chunk asyncio.wait_for (a task per token): the client's read timeout bounds each wait
        # for bytes and the service's turn deadline bounds the whole answer
        stream_chunk_timeout=None,
        **({"http_async_client": aiohttp_client()} if http_client == "aiohttp" else {}),
    )


async def aclose_model(model: BaseChatModel) -> None:
    """Close the HTTP client a model made here holds (its connections), if any."""
    client = getattr(model, "root_async_client", None)
    if client is not None and getattr(model, "http_async_client", None) is not None:
        await client.close()


def model_label(model: BaseChatModel) -> str:
    """The configured model's name, as reported before a call (the provider may refine it)."""
    for attr in ("model_name", "model"):
        value = getattr(model, attr, None)
        if isinstance(value, str) and value:
            return value
    return type(model).__name__
