"""`langgraph dev` (LangGraph's Agent Server, what Studio talks to) on this repository's langgraph.json:
offline, no key, telemetry off; a run streamed through it with langgraph_sdk retrieves from the
service's knowledge base and answers from it, with Studio's own checkpointer."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from langgraph_sdk import get_client

from tests.conftest import fetch_all
from tests.server_process import ChildProcess, free_port

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def langgraph_dev(database_url: str) -> Iterator[str]:
    port = free_port()
    proc = ChildProcess(
        [str(Path(sys.executable).parent / "langgraph"), "dev", "--no-browser", "--no-reload",
         "--host", "127.0.0.1", "--port", str(port)],
        {"LANGSMITH_TRACING": "false", "LANGGRAPH_CLI_NO_ANALYTICS": "1", "DATABASE_URL": database_url,
         "OPENAI_API_KEY": "", "PINECONE_API_KEY": "", "LANGSMITH_API_KEY": ""},
        f"http://127.0.0.1:{port}/ok",
    )
    with proc:
        yield f"http://127.0.0.1:{port}"


async def test_a_run_in_langgraph_dev_retrieves_and_answers_like_the_service(
    langgraph_dev: str, database_url: str
) -> None:
    client = get_client(url=langgraph_dev, api_key=None)
    assistants = await client.assistants.search(graph_id="agent")
    assert assistants and assistants[0]["graph_id"] == "agent"
    thread = await client.threads.create()
    tokens, events, errors = [], [], []
    async for part in client.runs.stream(thread["thread_id"], "agent", stream_mode="messages-tuple",
                                         input={"messages": [{"role": "user", "content": "How much is shipping?"}]}):
        events.append(part.event)
        if part.event == "error":
            errors.append(part.data)
        if part.event == "messages" and part.data[1].get("langgraph_node") == "generate":
            tokens.append(part.data[0]["content"])
    assert not errors and len(tokens) > 3, errors  # the answer streamed token by token

    state = await client.threads.get_state(thread["thread_id"])
    passages = state["values"]["passages"]
    assert passages and passages[0]["title"].startswith("Shipping and delivery")  # retrieved from our index
    answer = state["values"]["messages"][-1]
    assert answer["type"] == "ai" and "3,000 KRW" in answer["content"]  # answered from the passages
    assert answer["response_metadata"]["model_name"] == "offline-extractive-v1"  # and says it is offline
    # the knowledge base it searched is the service's: the sample, indexed into this database
    assert fetch_all(database_url, "select count(*) as n from knowledge_documents")[0]["n"] >= 16


async def test_a_handoff_is_an_interrupt_that_studio_shows_and_resumes(langgraph_dev: str) -> None:
    """Asking for a person stops the thread at `wait_for_operator` (interrupt()): LangGraph's server reports the
    thread `interrupted` with the interrupt's value, as Studio shows it; resuming with Command(resume=...) adds
    what the operator wrote and the thread is idle again."""
    client = get_client(url=langgraph_dev, api_key=None)
    thread = await client.threads.create()
    await client.runs.wait(thread["thread_id"], "agent",
                           input={"messages": [{"role": "user", "content": "상담원 연결해 주세요"}]})
    waiting = await client.threads.get(thread["thread_id"])
    assert waiting["status"] == "interrupted"
    state = await client.threads.get_state(thread["thread_id"])
    assert state["next"] == ["wait_for_operator"]
    (interrupt,) = [i for task in state["tasks"] for i in task["interrupts"]]
    assert interrupt["value"]["waiting_for"] == "operator" and interrupt["value"]["reason"] == "asked"
    assert "상담원" in state["values"]["messages"][-1]["content"]  # the shopper was told

    await client.runs.wait(thread["thread_id"], "agent", command={"resume": {"messages": [
        {"role": "operator", "content": "안녕하세요, 상담원입니다.", "id": "op-1"}]}})
    released = await client.threads.get(thread["thread_id"])
    assert released["status"] == "idle"
    messages = (await client.threads.get_state(thread["thread_id"]))["values"]["messages"]
    assert messages[-1]["content"] == "안녕하세요, 상담원입니다." and messages[-1]["name"] == "operator"
