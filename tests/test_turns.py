"""A turn through IntegratedChatService on the embedded PostgreSQL, with the real ChatOpenAI client
pointed at the local OpenAI-compatible server: history from the checkpoint, usage from the provider,
and the final state of failed and cancelled turns."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from graph.prompts import CONDENSE_PROMPT
from server.errors import ValidationFailed
from server.resources import Resources, open_resources
from server.settings import Settings
from tests.conftest import fetch_all
from tests.fake_openai import CONDENSE_MARK, MODEL_REPORTED, FakeOpenAIServer


@pytest.fixture(scope="module")
async def res(database_url: str, fake_openai: FakeOpenAIServer, has_pgvector: bool) -> AsyncIterator[Resources]:
    settings = Settings(
        database_url=database_url, openai_api_key="sk-local-test", openai_base_url=fake_openai.base_url,
        openai_max_retries=0, db_pool_max=5,
        vector_store="auto" if has_pgvector else "none",  # the PostgreSQL 15 leg: full-text retrieval
    )
    async with open_resources(settings) as resources:
        yield resources


async def _events(res: Resources, session_id: Any, text: str) -> list[tuple[str, dict[str, Any]]]:
    turn = await res.chat.start_turn(session_id, text, {})
    return [e async for e in turn.stream()]


async def test_three_turns_keep_history_in_checkpoint_and_rows(
    res: Resources, fake_openai: FakeOpenAIServer, database_url: str
) -> None:
    session = await res.sessions.create("store-h", "shopper-1", {})
    before = len(fake_openai.chat_requests)
    questions = ["How much is shipping?", "And to Jeju?", "How do I return an item?"]
    answers = []
    for q in questions:
        events = await _events(res, session.session_id, q)
        assert [e for e, _ in events][:2] == ["metadata", "sources"]
        assert events[-1][0] == "done"
        answers.append(events[-1][1]["message"].content)

    # "And to Jeju?" leans on the question before: one short call rewrote it before the search (history-aware
    # retrieval); the first turn had none, and the answers' requests are the other three
    asked = [r["body"] for r in fake_openai.chat_requests[before:]]
    condensing = [b for b in asked if b["messages"][0]["content"].startswith(CONDENSE_MARK)]
    answering = [b for b in asked if b not in condensing]
    assert len(answering) == 3 and len(condensing) <= 2
    assert condensing[0]["messages"][0]["content"] == CONDENSE_PROMPT
    assert condensing[0]["messages"][1]["content"].endswith("Last message: And to Jeju?")
    assert "Shopper: How much is shipping?" in condensing[0]["messages"][1]["content"]
    # the model saw the earlier turns: the third request carries both earlier Q&A pairs
    third = answering[2]
    roles = [m["role"] for m in third["messages"]]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
    assert [m["content"] for m in third["messages"] if m["role"] == "user"] == questions
    assert [m["content"] for m in third["messages"] if m["role"] == "assistant"] == answers[:2]
    assert answers[2].startswith("I saw 3 user messages")
    assert third["stream"] is True and third["stream_options"] == {"include_usage": True}
    # retrieved passages went into the system prompt
    system = third["messages"][0]["content"]
    assert "<passage" in system and 'url="https://help.haneul-goods.example/' in system
    # the prompt confines the model to the passages and asks it to say so, in the shopper's language
    assert "using only the help-centre passages" in system and "If they do not contain the answer" in system
    assert "Answer in the language the shopper wrote in" in system

    # the checkpoint holds the conversation ...
    state = await res.chat.graph.aget_state({"configurable": {"thread_id": str(session.session_id)}})
    assert state.values["search_query"] in ("How do I return an item?", "And to Jeju? How do I return an item?")
    assert [m.type for m in state.values["messages"]] == ["human", "ai"] * 3
    # ... and chat_messages the business rows, in order
    rows = await res.messages.list(session.session_id, limit=100, before=None)
    assert [(r["role"], r["status"]) for r in rows] == [("user", "complete"), ("assistant", "complete")] * 3
    assert [r["content"] for r in rows if r["role"] == "user"] == questions


async def test_stored_usage_is_exactly_the_providers(res: Resources, fake_openai: FakeOpenAIServer) -> None:
    session = await res.sessions.create("store-u", None, {})
    events = await _events(res, session.session_id, "What payment methods do you accept?")
    done = events[-1][1]["message"]
    usage = fake_openai.usages[-1]
    assert (done.input_tokens, done.output_tokens) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert done.model == MODEL_REPORTED  # the provider's own model name, from the stream
    stored = fetch_all(res.settings.conninfo() or "", "select input_tokens, output_tokens, latency_ms, first_token_ms "
                       "from chat_messages where message_id = %s", (done.message_id,))[0]
    assert (stored["input_tokens"], stored["output_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert 0 < stored["first_token_ms"] <= stored["latency_ms"]
    fresh = await res.sessions.get(session.session_id)
    assert (fresh.input_tokens, fresh.output_tokens, fresh.message_count) == (
        usage["prompt_tokens"], usage["completion_tokens"], 2)
    tokens = "".join(d["delta"] for e, d in events if e == "token")
    assert tokens == done.content


@pytest.mark.parametrize("marker", ["[[fail]]", "[[truncate]]", "[[error_event]]"])
async def test_model_cut_mid_stream_is_stored_as_error_and_session_stays_usable(res: Resources, marker: str) -> None:
    session = await res.sessions.create("store-f", None, {})
    events = await _events(res, session.session_id, f"{marker} tell me")
    kinds = [e for e, _ in events]
    assert kinds[-1] == "error" and events[-1][1]["code"] == "model_error"
    assert "done" not in kinds
    partial = "".join(d["delta"] for e, d in events if e == "token")
    rows = await res.messages.list(session.session_id, limit=10, before=None)
    assert [(r["role"], r["status"]) for r in rows] == [("user", "complete"), ("assistant", "error")]
    assert rows[1]["content"] == partial and rows[1]["error_code"] == "model_error"
    # the claim was released: the next turn runs
    again = await _events(res, session.session_id, "hello again")
    assert again[-1][0] == "done"


async def test_http_error_from_model_before_streaming(res: Resources) -> None:
    session = await res.sessions.create("store-f", None, {})
    events = await _events(res, session.session_id, "[[http500]]")
    assert events[-1] == ("error", {"code": "model_error", "message": "The language model failed to answer",
                                    "message_id": events[0][1]["message_id"]})


async def test_consumer_leaving_cancels_the_turn_and_keeps_partial_content(
    res: Resources, fake_openai: FakeOpenAIServer
) -> None:
    session = await res.sessions.create("store-c", None, {})
    turn = await res.chat.start_turn(session.session_id, "[[slow]] please", {}, on_disconnect="cancel")
    seen = 0
    stream = turn.stream()
    async for event, _ in stream:
        if event == "token":
            seen += 1
            if seen == 3:
                break
    await stream.aclose()  # what the HTTP layer does when the client goes away
    await asyncio.wait_for(turn.finished.wait(), 10)
    row = (await res.messages.list(session.session_id, limit=10, before=None))[-1]
    assert row["status"] == "cancelled" and row["error_code"] == "cancelled"
    assert row["content"].startswith("tok0 tok1 tok2")
    assert len(row["content"].split()) < 60
    assert (await res.sessions.get(session.session_id)).turn_running is False


class _BrokenRetriever(BaseRetriever):
    """A retriever whose backend is down: the failure is ours, not the model's."""

    def _get_relevant_documents(self, query: str, *, run_manager: Any, **kwargs: Any) -> list[Document]:
        raise RuntimeError("index unavailable")


