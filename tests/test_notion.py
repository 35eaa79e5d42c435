"""Notion → chunks → OpenAI embeddings → pgvector, end to end against local Notion and OpenAI servers."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from notion_client.errors import HTTPResponseError

from persistence.db import Pool
from persistence.knowledge import IngestReport
from server.integrations.knowledge import KnowledgeStack, build_knowledge
from server.integrations.notion import NotionReader, blocks_to_markdown, ingest_notion, make_client
from server.settings import Settings
from tests.conftest import ROOT, fetch_all
from tests.fake_notion import TOKEN, FakeNotionServer, NotionWorkspace, block
from tests.fake_openai import FakeOpenAIServer


def _shipping() -> list[dict[str, Any]]:
    return [
        block("heading_1", "Delivery times"),
        block("paragraph", "Orders placed before 2 pm leave our warehouse the same day."),
        block("bulleted_list_item", "Seoul: next day", [block("bulleted_list_item", "Jeju island: add two days")]),
        block("numbered_list_item", "Pack the order"),
        block("numbered_list_item", "Hand it to the courier"),
        block("heading_2", "Shipping fees"),
        block("callout", "Free shipping on orders over 50,000 KRW.", icon={"type": "emoji", "emoji": "🚚"}),
    ]


def _returns() -> list[dict[str, Any]]:
    return [
        block("paragraph", "Unused items can be returned within 7 days of delivery."),
        block("toggle", "What if the item is damaged?", [block("paragraph", "We pay the return courier fee.")]),
        block("quote", "Refunds reach your card in 3 to 7 business days."),
        block("to_do", "Keep the original packaging", checked=True),
    ]


def _sizes() -> list[dict[str, Any]]:
    rows = [block("table_row", cells=["Size", "Chest (cm)"]), block("table_row", cells=["M", "96-101"]),
            block("table_row", cells=["L", "101-106"])]
    return [block("paragraph", "Measure your chest under the arms."), block("table", children=rows)]


def _api() -> list[dict[str, Any]]:
    return [block("paragraph", "Sellers can pull orders with the API:"),
            block("code", "curl https://api.example/orders?status=paid", language="shell")]


def _vip() -> list[dict[str, Any]]:
    return [block("paragraph", "VIP members of this store get a secret quokka discount code.")]


@pytest.fixture(scope="module")
def notion() -> Iterator[FakeNotionServer]:
    ws = NotionWorkspace()
    with FakeNotionServer(ws, max_page_size=2) as srv:
        yield srv


@pytest.fixture(scope="module")
async def stack(pool: Pool, fake_openai: FakeOpenAIServer) -> AsyncIterator[KnowledgeStack]:
    settings = Settings(openai_api_key="sk-local-test", openai_base_url=fake_openai.base_url,  # type: ignore[arg-type]
                        openai_max_retries=0, embedding_dimensions=256)
    knowledge = await build_knowledge(settings, pool)
    assert knowledge.backend == "hybrid(pgvector+postgres-fts)"
    yield knowledge


def _reader(srv: FakeNotionServer) -> NotionReader:
    return NotionReader(make_client(TOKEN, base_url=srv.base_url, retry_delay_ms=50), srv.workspace.database_id,
                        retry_delay_s=0.05)


def _counts(r: IngestReport) -> tuple[int, int, int, int, int]:
    return r.added, r.updated, r.unchanged, r.deleted, r.failed


async def _titles(stack: KnowledgeStack, query: str, store_id: str | None, k: int = 4) -> list[str]:
    return [d.metadata["title"] for d in await stack.retriever.ainvoke(query, k=k, store_id=store_id)]


async def test_ingest_then_incremental_update(
    notion: FakeNotionServer, fake_openai: FakeOpenAIServer, stack: KnowledgeStack, database_url: str
) -> None:
    ws = notion.workspace
    shipping = ws.add_page("Shipping", _shipping())
    returns = ws.add_page("Returns", _returns())
    sizes = ws.add_page("Size guide", _sizes())
    ws.add_page("Seller API", _api())
    ws.add_page("VIP club", _vip(), store="store-a")
    query_path = f"/v1/data_sources/{ws.data_source_id}/query"
    notion.fail_once.add(query_path)  # a 503 on the query POST: retried by us
    notion.rate_limit_once.add(f"/v1/blocks/{returns}/children")  # a 429 with Retry-After: retried by the client

    first = await ingest_notion(stack.indexer, _reader(notion))
    assert _counts(first) == (5, 0, 0, 0, 0)
    assert notion.requests[0]["notion_version"] == "2025-09-03"
    queries = [r["body"].get("start_cursor") for r in notion.requests if r["path"] == query_path]
    assert queries == [None, None, "2", "4"]  # the 503, then three pages of two
    cursors = [r["query"].get("start_cursor") for r in notion.requests if r["path"] == f"/v1/blocks/{returns}/children"]
    assert cursors == [None, None, "2"]  # the 429, its retry, then the second page of children

    chunks = fetch_all(database_url, "select chunk_id, title, url, content, store_id from knowledge_chunks "
                                     "where doc_id like 'notion:%%' order by chunk_id")
    vectors = fetch_all(database_url, "select id, store_id, metadata from kb_vectors order by id")
    assert [c["chunk_id"] for c in chunks] == [v["id"] for v in vectors]  # every chunk embedded, same id
    text = "\n".join(c["content"] for c in chunks)
    for nested in ("Jeju island: add two days", "We pay the return courier fee.", "| M | 96-101 |",
                   "curl https://api.example/orders?status=paid", "🚚 Free shipping", "- [x] Keep the original"):
        assert nested in text  # children of blocks, tables, callouts, code, to-dos all reach the index
    assert {c["title"] for c in chunks} >= {"Shipping › Delivery times", "Shipping › Shipping fees", "Returns"}
    assert all(c["url"].startswith("https://www.notion.so/") for c in chunks)
    assert {v["store_id"] for v in vectors if v["metadata"]["title"] == "VIP club"} == {"store-a"}

    # one page edited, one archived: the next run touches exactly those
    ws.edit_page(sizes, [block("paragraph", "Our sizes now follow the EU chart: measure your waist.")])
    ws.archive_page(shipping)
    embedded_before = len(fake_openai.embedding_inputs)
    requests_before = len(notion.requests)
    second = await ingest_notion(stack.indexer, _reader(notion))
    assert _counts(second) == (0, 1, 3, 1, 0)
    fetched = {r["path"] for r in notion.requests[requests_before:] if r["path"].startswith("/v1/blocks/")}
    assert fetched == {f"/v1/blocks/{sizes}/children"}
    assert fake_openai.embedding_inputs[embedded_before:] == ["Our sizes now follow the EU chart: measure your waist."]
    remaining = fetch_all(database_url, "select distinct metadata->>'title' as t from kb_vectors")
    assert {r["t"] for r in remaining} == {"Returns", "Size guide", "Seller API", "VIP club"}
    assert "Size guide" in await _titles(stack, "EU chart waist", "store-b")
    assert not any(t.startswith("Shipping") for t in await _titles(stack, "Jeju island delivery times", "store-b"))

    third = await ingest_notion(stack.indexer, _reader(notion))
    assert _counts(third) == (0, 0, 4, 0, 0)


async def test_private_pages_stay_in_their_store(stack: KnowledgeStack, notion: FakeNotionServer) -> None:
    # (pages from the test above) the VIP page is private to store-a, on both retrieval sides
    assert "VIP club" in await _titles(stack, "secret quokka discount", "store-a")
    assert "VIP club" not in await _titles(stack, "secret quokka discount", "store-b")
    assert "VIP club" not in await _titles(stack, "secret quokka discount", None)
    vector_side, fulltext_side = stack.retriever.retrievers  # type: ignore[attr-defined]
    for side in (vector_side, fulltext_side):
        found = await side.ainvoke("secret quokka discount", k=10, store_id="store-b")
        assert all(d.metadata["title"] != "VIP club" for d in found), side.name


async def test_a_failing_page_is_reported_and_skipped(stack: KnowledgeStack) -> None:
    ws = NotionWorkspace()
    with FakeNotionServer(ws) as srv:
        good = ws.add_page("Gift wrapping", [block("paragraph", "Gift wrapping costs 2,000 KRW.")])
        bad = ws.add_page("Broken page", [block("paragraph", "never read")])
        srv.fail_always.add(f"/v1/blocks/{bad}/children")
        first = await ingest_notion(stack.indexer, _reader(srv))
        assert _counts(first) == (1, 0, 0, 0, 1)
        assert first.failures == [(f"notion:{bad}", "HTTP 500 internal_server_error")]
        srv.fail_always.clear()
        second = await ingest_notion(stack.indexer, _reader(srv))
        assert _counts(second) == (1, 0, 1, 0, 0)  # the failed page is picked up next time
        assert good != bad


async def test_a_failing_listing_removes_nothing(stack: KnowledgeStack, database_url: str) -> None:
    ws = NotionWorkspace()
    with FakeNotionServer(ws) as srv:
        ws.add_page("Loyalty points", [block("paragraph", "One point per 1,000 KRW spent.")])
        assert _counts(await ingest_notion(stack.indexer, _reader(srv))) == (1, 0, 0, 0, 0)
        srv.fail_always.add(f"/v1/data_sources/{ws.data_source_id}/query")  # down for longer than our retries
        with pytest.raises(HTTPResponseError, match="Unexpected error"):
            await ingest_notion(stack.indexer, _reader(srv))
    rows = fetch_all(database_url, "select count(*) as n from knowledge_documents where source = %s",
                     (f"notion:{ws.database_id}",))
    assert rows == [{"n": 1}]


def test_blocks_to_markdown_numbering_and_nesting() -> None:
    md = blocks_to_markdown([
        block("numbered_list_item", "one"), block("numbered_list_item", "two", [block("paragraph", "detail")]),
        block("paragraph", "between"), block("numbered_list_item", "again"),
        block("heading_3", "Small heading"), block("divider"),
    ])
    assert md.splitlines()[:5] == ["1. one", "2. two", "  detail", "between", "1. again"]
    assert "### Small heading" in md


def test_cli_ingest_notion(database_url: str, fake_openai: FakeOpenAIServer) -> None:
    ws = NotionWorkspace()
    with FakeNotionServer(ws) as srv:
        ws.add_page("Opening hours", [block("paragraph", "We answer chats from 9 to 18 KST.")])
        env = {**os.environ, "DATABASE_URL": database_url, "NOTION_INTEGRATION_TOKEN": TOKEN,
               "NOTION_DATABASE_ID": ws.database_id, "NOTION_BASE_URL": srv.base_url,
               "OPENAI_API_KEY": "sk-local-test", "OPENAI_BASE_URL": fake_openai.base_url,
               "EMBEDDING_DIMENSIONS": "256"}
        out = subprocess.run([sys.executable, "-m", "server.cli", "ingest", "notion"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pages added 1, updated 0, unchanged 0, deleted 0, failed 0; chunks written 1;" in out.stdout
    assert "[1/1] added: Opening hours" in out.stderr  # plain log lines when not on a terminal
    assert TOKEN not in out.stdout + out.stderr
    missing = subprocess.run([sys.executable, "-m", "server.cli", "ingest", "notion"], cwd=ROOT,
                             env={**os.environ, "DATABASE_URL": database_url}, capture_output=True, text=True,
                             timeout=120)
    assert missing.returncode == 2 and "NOTION_INTEGRATION_TOKEN" in missing.stderr
