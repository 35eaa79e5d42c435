"""The chat turn as a LangGraph state graph: condense (the search query from the conversation), retrieve, generate;
and handoff → wait_for_operator (an interrupt) when the shopper asks for a person or could not be helped twice.

The server compiles it with its PostgreSQL checkpointer (thread_id = session_id) and passes a
ChatContext holding the model and retriever. `langgraph dev` / Studio load it through
server/integrations/studio.py:make_graph, which hands it the service's retriever as
`default_retriever`; this package imports nothing from server/ or persistence/.
"""

from __future__ import annotations

import functools
import os
from datetime import UTC, datetime
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AnyMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.retrievers import BaseRetriever
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.config import get_config, get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime
from langgraph.types import interrupt

from graph.answer_stream import OnText, stream_answer
from graph.condense import needs_condensing, speaks_of, standalone_question, worth_a_model_call
from graph.handoff import UNANSWERED_LIMIT, asks_for_person, is_small_talk, language_of, notice, said_not_known
from graph.models import DECLINE_COVERAGE, ExtractiveChatModel, best_section, content_text, make_chat_model
from graph.prompts import CONDENSE_PROMPT, system_prompt
from graph.retrieval import Passage, sources_event
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
    scope: dict[str, Any] = {"k": ctx.k, "store_id": ctx.store_id, "audience": ctx.audience}
    ahead = ctx.search_ahead.take(retriever, question, **scope) if ctx.search_ahead is not None else None
    found = await retriever.ainvoke(question, **scope, **({"ahead": ahead} if ahead is not None else {}))
    asked = _last_question(state.get("messages", []))
    if question != asked and not any(speaks_of(asked, f"{d.metadata.get('title', '')} {d.page_content}")
                                     for d in found):
        # the carried-over topic drowned the question itself: if a search for it alone finds it, it was a new topic
        alone = await retriever.ainvoke(asked, k=ctx.k, store_id=ctx.store_id, audience=ctx.audience)
        if any(speaks_of(asked, f"{d.metadata.get('title', '')} {d.page_content}") for d in alone):
            found, question = alone, asked
    closest = [float(d.metadata["similarity"]) for d in found if d.metadata.get("similarity") is not None]
    if ctx.min_similarity is not None and closest and max(closest) < ctx.min_similarity \
            and not names_its_words(question, found):
        found = []  # nothing in the help centre is about this: the answer says so rather than guess
    passages = [Passage.from_document(doc) for doc in found]
    get_stream_writer()(sources_event([p.as_source() for p in passages]))  # for `custom` streams (a no-op else)
    return {"passages": [p.as_dict() for p in passages], "search_query": question}


# the share of a question's terms (graph/models.py best_section's coverage) that one passage must contain for its
# words to outweigh a low embedding similarity: a short question naming what the page names ("do you take amex",
# "토스페이 돼요") sits far from a whole section in the embedding space, but the page plainly speaks of it. The offline
# answerer's: below the similarity and below this coverage it would decline (graph/models.py DECLINE_COVERAGE).
WORDS_OVER_SIMILARITY = DECLINE_COVERAGE


def names_its_words(question: str, found: list[Any]) -> bool:
    """Whether a passage found contains enough of the question's words (WORDS_OVER_SIMILARITY of them)."""
    best = best_section(question, [(str(d.metadata.get("title", "")), d.page_content) for d in found])
    return best is not None and best.coverage >= WORDS_OVER_SIMILARITY


def searched_as_asked(question: str, ctx: ChatContext, before: list[BaseMessage]) -> bool:
    """Whether a turn's retrieve node will search for `question` itself, given the conversation `before` it (the
    thread's messages): it does not ask for a person (first_step) and condense keeps it as it is (a first turn,
    or no follow-up). The service begins that search beside the start of the run (graph/retrieval.py
    SearchAhead), so that the node finds it done."""
    if not question.strip() or (ctx.handoff and asks_for_person(question)):
        return False
    return not (ctx.history_aware and needs_condensing([*before, HumanMessage(question)]))


# offered to a language model (not to the offline answerer, which has the rule only): calling it hands the shopper
# to a person, for the ways of asking the rule of graph/handoff.py does not know
REQUEST_HUMAN = {
    "type": "function",
    "function": {
        "name": "request_human",
        "description": "Hand the conversation to a person from the store's support team. Call it only when the "
                       "shopper asks to talk to a person (a human, an operator, staff), in any wording or language.",
        "parameters": {"type": "object", "properties": {}},
    },
}


def _histories(messages: list[AnyMessage], keep: int) -> list[AnyMessage]:
    """The last `keep` messages, not starting inside a tool exchange (a provider refuses a tool result whose call
    was cut off)."""
    history = messages[-keep:]
    while history and isinstance(history[0], ToolMessage):
        history = history[1:]
    return history


def _token_writer() -> OnText:
    """Where no one gave the run a sink for the answer's text (`langgraph dev`, Studio): LangGraph's `custom`
    stream, one {"type": "token", "delta"} per chunk (its `messages` stream has them too: chunks_to_callbacks)."""
    write = get_stream_writer()
    return lambda text: write({"type": "token", "delta": text})


