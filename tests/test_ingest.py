"""`sixshop-agent ingest PATH` into the full-text index: incremental, pruning, store-private passages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from langchain_core.documents import Document

from persistence.db import Pool
from persistence.knowledge import FullTextRetriever, KnowledgeIndexer, KnowledgeRepository
from server.integrations.ingest import ingest_path
from tests.conftest import ROOT, fetch_all


def _write(folder: Path, name: str, text: str) -> None:
    (folder / name).write_text(text, encoding="utf-8")


async def _search(pool: Pool, query: str, store_id: str | None, k: int = 3) -> list[Document]:
    return await FullTextRetriever(pool=pool).ainvoke(query, k=k, store_id=store_id)


async def test_incremental_ingest_and_prune(pool: Pool, tmp_path: Path) -> None:
    repo = KnowledgeIndexer(KnowledgeRepository(pool))
    _write(tmp_path, "gift.md", "# Gift wrapping\n\n## Price\nGift wrapping costs 2,000 KRW per item.\n")
    _write(tmp_path, "pets.md", "# Pets\n\nWe sell collars and leashes for dogs.\n")
    first = await ingest_path(repo, tmp_path, source="t")
    assert (first.added, first.updated, first.unchanged, first.deleted) == (2, 0, 0, 0)
    again = await ingest_path(repo, tmp_path, source="t")
    assert (again.added, again.updated, again.unchanged, again.chunks) == (0, 0, 2, 0)

    _write(tmp_path, "gift.md", "# Gift wrapping\n\n## Price\nGift wrapping is free this month.\n")
    (tmp_path / "pets.md").unlink()
    third = await ingest_path(repo, tmp_path, source="t")
    assert (third.added, third.updated, third.unchanged, third.deleted) == (0, 1, 0, 1)
    hits = await _search(pool, "gift wrapping price", "any")
    assert [h.metadata["title"] for h in hits] == ["Gift wrapping › Price"]
    assert "free this month" in hits[0].page_content
    assert await _search(pool, "dog leash", "any") == []


async def test_private_passages_stay_in_their_store(pool: Pool, tmp_path: Path) -> None:
    _write(tmp_path, "vip.md", "---\nstore_id: store-a\n---\n# VIP club\n\nVIP members get a zebra discount.\n")
    _write(tmp_path, "shared.md", "# Zebra socks\n\nAll stores sell zebra socks.\n")
    await ingest_path(KnowledgeIndexer(KnowledgeRepository(pool)), tmp_path, source="iso")
    titles_a = {d.metadata["title"] for d in await _search(pool, "zebra", "store-a", 10)}
    titles_b = {d.metadata["title"] for d in await _search(pool, "zebra", "store-b", 10)}
    assert titles_a == {"VIP club", "Zebra socks"}
    assert titles_b == {"Zebra socks"}


def test_cli_ingest(database_url: str, tmp_path: Path) -> None:
    """The CLI writes, tells its progress in log lines off a terminal, and says its rate."""
    _write(tmp_path, "faq.txt", "Opening hours\n\nWe answer chats from 9 to 18 KST.\n")
    env = {**os.environ, "DATABASE_URL": database_url}
    out = subprocess.run([sys.executable, "-m", "server.cli", "ingest", str(tmp_path), "--store", "store-z"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "documents added 1" in out.stdout and "chunks/s" in out.stdout
    assert "ingest: [1/1] added: faq" in out.stderr  # a log line per document (a bar on a terminal)
    rows = fetch_all(database_url, "select store_id, title from knowledge_chunks where doc_id like %s",
                     (f"files:{tmp_path.name}:%",))
    assert rows == [{"store_id": "store-z", "title": "faq"}]
    missing = subprocess.run([sys.executable, "-m", "server.cli", "ingest", str(tmp_path / "nope")],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "no such file" in missing.stderr


async def test_service_starts_when_the_sample_cannot_be_embedded(pg_server_conninfo: str,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    import socket

    from server.resources import open_resources
    from server.settings import Settings
    from tests.conftest import create_database

    with socket.socket() as s:  # a port nobody listens on: the embeddings endpoint is down
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    settings = Settings(database_url=create_database(pg_server_conninfo, "embed_down"),  # type: ignore[arg-type]
                        openai_api_key="sk-local-test", openai_base_url=dead, openai_max_retries=0)  # type: ignore[arg-type]
    async with open_resources(settings) as res:
        assert res.knowledge.backend == "hybrid(pgvector+postgres-fts)"
        assert await res.knowledge.indexer.repo.chunk_count() == 0  # nothing half-written
    assert "could not index the sample knowledge base" in caplog.text
    assert "sk-local-test" not in caplog.text


def test_a_page_says_who_it_is_for(tmp_path: Path) -> None:
    """Front matter `audience:` (shopper, seller or all; none: all); anything else refuses the file by name."""
    from server.integrations.ingest import load_folder
    from server.integrations.notion import page_document, parse_page

    (tmp_path / "a.md").write_text("---\naudience: Seller\n---\n# Payouts\n\nPaid weekly.\n", encoding="utf-8")
    (tmp_path / "b.md").write_text("# Hours\n\nOpen daily.\n", encoding="utf-8")
    docs = {d.doc_id: d for d in load_folder(tmp_path, "t")}
    assert (docs["t:a.md"].audience, docs["t:b.md"].audience) == ("seller", "all")
    assert docs["t:a.md"].as_documents()[0].metadata["audience"] == "seller"
    (tmp_path / "c.md").write_text("---\naudience: sellers\n---\n# Oops\n\nx\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"c\.md: audience must be one of shopper, seller, all"):
        load_folder(tmp_path, "t")

    def notion_page(audience: str | None) -> dict[str, Any]:
        props: dict[str, Any] = {"Name": {"type": "title", "title": [{"plain_text": "Payouts"}]}}
        if audience is not None:
            props["Audience"] = {"type": "select", "select": {"name": audience}}
        return {"id": "p1", "last_edited_time": "2026-11-01T00:00:00.000Z", "properties": props}

    assert page_document(parse_page(notion_page("Seller"), "Store"), [], "notion").audience == "seller"
    assert page_document(parse_page(notion_page(None), "Store"), [], "notion").audience == "all"
    with pytest.raises(ValueError, match="audience 'vendor'"):
        page_document(parse_page(notion_page("Vendor"), "Store"), [], "notion")


class _CountingEmbeddings:
    """Embeddings that remember the size of every batch they were given (vectors from the text's length)."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.batches.append(len(texts))
        return [[float(len(t) % 7 + 1), 1.0, 0.5] for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return [1.0, 1.0, 0.5]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embed_documents(texts)

    async def aembed_query(self, text: str) -> list[float]:
        return self.embed_query(text)


class _Heard:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def start(self, total: int) -> None:
        self.events.append(("start", total))

    def advance(self, title: str, outcome: str) -> None:
        self.events.append((outcome, title))

    def stop(self) -> None:
        self.events.append(("stop", None))


async def test_ingest_embeds_in_batches_and_tells_its_progress(pool: Pool, tmp_path: Path,
                                                              database_url: str) -> None:
    from persistence.vectorstore import PgVectorStore
    from server.integrations.ingest import load_folder

    embeddings = _CountingEmbeddings()
    store = PgVectorStore(embeddings, collection="batches-test", dimensions=3, pool=pool)  # type: ignore[arg-type]
    indexer = KnowledgeIndexer(KnowledgeRepository(pool), store, index_label="pgvector:counting:3")
    for i in range(10):
        _write(tmp_path, f"page{i:02d}.md", f"# Page {i}\n\nAnswer number {i} of the help centre.\n")
    heard = _Heard()
    report = await indexer.sync("batch", load_folder(tmp_path, "batch"), progress=heard, batch_chunks=4)
    assert embeddings.batches == [4, 4, 2]  # one call per batch of about 4 chunks, not one per page
    assert heard.events[0] == ("start", 10) and heard.events[-1] == ("stop", None)
    assert [e[0] for e in heard.events[1:-1]] == ["added"] * 10
    assert (report.added, report.chunks) == (10, 10)
    stored = fetch_all(database_url, "select count(*) as n from kb_vectors where collection = 'batches-test'")
    assert stored == [{"n": 10}]  # every chunk's vector written, each with its document
    again = await indexer.sync("batch", [], progress=heard, prune=False)
    assert again.chunks == 0 and embeddings.batches == [4, 4, 2]
    report.seconds = 2.0
    assert report.summary().endswith("2.0 s (5.0 chunks/s)")