async def test_server_side_failure_is_stored_as_internal_error(res: Resources) -> None:
    from server.services.chat import IntegratedChatService

    chat = IntegratedChatService(
        graph=res.chat.graph, messages=res.messages, model=res.chat.model, retriever=_BrokenRetriever(),
        turn_timeout=res.chat.turn_timeout, expire_after=res.chat.expire_after, max_message_chars=100,
        max_metadata_bytes=100, retrieval_k=2, history_messages=4, prompt_variant="v1",
    )
    session = await res.sessions.create("store-x", None, {})
    turn = await chat.start_turn(session.session_id, "anything", {})
    events = [e async for e in turn.stream()]
    assert events[-1][0] == "error" and events[-1][1]["code"] == "internal_error"
    assert "index unavailable" not in str(events)  # no internals leak to the client
    rows = await res.messages.list(session.session_id, limit=10, before=None)
    assert [(r["role"], r["status"], r["error_code"]) for r in rows] == [
        ("user", "complete", None), ("assistant", "error", "internal_error")]
    assert (await res.sessions.get(session.session_id)).turn_running is False


async def test_prompt_variants_split_sessions_and_stick(res: Resources, fake_openai: FakeOpenAIServer) -> None:
    from server.services.chat import IntegratedChatService

    chat = IntegratedChatService(
        graph=res.chat.graph, messages=res.messages, model=res.chat.model, retriever=res.chat.retriever,
        turn_timeout=res.chat.turn_timeout, expire_after=res.chat.expire_after, max_message_chars=500,
        max_metadata_bytes=500, retrieval_k=2, history_messages=4, prompt_variant="v1:1,v2:1",
    )
    seen: dict[str, list[str]] = {}
    for _ in range(40):  # until both variants were drawn (uuid4 ids: 2**-39 odds of not by then)
        if len(seen) >= 4 and {v[0] for v in seen.values()} == {"v1", "v2"}:
            break
        session = await res.sessions.create("store-ab", None, {})
        for question in ("How much is shipping?", "And returns?"):
            turn = await chat.start_turn(session.session_id, question, {})
            events = [e async for e in turn.stream()]
            assert events[-1][0] == "done"
            system = fake_openai.chat_requests[-1]["body"]["messages"][0]["content"]  # the answer's request
            variant = events[-1][1]["message"].prompt_variant
            assert ("cite the passage" in system) == (variant == "v2")  # the model got that variant's prompt
            seen.setdefault(str(session.session_id), []).append(variant)
    assert all(len(set(v)) == 1 for v in seen.values())  # sticky within a session
    assert {v[0] for v in seen.values()} == {"v1", "v2"}  # and both variants in use


