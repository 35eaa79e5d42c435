"""The chat turn as a LangGraph state graph: condense (the search query from the conversation), retrieve, generate.

The server compiles it with its PostgreSQL checkpointer (thread_id = session_id) and passes a
ChatContext holding the model and retriever. `langgraph dev` / Studio load it through
server/integrations/studio.py:make_graph, which hands it the service's retriever as
`default_retriever`; this package imports nothing from server/ or persistence/.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AnyMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.retrievers import BaseRetriever
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime

from graph.condense import needs_condensing, speaks_of, standalone_question, worth_a_model_call
from graph.models import ExtractiveChatModel, content_text, make_chat_model
from graph.prompts import CONDENSE_PROMPT, system_prompt
from graph.retrieval import Passage
from graph.state import ChatContext, ChatState


@functools.cache
def default_model() -> BaseChatModel:
    """The model when the caller gives none (`langgraph dev`, Studio): ChatOpenAI when OPENAI_API_KEY is
    in their environment (OPENAI_BASE_URL honoured), else the offline extractive answerer."""
    return make_chat_model(
        openai_api_key=os.environ.get("OPENAI_API_KEY") or None,
        openai_base_url=os.environ.get("OPENAI_BASE_URL") or None,
        model_name=os.environ.get("OPENAI_MODEL") or "gpt-4o-mini",
        max_retries=0,
    )


class ModelCallError(RuntimeError):
    """The chat model failed (network, provider error, a stream cut mid-way)."""


def _last_question(messages: list[AnyMessage]) -> str:
    for message in reversed(messages):
        if isinstance(message, HumanMessage):
            return content_text(message.content)
    return ""


def _transcript(messages: list[AnyMessage]) -> str:
    lines = []
    for message in messages:
        role = "Shopper" if isinstance(message, HumanMessage) else "Assistant"
        lines.append(f"{role}: {content_text(message.content)}")
    return "\n".join(lines)


async def condense(state: ChatState, runtime: Runtime[ChatContext]) -> dict[str, Any]:
    """The search query: the question itself on a session's first turn and when it stands alone; for a question
    that plainly points back, the model's rewrite (a short call traced as `condense`); for another short one, and
    offline, the rule of graph/condense.py."""
    ctx = runtime.context or ChatContext()
    messages = state.get("messages", [])
    question = _last_question(messages)
    if not ctx.history_aware or not needs_condensing(messages):
        return {"search_query": question}
    model = ctx.model or default_model()
    if isinstance(model, ExtractiveChatModel) or not worth_a_model_call(messages):
        return {"search_query": standalone_question(messages)}
    prompt: list[BaseMessage] = [
        SystemMessage(CONDENSE_PROMPT),
        HumanMessage(f"{_transcript(messages[-ctx.history_messages:-1])}\n\nLast message: {question}"),
    ]
    try:
        response = await model.ainvoke(prompt, {"run_name": "condense", "tags": ["condense"]})
    except Exception:  # the answer's own call will say whether the model is down; search with the rule meanwhile
        return {"search_query": standalone_question(messages)}
    return {"search_query": content_text(response.content).strip() or standalone_question(messages)}


async def retrieve(state: ChatState, runtime: Runtime[ChatContext],
                   default_retriever: BaseRetriever | None = None) -> dict[str, Any]:
    ctx = runtime.context or ChatContext()
    retriever = ctx.retriever or default_retriever
    question = state.get("search_query") or _last_question(state.get("messages", []))
    if retriever is None or not question.strip():
        return {"passages": []}
    found = await retriever.ainvoke(question, k=ctx.k, store_id=ctx.store_id, audience=ctx.audience)
    asked = _last_question(state.get("messages", []))
    if question != asked and not any(speaks_of(asked, f"{d.metadata.get('title', '')} {d.page_content}")
                                     for d in found):
        # the carried-over topic drowned the question itself: if a search for it alone finds it, it was a new topic
        alone = await retriever.ainvoke(asked, k=ctx.k, store_id=ctx.store_id, audience=ctx.audience)
        if any(speaks_of(asked, f"{d.metadata.get('title', '')} {d.page_content}") for d in alone):
            found, question = alone, asked
    closest = [float(d.metadata["similarity"]) for d in found if d.metadata.get("similarity") is not None]
    if ctx.min_similarity is not None and closest and max(closest) < ctx.min_similarity:
        found = []  # nothing in the help centre is about this: the answer says so rather than guess
    return {"passages": [Passage.from_document(doc).as_dict() for doc in found], "search_query": question}


async def generate(state: ChatState, runtime: Runtime[ChatContext]) -> dict[str, Any]:
    ctx = runtime.context or ChatContext()
    model = ctx.model or default_model()
    passages = [Passage(**p) for p in state.get("passages", [])]
    history = state.get("messages", [])[-ctx.history_messages :]
    prompt: list[BaseMessage] = [SystemMessage(system_prompt(passages, ctx.prompt_variant, ctx.store_voice)), *history]
    try:
        response = await model.ainvoke(prompt)
    except Exception as exc:  # the caller must tell a model failure from a failure of ours
        raise ModelCallError(f"{type(exc).__name__} from the chat model") from exc
    if ctx.answer_id:
        response.id = ctx.answer_id
    return {"messages": [response]}


def build_graph(
    checkpointer: BaseCheckpointSaver[Any] | None = None, *, default_retriever: BaseRetriever | None = None
) -> CompiledStateGraph[Any, Any, Any, Any]:
    """The graph; `default_retriever` serves runs whose context brings none (Studio's)."""
    builder = StateGraph(ChatState, context_schema=ChatContext)

    async def retrieve_node(state: ChatState, runtime: Runtime[ChatContext]) -> dict[str, Any]:
        return await retrieve(state, runtime, default_retriever)

    builder.add_node("condense", condense)
    builder.add_node("retrieve", retrieve_node)
    builder.add_node("generate", generate)
    builder.add_edge(START, "condense")
    builder.add_edge("condense", "retrieve")
    builder.add_edge("retrieve", "generate")
    builder.add_edge("generate", END)
    return builder.compile(checkpointer=checkpointer, name="sixshop-support-agent")
