"""The Pinecone backend through langchain-pinecone and the official client, against a local data plane.

What we own at that boundary: the vectors and metadata we upsert (no nulls, the store scope, the
chunk ids), the query we send (namespace, top_k, the store filter) and how we read matches back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from persistence.db import Pool
from server.integrations.ingest import ingest_path
from server.integrations.knowledge import KnowledgeStack, build_knowledge
from server.resources import open_resources
from server.settings import Settings
from tests.fake_openai import FakeOpenAIServer
from tests.fake_pinecone import API_KEY, FakePineconeServer

DIMS = 64


@pytest.fixture(scope="module")
def pinecone() -> Iterator[FakePineconeServer]:
    with FakePineconeServer(dimension=DIMS) as srv:
        yield srv


def _settings(pinecone: FakePineconeServer, fake_openai: FakeOpenAIServer, **extra: Any) -> Settings:
    return Settings(pinecone_api_key=API_KEY, pinecone_host=pinecone.host, pinecone_namespace="help",  # type: ignore[arg-type]
                    openai_api_key="sk-local-test", openai_base_url=fake_openai.base_url,  # type: ignore[arg-type]
                    openai_max_retries=0, embedding_dimensions=DIMS, **extra)


@pytest.fixture(scope="module")
async def stack(pool: Pool, pinecone: FakePineconeServer, fake_openai: FakeOpenAIServer
                ) -> AsyncIterator[KnowledgeStack]:
    knowledge = await build_knowledge(_settings(pinecone, fake_openai), pool)
    try:
        yield knowledge
    finally:
        await knowledge.aclose()


def _write(folder: Path, name: str, text: str) -> None:
    (folder / name).write_text(text, encoding="utf-8")


async def test_upserts_queries_and_store_scope(stack: KnowledgeStack, pinecone: FakePineconeServer,
                                               tmp_path: Path) -> None:
    assert stack.backend == "hybrid(pinecone+postgres-fts)"
    _write(tmp_path, "gift.md", "---\nurl: https://help.example/gift\n---\n# Gift wrapping\n\n"
                                "## Price\nGift wrapping costs 2,000 KRW per parcel.\n")
    _write(tmp_path, "vip.md", "---\nstore_id: store-a\n---\n# VIP club\n\nVIP members get a quokka discount.\n")
    _write(tmp_path, "wrap.md", "---\naudience: seller\n---\n# Offering gift wrapping\n\n"
                                "Sellers set the gift wrapping price under Settings.\n")
    report = await ingest_path(stack.indexer, tmp_path, source="pc")
    assert (report.added, report.chunks) == (3, 3)

    upserts = [r for r in pinecone.requests if r["path"] == "/vectors/upsert"]
    assert all(r["api_key_ok"] and r["api_version"] == "2025-04" for r in pinecone.requests)
    vectors = {v["id"]: v for r in upserts for v in r["body"]["vectors"]}
    assert {r["body"]["namespace"] for r in upserts} == {"help"}
    gift, vip = vectors["pc:gift.md#0"], vectors["pc:vip.md#0"]
    assert len(gift["values"]) == DIMS
    assert gift["metadata"] == {"title": "Gift wrapping › Price", "url": "https://help.example/gift",
                                "doc_id": "pc:gift.md", "chunk_index": 0, "source": "pc", "audience": "all",
                                "text": "Gift wrapping costs 2,000 KRW per parcel."}  # shared: no store_id key
    assert vectors["pc:wrap.md#0"]["metadata"]["audience"] == "seller"
    assert vip["metadata"]["store_id"] == "store-a" and "url" not in vip["metadata"]

    pinecone.requests.clear()
    vector_side = stack.retriever.retrievers[0]  # type: ignore[attr-defined]
    found = await vector_side.ainvoke("gift wrapping price", k=3, store_id="store-b", audience="shopper")
    (query,) = [r["body"] for r in pinecone.requests if r["path"] == "/query"]
    assert query["namespace"] == "help" and query["topK"] == 3 and query["includeMetadata"] is True
    assert query["filter"] == {"$and": [
        {"$or": [{"store_id": {"$exists": False}}, {"store_id": {"$eq": "store-b"}}]},
        {"audience": {"$in": ["all", "shopper"]}}]}
    # the private page and the seller's page are filtered out by Pinecone
    assert [d.id for d in found] == ["pc:gift.md#0"]
    for_sellers = await vector_side.ainvoke("gift wrapping price", k=3, store_id="store-b", audience="seller")
    assert {d.id for d in for_sellers} == {"pc:gift.md#0", "pc:wrap.md#0"}
    assert found[0].page_content.startswith("Gift wrapping costs")
    assert found[0].metadata["title"] == "Gift wrapping › Price" and 0 < found[0].metadata["score"] <= 1
    assert "text" not in found[0].metadata

    own = await stack.retriever.ainvoke("quokka discount", k=3, store_id="store-a")
    assert "VIP club" in [d.metadata["title"] for d in own]
    shared_only = await vector_side.ainvoke("quokka discount", k=3, store_id=None)
    assert "VIP club" not in [d.metadata["title"] for d in shared_only]
    assert pinecone.requests[-1]["body"]["filter"] == {"store_id": {"$exists": False}}


async def test_edits_and_deletions_reach_the_index(stack: KnowledgeStack, pinecone: FakePineconeServer,
                                                   tmp_path: Path) -> None:
    long_body = "\n\n".join(f"Paragraph {i} about parcel lockers and pickup points." * 8 for i in range(6))
    _write(tmp_path, "lockers.md", f"# Parcel lockers\n\n{long_body}\n")
    _write(tmp_path, "old.md", "# Old page\n\nFax orders are accepted.\n")
    await ingest_path(stack.indexer, tmp_path, source="pc2")
    before = set(pinecone.namespaces["help"])
    assert {i for i in before if i.startswith("pc2:lockers.md#")} == {f"pc2:lockers.md#{i}" for i in range(3)}

    _write(tmp_path, "lockers.md", "# Parcel lockers\n\nLockers are closed for the winter.\n")
    (tmp_path / "old.md").unlink()
    pinecone.requests.clear()
    report = await ingest_path(stack.indexer, tmp_path, source="pc2")
    assert (report.updated, report.deleted) == (1, 1)
    deleted = sorted(i for r in pinecone.requests if r["path"] == "/vectors/delete" for i in r["body"]["ids"])
    assert deleted == ["pc2:lockers.md#1", "pc2:lockers.md#2", "pc2:old.md#0"]
    after = {i for i in pinecone.namespaces["help"] if i.startswith("pc2:")}
    assert after == {"pc2:lockers.md#0"}


async def test_a_turn_cites_passages_from_pinecone(database_url: str, pinecone: FakePineconeServer,
                                                   fake_openai: FakeOpenAIServer, pool: Pool) -> None:
    settings = _settings(pinecone, fake_openai, database_url=database_url, ingest_sample_if_empty=False)
    async with open_resources(settings) as res:
        assert res.knowledge.backend == "hybrid(pinecone+postgres-fts)"
        session = await res.sessions.create("store-b", None, {})
        turn = await res.chat.start_turn(session.session_id, "How much is gift wrapping?", {})
        events = [e async for e in turn.stream()]
    sources = next(data["sources"] for name, data in events if name == "sources")
    assert sources[0]["id"] == "pc:gift.md#0" and sources[0]["url"] == "https://help.example/gift"
    assert sources[0]["snippet"].startswith("Gift wrapping costs")
    assert all(s["title"] != "VIP club" for s in sources)
    assert events[-1][0] == "done"
    assert [msgspec.to_builtins(s) for s in events[-1][1]["message"].sources] == sources  # what was stored