async def test_checkpoint_storage_stays_linear(res: Resources, database_url: str) -> None:
    """After each turn only the latest checkpoint is kept; it still holds the whole conversation."""
    session = await res.sessions.create("store-ck", None, {})
    thread = str(session.session_id)
    logical_sql = """
        select (select sum(octet_length(blob)) from checkpoint_blobs where thread_id = %(t)s)
             + (select coalesce(sum(octet_length(blob)), 0) from checkpoint_writes where thread_id = %(t)s) as n"""
    sizes = {}
    for i in range(1, 13):
        turn = await res.chat.start_turn(session.session_id, f"Question number {i}: how much is shipping to Jeju?", {})
        events = [e async for e in turn.stream()]
        assert events[-1][0] == "done"
        assert turn.task is not None
        await turn.task  # the prune runs after the answer is out
        if i in (6, 12):
            sizes[i] = int(fetch_all(database_url, logical_sql, {"t": thread})[0]["n"])
    counts = fetch_all(database_url, "select (select count(*) from checkpoints where thread_id = %(t)s) as c, "
                                     "(select count(*) from checkpoint_writes where thread_id = %(t)s) as w",
                       {"t": thread})[0]
    assert counts == {"c": 1, "w": 0}
    # every blob left is one the latest checkpoint uses: pruning leaves no garbage behind
    unused = fetch_all(database_url, """
        select count(*) as n from checkpoint_blobs b
         where b.thread_id = %(t)s and not exists (
            select 1 from checkpoints c where c.thread_id = b.thread_id
               and c.checkpoint -> 'channel_versions' ->> b.channel = b.version)""", {"t": thread})
    assert unused == [{"n": 0}]
    assert sizes[12] < 2.3 * sizes[6]  # linear growth (a copy per step would be about 4x)
    state = await res.chat.graph.aget_state({"configurable": {"thread_id": thread}})
    assert len(state.values["messages"]) == 24  # the history the model and Studio need is all there


