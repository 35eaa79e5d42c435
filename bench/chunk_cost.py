"""What a streamed answer costs the client side, per layer, on this machine: CPU milliseconds for one 150-chunk
answer read from the local paced model (tests/fake_openai.py, in its own process), on uvloop as the server runs.

    python bench/chunk_cost.py [--chunks 150] [--answers 30] [--token-ms 0]

With --token-ms 0 (default) the chunks come back to back, many to a read; with --token-ms 25 (the open-loop
model's pace, like a real model's 40 tokens/s) each chunk is a read of its own and a wake-up of the event loop, and
the first line is the machine's floor for that: the loop waking --chunks times with nothing to do.

Rows: httpx reading the SSE lines and json.loads of each chunk; the OpenAI SDK (`chat.completions.create(
stream=True)`) on its default httpx transport and on aiohttp; the SDK's request with the body's lines decoded here
(msgspec), on each; then the old path, each including the one before: langchain-openai (`ChatOpenAI.astream`) and
LangGraph running a one-node graph with the stream modes the service used (`messages`, `updates`); and the direct
token path (graph/answer_stream.py, the generate node's): a one-node graph whose node hands each chunk's text to
LangGraph's `custom` stream writer, or to a plain callable as the service does, on aiohttp, and that on httpx.
Tracing is off unless LANGSMITH_TRACING says otherwise. What the service adds on top (its own SSE events through
Litestar, the database, retrieval) is the difference to `bench/run.py`'s server CPU per turn.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _venv import reexec_in_venv

    reexec_in_venv(__file__)

import argparse
import asyncio
import json
import resource
import subprocess
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import msgspec
import openai
import uvloop
from langchain_core.messages import HumanMessage
from langgraph.config import get_config, get_stream_writer
from langgraph.graph import END, START, MessagesState, StateGraph

from graph.answer_stream import stream_answer
from graph.models import aclose_model, make_chat_model

ROOT = Path(__file__).resolve().parent.parent
decode_chunk = msgspec.json.Decoder().decode


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def per_answer(n: int, one: Callable[[], Awaitable[None]]) -> float:
    for _ in range(3):  # warm-up
        await one()
    start = cpu_s()
    for _ in range(n):
        await one()
    return (cpu_s() - start) / n * 1000


async def measure(base: str, answers: int, chunks: int, token_ms: float) -> None:
    if token_ms:
        async def wakeups() -> None:
            for _ in range(chunks):
                await asyncio.sleep(token_ms / 1000)

        print(f"{'event loop: ' + str(chunks) + ' wake-ups':<32} {await per_answer(answers, wakeups):6.1f} ms CPU "
              f"per answer", flush=True)
    body = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient() as http:
        async def raw() -> None:
            async with http.stream("POST", f"{base}/chat/completions", json=body) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: {"):
                        json.loads(line[6:])

        sdk = openai.AsyncOpenAI(api_key="sk-local", base_url=base, max_retries=0)
        sdk_aiohttp = openai.AsyncOpenAI(api_key="sk-local", base_url=base, max_retries=0,
                                         http_client=openai.DefaultAioHttpClient())

        def through(client: Any) -> Callable[[], Awaitable[None]]:
            async def with_sdk() -> None:
                stream: Any = await client.chat.completions.create(model="gpt-4o-mini", stream=True,
                                                                   messages=[{"role": "user", "content": "hi"}])
                async for _ in stream:
                    pass
            return with_sdk

        def raw_lines(client: Any) -> Callable[[], Awaitable[None]]:
            """The SDK's request (auth, retries, timeouts, status errors), its body's lines decoded here."""
            async def with_lines() -> None:
                async with client.chat.completions.with_streaming_response.create(
                        model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": "hi"}]) as r:
                    async for line in r.iter_lines():
                        if line.startswith("data: {"):
                            decode_chunk(line[6:])
            return with_lines

        # the old path's rows on the SDK's default httpx transport, as it ran; the direct path on either
        model, model_aiohttp = (make_chat_model(openai_api_key="sk-local", openai_base_url=base,
                                                model_name="gpt-4o-mini", max_retries=0, http_client=http)
                                for http in ("httpx", "aiohttp"))
        messages = [HumanMessage("hi")]

        async def with_langchain() -> None:
            async for _ in model.astream(messages):
                pass

        async def generate(state: MessagesState) -> dict[str, Any]:
            return {"messages": [await model.ainvoke(state["messages"])]}

        builder = StateGraph(MessagesState)
        builder.add_node("generate", generate)
        builder.add_edge(START, "generate")
        builder.add_edge("generate", END)
        graph = builder.compile()

        async def with_langgraph() -> None:
            async for _ in graph.astream({"messages": messages}, stream_mode=["messages", "updates"]):
                pass

        # the direct token path (graph/answer_stream.py, as the generate node runs it): the model client's own
        # stream, each chunk's text to LangGraph's `custom` stream writer, or to a plain callable (the service's)
        def direct_graph(to_writer: bool, model: Any) -> Any:
            async def generate_direct(state: MessagesState) -> dict[str, Any]:
                if to_writer:
                    write = get_stream_writer()

                    def on_text(text: str) -> None:
                        write({"type": "token", "delta": text})
                else:
                    def on_text(text: str) -> None:
                        sink.append(text)
                answer = await stream_answer(model, state["messages"], on_text=on_text,
                                             callbacks=get_config().get("callbacks"))
                sink.clear()
                return {"messages": [answer]}

            direct = StateGraph(MessagesState)
            direct.add_node("generate", generate_direct)
            direct.add_edge(START, "generate")
            direct.add_edge("generate", END)
            return direct.compile()

        sink: list[str] = []
        to_writer, to_sink, to_sink_httpx = (direct_graph(True, model_aiohttp), direct_graph(False, model_aiohttp),
                                             direct_graph(False, model))

        async def with_writer() -> None:
            async for _ in to_writer.astream({"messages": messages}, stream_mode=["custom", "updates"]):
                pass

        def with_sink(graph: Any) -> Callable[[], Awaitable[None]]:
            async def run() -> None:
                async for _ in graph.astream({"messages": messages}, stream_mode=["messages", "updates", "custom"]):
                    pass
            return run

        for name, fn in (("httpx + json.loads", raw), ("OpenAI SDK", through(sdk)),
                         ("OpenAI SDK on aiohttp", through(sdk_aiohttp)),
                         ("SDK request, lines + msgspec", raw_lines(sdk)),
                         ("... on aiohttp", raw_lines(sdk_aiohttp)),
                         ("langchain-openai", with_langchain),
                         ("LangGraph (messages, updates)", with_langgraph),
                         ("direct path, custom writer", with_writer),
                         ("direct path, a sink (the service)", with_sink(to_sink)),
                         ("... on httpx", with_sink(to_sink_httpx))):
            print(f"{name:<34} {await per_answer(answers, fn):6.1f} ms CPU per answer", flush=True)
        await aclose_model(model_aiohttp)
        await sdk_aiohttp.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=150)
    parser.add_argument("--answers", type=int, default=30)
    parser.add_argument("--token-ms", type=float, default=0, help="the model's pause between chunks")
    args = parser.parse_args()
    model = subprocess.Popen([sys.executable, "-m", "tests.fake_openai", "0", str(args.token_ms), str(args.chunks)],
                             cwd=ROOT,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert model.stdout is not None
        base = model.stdout.readline().strip()
        print(f"{args.chunks} chunks per answer, {args.token_ms:g} ms apart, {args.answers} answers, the model in "
              f"its own process, uvloop")
        uvloop.run(measure(base, args.answers, args.chunks, args.token_ms))
    finally:
        model.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
