"""The direct token path: the generate node's answer, read from the model client's own stream and handed on
chunk by chunk as plain text, with no LangChain message or callback dispatch per chunk.

Relaying a chunk through `ChatOpenAI.astream` and LangGraph's `messages` stream mode builds an AIMessageChunk,
runs the callback managers (the tracer, the messages handler) and merges chunks, per token: most of a turn's CPU
(bench/chunk_cost.py). Here:

- The request is ChatOpenAI's own (`_get_request_payload`: the same body, model settings and tools), sent through
  the OpenAI SDK's client (its auth, retries before the body starts, timeouts, status errors), whose response body
  is read line by line and each `data:` decoded with msgspec into only the fields we use.
- Each text chunk goes to `on_text` (the service's turn log, or LangGraph's `custom` stream writer where no one
  gave a sink: `langgraph dev`, Studio).
- LangSmith still gets the LLM run, opened and closed through the run's callbacks as LangChain opens it for a
  chat model (so the same tracer, hidden-content rules and parent run): its input messages, the output message,
  the provider's token usage, and a `new_token` event at the first chunk (LangSmith's first-token time). Later
  chunks are not each recorded: that per-chunk dispatch is what this path removes.
- LangGraph's `messages` mode (Studio, Agent Protocol servers reading the graph) gets the whole answer when the
  LLM run ends, not chunk by chunk.

The offline extractive answerer goes the same way (its pieces to `on_text`, the same run), and so does any
OpenAI-compatible server (it is the SDK's client with another base URL). Any other chat model is streamed with its
own `astream`, traced by LangChain as before.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec
from langchain_core.callbacks import AsyncCallbackManager, Callbacks
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, LLMResult

from graph.models import ExtractiveChatModel, content_text

OnText = Callable[[str], None]
_Relay = Callable[[str], Awaitable[None] | None]  # an awaitable when the chunk also goes through the callbacks


class ModelStreamError(RuntimeError):
    """The model's stream said it failed (an `error` object in the body) or could not be read."""


