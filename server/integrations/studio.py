"""Studio's entry point: `langgraph.json` points `langgraph dev` / LangGraph Studio at `make_graph` here.

The graph (graph/graph.py) knows nothing of the service; this module is where the service's wiring
meets it. Studio's server brings its own checkpointer and runs the graph with no context, so the graph
falls back to the retriever given here as `default_retriever`: built from the same settings as
`serve` (env/.env.* and the environment), on the same database (DATABASE_URL, else the same
embedded PostgreSQL data directory), prepared as `serve` prepares it (`sixshop-agent prepare`:
migrations, the sample knowledge base when the index is empty). The retriever opens short
connections of its own, so it works from whichever event loop the Agent Server runs the graph on.

`langgraph dev` fails a run that makes a blocking call on a thread with a running event loop, so the
set-up runs on a thread without one: the embedded server's start and a `prepare` subprocess are
plain blocking calls there, and only the retriever's construction (one catalogue query) is async.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableConfig
from langgraph.graph.state import CompiledStateGraph

from graph.graph import build_graph
from server.integrations.knowledge import build_knowledge
from server.resources import resolve_conninfo
from server.settings import load_settings

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
_EMBEDDED: list[Any] = []  # the embedded server's handle: this process stays one of its users


def _setup() -> BaseRetriever:
    settings = load_settings()
    conninfo, embedded = resolve_conninfo(settings)  # joins (or starts) the embedded server first
    if embedded is not None:
        _EMBEDDED.append(embedded)
    done = subprocess.run([sys.executable, "-m", "server.cli", "prepare"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "DATABASE_URL": conninfo})
    if done.returncode != 0:
        raise RuntimeError(f"sixshop-agent prepare failed: {done.stderr[-2000:]}")
    knowledge = asyncio.run(build_knowledge(settings, None, retrieval_conninfo=conninfo))
    log.info("studio retrieval ready: %s", knowledge.backend)
    return knowledge.retriever


@functools.cache
def studio_retriever() -> BaseRetriever:
    """Set up once per process, on a thread of its own (see the module's docstring)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sixshop-studio-setup") as pool:
        return pool.submit(_setup).result()


def make_graph(config: RunnableConfig | None = None) -> CompiledStateGraph[Any, Any, Any, Any]:
    """Entry point for langgraph.json (graph id `agent`): the platform supplies the checkpointer; retrieval
    is the service's own, so a run in Studio retrieves and answers as a turn does."""
    return build_graph(default_retriever=studio_retriever())