async def test_a_model_that_hangs_mid_stream_times_out(res: Resources, fake_openai: FakeOpenAIServer,
                                                       database_url: str) -> None:
    from datetime import timedelta

    from graph.models import aclose_model, make_chat_model
    from server.services.chat import IntegratedChatService

    def chat_with(model: Any, turn_timeout_s: float) -> IntegratedChatService:
        return IntegratedChatService(
            graph=res.chat.graph, messages=res.messages, model=model, retriever=res.chat.retriever,
            turn_timeout=timedelta(seconds=turn_timeout_s), expire_after=res.chat.expire_after,
            max_message_chars=500, max_metadata_bytes=500, retrieval_k=2, history_messages=4, prompt_variant="v1",
        )

    # the client's own read timeout: the provider call fails, the turn is a model error
    impatient = make_chat_model(openai_api_key="sk-local-test", openai_base_url=fake_openai.base_url,
                                model_name="gpt-4o-mini", temperature=0, timeout_s=0.5, max_retries=0,
                                offline_chunk_delay_s=0)
    session = await res.sessions.create("store-hang", None, {})
    turn = await chat_with(impatient, 30).start_turn(session.session_id, "[[stall]] hello", {})
    events = [e async for e in turn.stream()]
    assert events[-1][0] == "error" and events[-1][1]["code"] == "model_error"
    await aclose_model(impatient)
    # the turn's own deadline, whatever the client does
    session = await res.sessions.create("store-hang", None, {})
    turn = await chat_with(res.chat.model, 1).start_turn(session.session_id, "[[stall]] hello", {})
    events = [e async for e in turn.stream()]
    assert events[-1][0] == "error" and events[-1][1]["code"] == "model_error"
    row = fetch_all(database_url, "select status, error_code, content from chat_messages where message_id = %s",
                    (turn.message_id,))[0]
    assert (row["status"], row["error_code"]) == ("error", "timeout") and row["content"].startswith("I saw")
    assert (await res.sessions.get(session.session_id)).turn_running is False


async def test_a_sessions_audience_decides_which_pages_answer(res: Resources) -> None:
    """metadata.audience (default shopper): a shopper's turn is never answered from the seller guide, a seller's
    is; the audience reaches the trace metadata; an unknown audience is refused when the session is created."""
    asked = "When are settlements paid to my bank account?"
    shopper = await res.sessions.create("store-t", None, {})
    seller = await res.sessions.create("store-t", None, {"audience": "seller"})
    pages = {}
    for name, session in (("shopper", shopper), ("seller", seller)):
        events = await _events(res, session.session_id, asked)
        sources = next(data["sources"] for event, data in events if event == "sources")
        pages[name] = {s["id"].rsplit("#", 1)[0] for s in sources}
        assert events[-1][0] == "done"
    assert not pages["shopper"] & {"sample:en/store-setup.md", "sample:ko/store-setup.md"}
    assert "sample:en/store-setup.md" in pages["seller"]
    with pytest.raises(ValidationFailed) as refused:
        await res.sessions.create("store-t", None, {"audience": "admin"})
    assert refused.value.detail["field"] == "metadata.audience"


async def test_a_turn_reads_its_thread_with_its_claim_and_begins_its_search_ahead(
    res: Resources, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the first token: the thread's checkpoint comes in the round trip that claims the session (the
    stock saver's read is not called), and a question searched as it is (a first turn; one that stands alone)
    has its search begun beside the run's start, which the retrieve node takes; a follow-up's search is the
    node's own (its query comes from the conversation). Answers and history are as ever."""
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

    from graph.retrieval import ScopedRetriever

    stock_reads: list[Any] = []
    searches: list[tuple[str, bool]] = []
    read, search = AsyncPostgresSaver.aget_tuple, ScopedRetriever._aget_relevant_documents

    async def counted_read(self: AsyncPostgresSaver, config: Any) -> Any:
        stock_reads.append(config)
        return await read(self, config)

    async def seen_search(self: ScopedRetriever, query: str, *, run_manager: Any, **kwargs: Any) -> Any:
        if self is res.chat.retriever:
            searches.append((query, "ahead" in kwargs))
        return await search(self, query, run_manager=run_manager, **kwargs)

    monkeypatch.setattr(AsyncPostgresSaver, "aget_tuple", counted_read)
    monkeypatch.setattr(ScopedRetriever, "_aget_relevant_documents", seen_search)
    session = await res.sessions.create("store-ahead", "shopper-1", {})
    first = await _events(res, session.session_id, "How much is shipping?")
    follow_up = await _events(res, session.session_id, "And to Jeju?")
    alone = await _events(res, session.session_id, "How do I return an item I bought with a credit card?")
    assert [e[-1][0] for e in (first, follow_up, alone)] == ["done"] * 3
    assert stock_reads == []
    assert searches[0] == ("How much is shipping?", True)
    assert searches[1][1] is False and "Jeju" in searches[1][0]
    assert searches[-1] == ("How do I return an item I bought with a credit card?", True)
    state = await res.chat.graph.aget_state({"configurable": {"thread_id": str(session.session_id)}})
    assert [m.content for m in state.values["messages"] if m.type == "human"] == [
        "How much is shipping?", "And to Jeju?", "How do I return an item I bought with a credit card?"]