class _Function(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class _ToolCallDelta(msgspec.Struct):
    index: int = 0
    id: str | None = None
    function: _Function | None = None


class _Delta(msgspec.Struct):
    content: str | None = None
    tool_calls: list[_ToolCallDelta] | None = None


class _Choice(msgspec.Struct):
    index: int = 0
    delta: _Delta | None = None
    finish_reason: str | None = None


class _Chunk(msgspec.Struct):
    """What one `data:` line of a chat completion stream holds that we use; everything else is skipped unread."""

    id: str | None = None
    model: str | None = None
    system_fingerprint: str | None = None
    choices: list[_Choice] = []
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


_decode = msgspec.json.Decoder(_Chunk).decode


class _Answer:
    """The answer as it comes: text parts, tool calls by index, and the closing facts."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.calls: dict[int, dict[str, str]] = {}
        self.finish_reason: str | None = None
        self.model: str | None = None
        self.id: str | None = None
        self.fingerprint: str | None = None
        self.usage: dict[str, Any] | None = None

    def take(self, chunk: _Chunk) -> str | None:
        """Takes in one chunk; returns its text, if it has any."""
        if chunk.error is not None:
            raise ModelStreamError(f"the model's stream reported an error: {chunk.error.get('type') or 'error'}")
        self.id = self.id or chunk.id
        self.model = chunk.model or self.model
        self.fingerprint = chunk.system_fingerprint or self.fingerprint
        if chunk.usage is not None:
            self.usage = chunk.usage
        text = None
        for choice in chunk.choices:
            if choice.index:
                continue  # n=1: only the first choice is the answer
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason
            delta = choice.delta
            if delta is None:
                continue
            if delta.content:
                self.parts.append(delta.content)
                text = delta.content
            for call in delta.tool_calls or ():
                got = self.calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                got["id"] = call.id or got["id"]
                if call.function is not None:
                    got["name"] += call.function.name or ""
                    got["arguments"] += call.function.arguments or ""
        return text

    def message(self) -> AIMessage:
        from langchain_openai.chat_models.base import _create_usage_metadata

        tool_calls, invalid = [], []
        for got in (self.calls[i] for i in sorted(self.calls)):
            try:
                args = json.loads(got["arguments"] or "{}")
                tool_calls.append({"name": got["name"], "args": args, "id": got["id"], "type": "tool_call"})
            except ValueError:
                invalid.append({"name": got["name"], "args": got["arguments"], "id": got["id"], "error": None,
                                "type": "invalid_tool_call"})
        metadata: dict[str, Any] = {"model_provider": "openai"}
        for key, value in (("finish_reason", self.finish_reason), ("model_name", self.model),
                           ("system_fingerprint", self.fingerprint)):
            if value is not None:
                metadata[key] = value
        return AIMessage(
            content="".join(self.parts), id=self.id, tool_calls=tool_calls, invalid_tool_calls=invalid,
            usage_metadata=_create_usage_metadata(self.usage) if self.usage else None, response_metadata=metadata,
        )


async def _openai_stream(model: Any, prompt: Sequence[BaseMessage], tools: list[dict[str, Any]] | None,
                         relay: _Relay) -> AIMessage:
    payload = model._get_request_payload(list(prompt), **({"tools": tools} if tools else {}))
    payload["stream"] = True
    payload["stream_options"] = {"include_usage": True}  # the closing chunk's usage: the turn is billed from it
    answer = _Answer()
    data: list[str] = []
    async with model.async_client.with_streaming_response.create(**payload) as response:
        async for line in response.iter_lines():
            if line.startswith("data:"):
                data.append(line[6:] if line.startswith("data: ") else line[5:])
                continue
            if line or not data:  # event:, id:, comments; or a blank line with no data before it
                continue
            body = data[0] if len(data) == 1 else "\n".join(data)
            data.clear()
            if body == "[DONE]":  # read on to the body's end: a connection left mid-body is not reused
                continue
            if (text := answer.take(_decode(body))) and (waits := relay(text)) is not None:
                await waits
        if data and data[0] != "[DONE]":  # a last event the body ended without a blank line after
            if (text := answer.take(_decode("\n".join(data)))) and (waits := relay(text)) is not None:
                await waits
    return answer.message()


async def _offline(model: ExtractiveChatModel, prompt: Sequence[BaseMessage], relay: _Relay) -> AIMessage:
    pieces, message = model.reply(list(prompt))
    for piece in pieces:
        if model.chunk_delay_s:
            await asyncio.sleep(model.chunk_delay_s)
        if (waits := relay(piece)) is not None:
            await waits
    return message


async def _any_model(model: BaseChatModel, prompt: Sequence[BaseMessage], tools: list[dict[str, Any]] | None,
                     on_text: OnText, callbacks: Callbacks) -> AIMessage:
    runnable: Any = model
    if tools:
        try:
            runnable = model.bind_tools(tools)
        except NotImplementedError:  # a model that takes no tools answers without them
            pass
    total: AIMessageChunk | None = None
    async for chunk in runnable.astream(list(prompt), {"callbacks": callbacks}):
        text = content_text(chunk.content)
        if text:
            on_text(text)
        total = chunk if total is None else total + chunk
    if total is None:
        return AIMessage("")
    return AIMessage(**total.model_dump(exclude={"type", "tool_call_chunks", "chunk_position"}))


def _streams_directly(model: BaseChatModel) -> bool:
    from langchain_openai.chat_models.base import BaseChatOpenAI

    return isinstance(model, ExtractiveChatModel) or (
        isinstance(model, BaseChatOpenAI) and getattr(model, "async_client", None) is not None)


async def stream_answer(model: BaseChatModel, prompt: Sequence[BaseMessage], *, on_text: OnText,
                        tools: list[dict[str, Any]] | None = None, callbacks: Callbacks = None,
                        chunks_to_callbacks: bool = False) -> AIMessage:
    """The model's answer to `prompt`, its text handed to `on_text` chunk by chunk as it comes, in one LLM run
    under `callbacks` (the node's). `tools` are offered to a model that takes them (not the offline answerer).
    With `chunks_to_callbacks`, every chunk also goes through the run's callbacks, as a LangChain chat model's do
    (LangGraph's `messages` stream token by token: `langgraph dev` and Studio, where no one reads `on_text`)."""
    if not _streams_directly(model):
        return await _any_model(model, prompt, tools, on_text, callbacks)
    offline = isinstance(model, ExtractiveChatModel)
    params = model._get_invocation_params(stop=None, **({"tools": tools} if tools and not offline else {}))
    manager = AsyncCallbackManager.configure(
        callbacks, model.callbacks, model.verbose, None, model.tags,
        dict(model._get_ls_params_with_defaults()), model.metadata)
    (run,) = await manager.on_chat_model_start(model._serialized, [list(prompt)], invocation_params=params,
                                               options={"stop": None}, batch_size=1)
    first_token: list[asyncio.Future[Any]] = []
    chunk_id = f"lc_run--{run.run_id}"

    def relay(text: str) -> Awaitable[None] | None:
        on_text(text)
        if chunks_to_callbacks:
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=text, id=chunk_id))
            return run.on_llm_new_token(text, chunk=chunk)
        if not first_token:  # LangSmith's first-token time: the run's first `new_token` event, recorded now
            first_token.append(asyncio.ensure_future(run.on_llm_new_token(text)))
        return None

    try:
        if offline:
            assert isinstance(model, ExtractiveChatModel)
            message = await _offline(model, prompt, relay)
        else:
            message = await _openai_stream(model, prompt, tools, relay)
    except BaseException as exc:
        if first_token:
            first_token[0].cancel()
        await asyncio.shield(run.on_llm_error(exc))
        raise
    if first_token:
        await first_token[0]
    await run.on_llm_end(LLMResult(generations=[[ChatGeneration(message=message)]],
                                   llm_output={"model_name": message.response_metadata.get("model_name")}))
    return message
