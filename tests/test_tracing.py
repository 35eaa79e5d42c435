"""LangSmith tracing and feedback through the real `langsmith` client, against tests/fake_langsmith.py."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any
from uuid import UUID

import pytest

from server.integrations.tracing import HIDDEN, Tracing, feedback_id
from server.resources import Resources, open_resources
from server.settings import Settings
from tests.fake_langsmith import API_KEY, FakeLangSmithServer, project
from tests.fake_openai import FakeOpenAIServer


def _settings(database_url: str, fake_openai: FakeOpenAIServer, endpoint: str, **extra: Any) -> Settings:
    return Settings(database_url=database_url, langsmith_api_key=API_KEY, langsmith_endpoint=endpoint,  # type: ignore[arg-type]
                    langsmith_project="sixshop-test", openai_api_key="sk-local-test",  # type: ignore[arg-type]
                    openai_base_url=fake_openai.base_url, openai_max_retries=0,
                    **{"langsmith_flush_timeout_seconds": 5, **extra})


@pytest.fixture(scope="module")
def langsmith() -> Iterator[FakeLangSmithServer]:
    with FakeLangSmithServer() as srv:
        yield srv


@pytest.fixture(scope="module")
async def res(database_url: str, fake_openai: FakeOpenAIServer, langsmith: FakeLangSmithServer,
              pool: Any) -> AsyncIterator[Resources]:
    async with open_resources(_settings(database_url, fake_openai, langsmith.api_url)) as r:
        yield r


async def _turn(res: Resources, text: str, store: str = "store-t", user: str | None = "shopper-9"
                ) -> tuple[UUID, UUID, list[tuple[str, Any]]]:
    session = await res.sessions.create(store, user, {})
    turn = await res.chat.start_turn(session.session_id, text, {})
    events = [e async for e in turn.stream()]
    return session.session_id, turn.message_id, events


async def _flush(res: Resources) -> None:
    await asyncio.to_thread(res.tracing.client.flush, 10)


async def test_a_streamed_turn_is_one_trace_with_its_metadata_and_usage(
    res: Resources, langsmith: FakeLangSmithServer
) -> None:
    session_id, message_id, events = await _turn(res, "How much is shipping?")
    assert events[-1][0] == "done"
    stored = events[-1][1]["message"]
    await _flush(res)
    root = langsmith.runs[str(message_id)]  # run id = the assistant message id
    assert root["name"] == "chat_turn" and root["trace_id"] == str(message_id) and root.get("end_time")
    assert root["session_name"] == "sixshop-test" and "env:test" in root["tags"]
    meta = root["extra"]["metadata"]
    assert {k: meta[k] for k in ("session_id", "store_id", "user_id", "prompt_variant", "model")} == {
        "session_id": str(session_id), "store_id": "store-t", "user_id": "shopper-9", "prompt_variant": "v1",
        "model": "gpt-4o-mini"}
    assert meta["app_version"] == "0.1.0"
    assert root["inputs"]["messages"][0]["content"] == "How much is shipping?"
    trace = langsmith.runs_of_trace(str(message_id))
    assert {r["name"] for r in trace} >= {"chat_turn", "retrieve", "generate", "ChatOpenAI",
                                           "hybrid(pgvector+postgres-fts)", "pgvector", "postgres-fts"}
    (llm,) = [r for r in trace if r["run_type"] == "llm"]
    usage = llm["extra"]["metadata"]["usage_metadata"]
    assert (usage["input_tokens"], usage["output_tokens"]) == (stored.input_tokens, stored.output_tokens)
    # the answer is read from the model client's own stream (graph/answer_stream.py), yet its LLM run is whole:
    # under the generate node, with the prompt, the answer, and the first token's time as LangSmith records it
    (generate,) = [r for r in trace if r["name"] == "generate"]
    assert llm["parent_run_id"] == generate["id"]
    assert llm["inputs"]["messages"][0][-1]["kwargs"]["content"] == "How much is shipping?"
    answer = llm["outputs"]["generations"][0][0]["message"]["kwargs"]
    assert answer["content"] == stored.content and answer["response_metadata"]["finish_reason"] == "stop"
    (first, *_) = [e for e in llm["events"] if e["name"] == "new_token"]
    assert llm["start_time"] <= first["time"] < llm["end_time"]
    assert all(r["api_key_ok"] for r in langsmith.requests)


async def test_a_follow_up_is_condensed_in_a_child_run_of_its_own(res: Resources,
                                                                  langsmith: FakeLangSmithServer) -> None:
    """History-aware retrieval with a model: "And to Jeju?" is rewritten by a short model call, traced as its own
    `condense` run inside the turn's trace (beside retrieve and generate), and its tokens are billed on the turn."""
    session = await res.sessions.create("store-t", "shopper-9", {})
    for question in ("How long does delivery take?", "And to Jeju?"):
        turn = await res.chat.start_turn(session.session_id, question, {})
        events = [e async for e in turn.stream()]
        assert events[-1][0] == "done"
    await _flush(res)
    trace = langsmith.runs_of_trace(str(turn.message_id))
    names = [r["name"] for r in trace]
    assert "condense" in names and "retrieve" in names and "generate" in names
    (condensing,) = [r for r in trace if r["name"] == "condense" and r["run_type"] == "llm"]
    assert "Last message: And to Jeju?" in json.dumps(condensing["inputs"])
    generated = [r for r in trace if r["run_type"] == "llm" and r["name"] != "condense"]
    stored = events[-1][1]["message"]
    billed = sum(r["extra"]["metadata"]["usage_metadata"]["output_tokens"] for r in [condensing, *generated])
    assert stored.output_tokens == billed  # the rewrite's tokens are on the turn too