def first_step(state: ChatState, runtime: Runtime[ChatContext]) -> Literal["handoff", "condense"]:
    """A shopper who asks for a person is handed to one at once (the rule; a model may still recognise others)."""
    ctx = runtime.context or ChatContext()
    return "handoff" if ctx.handoff and asks_for_person(_last_question(state.get("messages", []))) else "condense"


async def generate(state: ChatState, runtime: Runtime[ChatContext]) -> dict[str, Any]:
    ctx = runtime.context or ChatContext()
    model = ctx.model or default_model()
    passages = [Passage(**p) for p in state.get("passages", [])]
    history = _histories(state.get("messages", []), ctx.history_messages)
    prompt: list[BaseMessage] = [SystemMessage(system_prompt(passages, ctx.prompt_variant, ctx.store_voice)), *history]
    tools = [REQUEST_HUMAN] if ctx.handoff and not isinstance(model, ExtractiveChatModel) else None
    try:
        response = await stream_answer(model, prompt, on_text=ctx.on_token or _token_writer(), tools=tools,
                                       callbacks=get_config().get("callbacks"), chunks_to_callbacks=not ctx.on_token)
    except Exception as exc:  # the caller must tell a model failure from a failure of ours
        raise ModelCallError(f"{type(exc).__name__} from the chat model") from exc
    if ctx.answer_id:
        response.id = ctx.answer_id
    # "had to say it does not know": the answer says so (a greeting it found nothing for does not count)
    could_not = said_not_known(content_text(response.content))
    if could_not and is_small_talk(_last_question(state.get("messages", []))):
        return {"messages": [response]}
    return {"messages": [response], "unanswered": state.get("unanswered", 0) + 1 if could_not else 0}


def after_answer(state: ChatState, runtime: Runtime[ChatContext]) -> Literal["handoff", "__end__"]:
    ctx = runtime.context or ChatContext()
    last = state.get("messages", [])[-1:]
    asked_by_model = bool(last and isinstance(last[0], AIMessage) and last[0].tool_calls)
    if ctx.handoff and (asked_by_model or state.get("unanswered", 0) >= UNANSWERED_LIMIT):
        return "handoff"
    return "__end__"


async def handoff(state: ChatState, runtime: Runtime[ChatContext]) -> dict[str, Any]:
    """Tell the shopper a person will reply (outside the store's hours: from when); the wait is the next node."""
    ctx = runtime.context or ChatContext()
    messages = state.get("messages", [])
    last = messages[-1] if messages else None
    out: list[BaseMessage] = []
    if isinstance(last, AIMessage) and last.tool_calls:  # the model asked for the handoff: its call is answered
        out += [ToolMessage("The shopper is being handed to a person.", tool_call_id=str(call["id"]))
                for call in last.tool_calls]
        reason = "model"
    elif isinstance(last, HumanMessage):
        reason = "asked"
    else:
        reason = "unanswered"
    now = datetime.now(UTC)
    language = language_of(_last_question(messages), (ctx.store_voice or {}).get("language"))
    answered = isinstance(last, AIMessage) and reason == "unanswered"
    # the notice is the turn's answer, or follows the answer that could not help (then it needs an id of its own)
    notice_id = f"{ctx.answer_id}-handoff" if ctx.answer_id and answered else ctx.answer_id
    out.append(AIMessage(notice(language, ctx.handoff_hours, now), id=notice_id))
    return {"messages": out, "handoff": {"reason": reason, "since": now.isoformat()}, "unanswered": 0}


async def wait_for_operator(state: ChatState) -> dict[str, Any]:
    """The thread stops here (Studio shows the interrupt) until an operator releases the session: the resume value
    carries what the shopper and the operator wrote meanwhile, {"messages": [{"role": "user"|"operator",
    "content", "id"?, "author"?}]}, which joins the conversation."""
    resumed = interrupt({"waiting_for": "operator", **(state.get("handoff") or {})})
    added: list[BaseMessage] = []
    for item in (resumed or {}).get("messages", []) if isinstance(resumed, dict) else []:
        text, mid = str(item.get("content", "")), item.get("id")
        if item.get("role") == "operator":
            added.append(AIMessage(text, id=mid, name="operator"))
        elif item.get("role") == "user":
            added.append(HumanMessage(text, id=mid))
    return {"messages": added, "handoff": None, "unanswered": 0}


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
    builder.add_node("handoff", handoff)
    builder.add_node("wait_for_operator", wait_for_operator)
    builder.add_conditional_edges(START, first_step, ["handoff", "condense"])
    builder.add_edge("condense", "retrieve")
    builder.add_edge("retrieve", "generate")
    builder.add_conditional_edges("generate", after_answer, ["handoff", END])
    builder.add_edge("handoff", "wait_for_operator")
    builder.add_edge("wait_for_operator", END)
    return builder.compile(checkpointer=checkpointer, name="sixshop-support-agent")
