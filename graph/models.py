"""Chat models: OpenAI (or any compatible server) when a key is set, else the offline extractive answerer."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import AsyncIterator, Iterator
from html import unescape
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, SystemMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

from graph.text import is_korean, terms

OFFLINE_MODEL_NAME = "offline-extractive-v1"

_PASSAGE = re.compile(r'<passage id="[^"]*" title="([^"]*)"(?: url="[^"]*")?>\n(.*?)\n</passage>', re.S)
_SENTENCE = re.compile(r"[^.!?。\n]+[.!?。]?")
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


class ExtractiveChatModel(BaseChatModel):
    """A deterministic, offline stand-in for an LLM: it quotes the best-matching passage sentences.

    It reads the same prompt an LLM gets (the system message's <passage> blocks and the last user
    message), so the graph, the streaming path and the stored usage are exercised exactly as with a
    real model. Usage counts its own units (whitespace-delimited pieces), reported like a
    provider's usage; it is not an estimate of OpenAI tokens.
    """

    model_name: str = OFFLINE_MODEL_NAME
    max_sentences: int = 3
    chunk_delay_s: float = 0.0

    @property
    def _llm_type(self) -> str:
        return "offline-extractive"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name}

    def answer(self, messages: list[BaseMessage]) -> str:
        question = next((_text_of(m) for m in reversed(messages) if isinstance(m, HumanMessage)), "")
        system = "\n".join(_text_of(m) for m in messages if isinstance(m, SystemMessage))
        passages = [(unescape(t), body) for t, body in _PASSAGE.findall(system)]
        korean = is_korean(question)
        wanted = terms(question)
        scored: list[tuple[float, int, int, str, str]] = []
        for rank, (title, body) in enumerate(passages):
            # wrapped lines inside a paragraph are one text; blank lines still end sentences
            for pos, raw in enumerate(_SENTENCE.findall(_SOFT_BREAK.sub(" ", body))):
                sentence = _MARKUP.sub("", raw).strip()
                if len(sentence) < 8:
                    continue
                have = terms(sentence)
                overlap = len(wanted & have)
                if overlap == 0:
                    continue
                score = overlap / math.sqrt(len(have)) + 0.1 / (rank + 1)
                scored.append((score, rank, pos, title, sentence))
        best = sorted(scored, key=lambda s: -s[0])[: self.max_sentences]
        if not best:
            if korean:
                return "죄송합니다. 도움말 센터에서 이 질문에 대한 답을 찾지 못했습니다. 상점에 직접 문의해 주세요."
            return (
                "Sorry, I could not find the answer to that in the help centre. "
                "Please contact the store directly."
            )
        best.sort(key=lambda s: (s[1], s[2]))
        title = best[0][3]
        body = " ".join(s[4] for s in best)
        if korean:
            return f"도움말 「{title}」에 따르면: {body}"
        return f"According to our help centre ({title}): {body}"

    def _usage(self, messages: list[BaseMessage], output: list[str]) -> UsageMetadata:
        prompt_units = sum(len(_pieces(_text_of(m))) for m in messages)
        return UsageMetadata(
            input_tokens=prompt_units, output_tokens=len(output), total_tokens=prompt_units + len(output)
        )

    def _chunks(self, messages: list[BaseMessage]) -> Iterator[ChatGenerationChunk]:
        pieces = _pieces(self.answer(messages))
        usage = self._usage(messages, pieces)
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            chunk = AIMessageChunk(
                content=piece,
                usage_metadata=usage if last else None,
                response_metadata={"model_name": self.model_name, "finish_reason": "stop"} if last else {},
            )
            yield ChatGenerationChunk(message=chunk)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        pieces = _pieces(self.answer(messages))
        message = AIMessage(
            content="".join(pieces),
            usage_metadata=self._usage(messages, pieces),
            response_metadata={"model_name": self.model_name, "finish_reason": "stop"},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

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
) -> BaseChatModel:
    if not openai_api_key:
        return ExtractiveChatModel(chunk_delay_s=offline_chunk_delay_s)
    from pydantic import SecretStr

    from graph.openai_model import ChatOpenAIFastRequest

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
    )


def model_label(model: BaseChatModel) -> str:
    """The configured model's name, as reported before a call (the provider may refine it)."""
    for attr in ("model_name", "model"):
        value = getattr(model, attr, None)
        if isinstance(value, str) and value:
            return value
    return type(model).__name__
