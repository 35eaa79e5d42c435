"""The OpenAI chat model we build sends the same request as stock ChatOpenAI, without the SDK's
client-side walk of the conversation (graph/openai_model.py)."""

from __future__ import annotations

from typing import Any, cast
from unittest import mock

import openai.resources.chat.completions.completions as sdk_completions
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI

from graph.models import make_chat_model
from graph.openai_model import ChatOpenAIFastRequest
from tests.fake_openai import FakeOpenAIServer

CONVERSATION = [
    SystemMessage("Answer from the passages.\n<passage id=\"p1\" title=\"배송\">무료 배송은 5만원 이상</passage>"),
    HumanMessage("배송비가 얼마인가요?"),
    AIMessage("5만원 이상이면 무료입니다."),
    HumanMessage("And returns? \"quoted\" \\ backslash"),
]


async def _body(model: ChatOpenAI, server: FakeOpenAIServer) -> dict[str, Any]:
    chunks = [chunk async for chunk in model.astream(CONVERSATION)]
    assert "".join(str(c.content) for c in chunks)  # the answer streamed back through the bypass
    return dict(server.chat_requests[-1]["body"])


async def test_same_request_body_as_stock_chat_openai(fake_openai: FakeOpenAIServer) -> None:
    common: dict[str, Any] = dict(model="gpt-4o-mini", api_key="sk-test", base_url=fake_openai.base_url,
                                  temperature=0.2, streaming=True, stream_usage=True, max_retries=0)
    stock = await _body(ChatOpenAI(**common), fake_openai)
    ours = await _body(ChatOpenAIFastRequest(**common), fake_openai)
    assert ours == stock
    assert [m["role"] for m in ours["messages"]] == ["system", "user", "assistant", "user"]
    assert ours["messages"][1]["content"] == "배송비가 얼마인가요?"
    assert ours["stream"] is True and ours["stream_options"] == {"include_usage": True}


async def test_the_sdk_transform_no_longer_walks_the_conversation(fake_openai: FakeOpenAIServer) -> None:
    model = make_chat_model(openai_api_key="sk-test", openai_base_url=fake_openai.base_url, max_retries=0)
    assert isinstance(model, ChatOpenAIFastRequest)
    seen: list[Any] = []
    real = sdk_completions.async_maybe_transform

    async def spy(data: Any, expected_type: Any) -> Any:
        seen.append(data)
        return await real(data, expected_type)

    with mock.patch.object(sdk_completions, "async_maybe_transform", spy):
        await _body(model, fake_openai)
    assert seen and seen[0]["messages"] == []  # what the SDK walked: an empty placeholder
    assert len(fake_openai.chat_requests[-1]["body"]["messages"]) == len(CONVERSATION)  # what was sent


async def test_the_direct_path_streams_the_same_answer_and_reuses_its_connection(fake_openai: FakeOpenAIServer
                                                                                  ) -> None:
    """graph/answer_stream.py reads the body itself, on the SDK's aiohttp transport: the text as ChatOpenAI would
    give it, chunk by chunk, with the provider's usage and finish reason; and the next answer goes on the same
    connection (each body is read to its end: one left mid-body would be closed, not reused)."""
    from graph.answer_stream import stream_answer
    from graph.models import aclose_model

    model = make_chat_model(openai_api_key="sk-local-test", openai_base_url=fake_openai.base_url,
                            model_name="gpt-4o-mini", max_retries=0)
    expected = "".join([str(c.content) async for c in model.astream(CONVERSATION)])
    first = len(fake_openai.requests)
    for _ in range(3):
        chunks: list[str] = []
        answer = await stream_answer(model, CONVERSATION, on_text=chunks.append)
        assert len(chunks) > 1 and "".join(chunks) == answer.content == expected
        assert answer.response_metadata["finish_reason"] == "stop" and answer.usage_metadata
        assert answer.usage_metadata["output_tokens"] == fake_openai.usages[-1]["completion_tokens"]
    assert len({r["peer"] for r in fake_openai.requests[first:]}) == 1
    await aclose_model(model)


def test_the_aiohttp_transport_takes_as_many_streams_as_the_sdks_own() -> None:
    """Each open answer holds a connection to the model: the aiohttp transport must allow the SDK's 1,000, not
    its own default of 100, past which the 101st stream waited for a free one until it timed out
    (bench/streams.py: 700 of 1,000 failed)."""
    from openai._constants import DEFAULT_CONNECTION_LIMITS

    model = make_chat_model(openai_api_key="sk-local-test", openai_base_url="http://127.0.0.1:9/v1")
    transport: Any = cast(Any, model).http_async_client._transport
    assert transport.limits.max_connections == DEFAULT_CONNECTION_LIMITS.max_connections == 1000
