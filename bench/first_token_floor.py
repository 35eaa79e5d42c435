"""The first token's floor on this machine: what the libraries alone take from a question to the model's first
token, without our HTTP server, database or turn bookkeeping, layer by layer, on uvloop as the server runs.

    python bench/first_token_floor.py [--runs 40]

The local model (tests/fake_openai.py, its own process) answers one token 600 ms after each request; each layer
asks sequentially and the figure is the time to the first token minus those 600 ms (p50, p90), as
bench/turn_cost.py --tokens 1 measures the service's. Layers, each including the ones before: httpx posting the
request and reading the first SSE line; the OpenAI SDK; langchain-openai (`ChatOpenAI.astream`); the service's
own graph (graph/graph.py: condense → retrieve → generate, the service's stream modes, checkpoints in memory, a
retriever answering from memory), turn after turn in one thread. The service's overhead less the last line is
what its HTTP, database and bookkeeping add.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _venv import reexec_in_venv

    reexec_in_venv(__file__)

import argparse
import dataclasses
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import openai
import uvloop
from langchain_core.documents import Document
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.memory import InMemorySaver

from bench.run import OPEN_FIRST_TOKEN_MS, paced_model, pct
from graph.graph import build_graph
from graph.models import aclose_model, make_chat_model
from graph.retrieval import ScopedRetriever
from graph.state import ChatContext


class _InMemory(ScopedRetriever):
    """One help-centre passage, found at once (no database)."""

    def _get_relevant_documents(self, query: str, *, run_manager: Any, **kwargs: Any) -> list[Document]:
        return [Document(id="shipping-1", page_content="Shipping within Korea costs 3,000 KRW; free from 50,000 KRW.",
                         metadata={"title": "Shipping and delivery", "url": "https://help.example/shipping",
                                   "score": 1.0, "doc_id": "shipping"})]

    async def _asearch(self, query: str, *, run_manager: Any, **kwargs: Any) -> list[Document]:
        return self._get_relevant_documents(query, run_manager=run_manager)


async def overheads(runs: int, answer: Callable[[int], Awaitable[float]]) -> list[float]:
    """`answer(i)` reads a whole answer and returns when (perf_counter) its first token came."""
    out = []
    for i in range(3 + runs):
        start = time.perf_counter()
        first = await answer(i)
        if i >= 3:  # warm-up first
            out.append((first - start) * 1000 - OPEN_FIRST_TOKEN_MS)
    return out


async def measure(base: str, runs: int) -> None:
    body = {"model": "gpt-4o-mini", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "How much is shipping?"}]}
    async with httpx.AsyncClient() as http:
        async def raw(i: int) -> float:
            first = 0.0
            async with http.stream("POST", f"{base}/chat/completions", json=body) as r:
                async for line in r.aiter_lines():
                    if not first and line.startswith("data: {"):
                        choices = json.loads(line[6:]).get("choices") or [{}]
                        if choices[0].get("delta", {}).get("content"):
                            first = time.perf_counter()
            return first

        sdk = openai.AsyncOpenAI(api_key="sk-local", base_url=base, max_retries=0)

        async def with_sdk(i: int) -> float:
            first = 0.0
            stream: Any = await sdk.chat.completions.create(model="gpt-4o-mini", stream=True,
                                                            messages=body["messages"])
            async for chunk in stream:
                if not first and chunk.choices and chunk.choices[0].delta.content:
                    first = time.perf_counter()
            return first

        model = make_chat_model(openai_api_key="sk-local", openai_base_url=base, model_name="gpt-4o-mini",
                                max_retries=0)

        async def with_langchain(i: int) -> float:
            first = 0.0
            async for chunk in model.astream([HumanMessage(f"How much is shipping? ({i})")]):
                if not first and chunk.content:
                    first = time.perf_counter()
            return first

        graph = build_graph(InMemorySaver())
        context = ChatContext(store_id="s1", audience="shopper", model=model, retriever=_InMemory(), k=4)

        async def with_graph(i: int) -> float:
            first: list[float] = []

            def on_token(text: str) -> None:  # the service's sink for the direct token path (graph/answer_stream.py)
                if not first:
                    first.append(time.perf_counter())

            async for _ in graph.astream(
                    {"messages": [HumanMessage(f"How much is shipping? ({i})")]},
                    {"configurable": {"thread_id": "floor"}}, context=dataclasses.replace(context, on_token=on_token),
                    stream_mode=["messages", "updates", "custom"], durability="exit"):
                pass
            return first[0] if first else 0.0

        for name, fn in (("httpx, first SSE line", raw), ("OpenAI SDK", with_sdk),
                         ("langchain-openai", with_langchain), ("the service's graph (no DB)", with_graph)):
            r = await overheads(runs, fn)
            print(f"{name:<32} p50 {statistics.median(r):5.1f}  p90 {pct(r, 0.9):5.1f} ms", flush=True)
        await aclose_model(model)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()
    with paced_model(OPEN_FIRST_TOKEN_MS, 25, 1) as (base, _):
        print(f"## first-token overhead without our server, {args.runs} sequential runs per layer (model: first "
              f"token {OPEN_FIRST_TOKEN_MS} ms after the request), uvloop")
        uvloop.run(measure(base, args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
