"""ChatOpenAI, sending the conversation past the OpenAI SDK's client-side request transform.

`chat.completions.create` walks the whole request body against the typed-dict union of its parameters
before anything is sent (`openai._utils._transform`), with the event loop held: ~5 ms for a 20-message
conversation on this machine, growing with the history, on every turn's path to the first token. The
messages langchain-openai builds are already plain wire-format dicts, so the walk changes nothing. The
SDK merges `extra_body` into the JSON body after the transform, so the messages go there and the typed
`messages` argument stays an empty placeholder: the same request on the wire, without the walk.
(The workaround known from openai-python perf reports; `tests/test_openai_model.py` checks the bodies.)

`aiohttp_client()` is the SDK's aiohttp transport (`openai[aiohttp]`), which reads a paced stream for about half
the CPU of its default httpx transport (bench/chunk_cost.py), with an aiohttp session per event loop: a model made
once (a cached default, a store's model) may serve more than one loop in a process (tests, `langgraph dev`).
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from langchain_core.language_models import LanguageModelInput
from langchain_openai import ChatOpenAI


class ChatOpenAIFastRequest(ChatOpenAI):
    name: str | None = "ChatOpenAI"  # its runs in LangSmith are named like the stock model's

    def _get_request_payload(self, input_: LanguageModelInput, *, stop: list[str] | None = None,
                             **kwargs: Any) -> dict[str, Any]:
        payload = super()._get_request_payload(input_, stop=stop, **kwargs)
        messages = payload.get("messages")
        if isinstance(messages, list) and all(isinstance(m, dict) for m in messages) \
                and "response_format" not in payload:  # the structured-output path parses locally: keep it typed
            payload["extra_body"] = {**(payload.get("extra_body") or {}), "messages": messages}
            payload["messages"] = []
        return payload


def aiohttp_client() -> Any:
    """An httpx-compatible client for the OpenAI SDK on aiohttp (the SDK's DefaultAioHttpClient defaults)."""
    import openai
    from openai._constants import DEFAULT_CONNECTION_LIMITS
    from openai._vendor.httpx_aiohttp.transport import AiohttpTransport

    class PerLoopTransport(AiohttpTransport):
        """AiohttpTransport with its aiohttp session made in, and kept per, the event loop that sends."""

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()

        async def handle_async_request(self, request: Any) -> Any:
            loop = asyncio.get_running_loop()
            session = self.sessions.get(loop)
            if session is None or session.closed:
                self.client = None
                session = self.sessions[loop] = self.get_client()
            self.client = session
            return await super().handle_async_request(request)

        async def aclose(self) -> None:
            loop = asyncio.get_running_loop()
            session = self.sessions.pop(loop, None)
            if session is not None:
                await session.close()

    # the SDK's own limits (1,000 connections): the transport's default of 100 would queue the 101st open stream
    return openai.DefaultAioHttpClient(transport=PerLoopTransport(limits=DEFAULT_CONNECTION_LIMITS))
