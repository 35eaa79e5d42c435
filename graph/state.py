"""The graph's typed state and the per-run context the server hands it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypedDict

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AnyMessage
from langchain_core.retrievers import BaseRetriever
from langgraph.graph.message import add_messages

from graph.prompts import DEFAULT_VARIANT


class ChatState(TypedDict, total=False):
    # the conversation: kept in the thread's checkpoint, so it is the session's memory
    messages: Annotated[list[AnyMessage], add_messages]
    # what the latest question was searched for: the question itself, or a follow-up made to stand alone
    search_query: str
    # passages retrieved for the latest question (Passage.as_dict())
    passages: list[dict[str, Any]]
    # how many answers in a row said the help centre does not hold the answer (graph/handoff.py)
    unanswered: int
    # while the session waits for a person: {"reason": "asked"|"model"|"unanswered", "since": ISO time}; else None
    handoff: dict[str, Any] | None


@dataclass
class ChatContext:
    """What one run may vary. Missing pieces fall back to offline defaults (LangGraph Studio)."""

    store_id: str | None = None
    model: BaseChatModel | None = None
    retriever: BaseRetriever | None = None  # invoked with k= and store_id= (graph/retrieval.py)
    k: int = 4
    # who the session is: `shopper` or `seller` (the pages for them and for all); None: every page (Studio)
    audience: str | None = None
    # below this embedding similarity for the closest passage, the help centre is taken not to cover the question:
    # no passage goes to the model, which says so (calibrated per embedding model; None: no threshold)
    min_similarity: float | None = None
    # form the search query from the conversation (graph/condense.py); off only to measure what it adds
    history_aware: bool = True
    # the store's own words for the prompt (display_name, language, instructions); None: none
    store_voice: dict[str, str] | None = None
    history_messages: int = 20
    # hand the shopper to a person on request or after two answers in a row that could not help (graph/handoff.py)
    handoff: bool = True
    # the store's handoff hours {"timezone", "days", "from", "to"} (None: operators always in)
    handoff_hours: dict[str, Any] | None = None
    prompt_variant: str = DEFAULT_VARIANT
    # the id the answer gets in the thread's state (the service uses the assistant message's row id, so
    # the row, the checkpoint and every streamed chunk name the same message); None keeps the model's
    answer_id: str | None = None
    # where the answer's text goes chunk by chunk as the model streams it (graph/answer_stream.py); None: LangGraph's
    # `custom` stream writer
    on_token: Callable[[str], None] | None = None
    # the search of the question begun before the run (graph/retrieval.py SearchAhead); None: the node searches
    search_ahead: Any = None