async def test_the_operator_transcript_links_each_answer_to_its_trace(res: Resources) -> None:
    from persistence.admin import AdminRepository

    session_id, message_id, events = await _turn(res, "Can I return an item?")
    assert events[-1][0] == "done"
    rows = await AdminRepository(res.pool).transcript(session_id)
    answer = next(r for r in rows if r["role"] == "assistant")
    url = await res.tracing.trace_url(answer["run_id"])
    proj = project(res.tracing.project)  # the LangSmith project, as the server lists it
    assert url is not None and url.endswith(
        f"/o/{proj['tenant_id']}/projects/p/{proj['id']}/r/{message_id}?poll=true")  # langsmith's run URL
    assert url.startswith("http")
    assert await Tracing.disabled().trace_url(message_id) is None


async def test_a_failed_turn_is_an_errored_run(res: Resources, langsmith: FakeLangSmithServer) -> None:
    _, message_id, events = await _turn(res, "[[http500]] please fail")
    assert events[-1][0] == "error" and events[-1][1]["code"] == "model_error"
    await _flush(res)
    root = langsmith.runs[str(message_id)]
    assert "ModelCallError" in root["error"]
    (llm,) = [r for r in langsmith.runs_of_trace(str(message_id)) if r["run_type"] == "llm"]
    assert "InternalServerError" in llm["error"]


async def test_feedback_reaches_the_run_and_updates(res: Resources, langsmith: FakeLangSmithServer,
                                                    database_url: str, fake_openai: FakeOpenAIServer) -> None:
    from litestar.testing import AsyncTestClient

    from server.http.app import create_app

    _, message_id, _ = await _turn(res, "Do you ship to Japan?")
    await _flush(res)  # the run (and with it the project) exists before anyone rates the answer
    app = create_app(_settings(database_url, fake_openai, langsmith.api_url))
    async with AsyncTestClient(app) as client:
        first = await client.post(f"/api/session-chat/messages/{message_id}/feedback",
                                  json={"score": 0, "comment": "wrong country"})
        assert first.status_code == 201
        fid = str(feedback_id(message_id))
        assert langsmith.wait_for(lambda s: fid in s.feedback)
        fb = langsmith.feedback[fid]
        assert (fb["run_id"], fb["key"], fb["score"], fb["comment"]) == (str(message_id), "user_score", 0,
                                                                         "wrong country")
        assert fb["session_id"] == project("sixshop-test")["id"]  # the project the run was traced to
        again = await client.post(f"/api/session-chat/messages/{message_id}/feedback", json={"score": 1})
        assert again.status_code == 201
        assert langsmith.wait_for(lambda s: s.feedback[fid]["score"] == 1)
        assert langsmith.feedback_updates == 1
        assert langsmith.feedback[fid]["comment"] is None  # the second feedback replaced the first


async def test_hidden_content_keeps_metadata_and_usage(database_url: str, fake_openai: FakeOpenAIServer) -> None:
    with FakeLangSmithServer() as ls:
        async with open_resources(_settings(database_url, fake_openai, ls.api_url, trace_hide_content=True)) as res:
            _, message_id, events = await _turn(res, "My secret address is 12 Private Lane")
            await _flush(res)
        assert events[-1][0] == "done"
        trace = ls.runs_of_trace(str(message_id))
        leaks = [(r["name"], k) for r in trace for k, v in r.items() if "Private Lane" in str(v)]
        assert trace and not leaks, leaks
        root = ls.runs[str(message_id)]
        assert root["inputs"]["messages"][0]["content"] == HIDDEN
        assert root["extra"]["metadata"]["store_id"] == "store-t"
        (llm,) = [r for r in trace if r["run_type"] == "llm"]
        assert llm["extra"]["metadata"]["usage_metadata"]["output_tokens"] == events[-1][1]["message"].output_tokens


def _dead_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


async def test_langsmith_down_or_slow_never_holds_a_turn(database_url: str, fake_openai: FakeOpenAIServer) -> None:
    async with open_resources(_settings(database_url, fake_openai, _dead_endpoint(),
                                        langsmith_flush_timeout_seconds=1)) as res:
        _, _, events = await _turn(res, "Do you ship to Japan?")
        assert events[-1][0] == "done" and events[-1][1]["message"].status == "complete"
    with FakeLangSmithServer(delay_s=3) as slow:
        async with open_resources(_settings(database_url, fake_openai, slow.api_url,
                                            langsmith_flush_timeout_seconds=1)) as res:
            ids = []
            for _ in range(2):
                _, message_id, events = await _turn(res, "How do I return an item?")
                assert events[-1][0] == "done"
                ids.append(str(message_id))
            # both turns finished while LangSmith had not yet answered a single request
            assert not slow.first_answer_done.is_set()
        # the traces still arrive, late; wait for every batch's answer before the server goes away

        def delivered(s: FakeLangSmithServer) -> bool:
            sent = sum(r["path"] == "/runs/multipart" for r in s.requests)
            return all(s.runs.get(i, {}).get("end_time") for i in ids) and s.answered.count("/runs/multipart") == sent

        assert await asyncio.to_thread(slow.wait_for, delivered, 30)
