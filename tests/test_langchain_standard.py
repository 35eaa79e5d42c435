"""Our LangChain classes against the standard tests `langchain-tests` ships for their kinds."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from langchain_core.retrievers import BaseRetriever
from langchain_core.vectorstores import VectorStore
from langchain_tests.integration_tests import RetrieversIntegrationTests, VectorStoreIntegrationTests

from graph.retrieval import HybridRetriever, VectorRetriever
from persistence.db import Pool
from persistence.knowledge import FullTextRetriever
from persistence.vectorstore import PgVectorStore
from server.integrations.ingest import ingest_path
from server.integrations.knowledge import build_knowledge, collection_name, make_embeddings
from server.settings import Settings
from tests.conftest import ROOT
from tests.fake_openai import FakeOpenAIServer


class TestPgVectorStore(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self, migrated_url: str, pgvector: None) -> Iterator[VectorStore]:  # type: ignore[override]
        collection = f"standard-{uuid.uuid4().hex[:8]}:6"
        store = PgVectorStore(self.get_embeddings(), collection=collection, dimensions=6, conninfo=migrated_url)
        try:
            yield store
        finally:
            store.drop_collection()


@dataclass
class Indexed:
    """The sample knowledge base indexed in this module's database (chunks and pgvector vectors)."""

    conninfo: str
    settings: Settings

    def vectorstore(self) -> PgVectorStore:
        return PgVectorStore(make_embeddings(self.settings), collection=collection_name(self.settings),
                             dimensions=self.settings.embedding_dimensions, conninfo=self.conninfo)


@pytest.fixture(scope="module")
async def indexed(pool: Pool, migrated_url: str, fake_openai: FakeOpenAIServer, pgvector: None) -> Indexed:
    settings = Settings(openai_api_key="sk-local-test", openai_base_url=fake_openai.base_url,  # type: ignore[arg-type]
                        embedding_dimensions=256, vector_store="pgvector")
    stack = await build_knowledge(settings, pool)
    await ingest_path(stack.indexer, ROOT / "knowledge" / "sample", source="sample")
    return Indexed(migrated_url, settings)


class _OnSampleKnowledge(RetrieversIntegrationTests):
    ctx: Indexed

    @pytest.fixture(autouse=True)
    def _bind(self, indexed: Indexed) -> None:
        self.ctx = indexed  # the constructor params below need the database

    @property
    def retriever_query_example(self) -> str:
        return "How long do refunds take after a return? 환불 기간"


class TestFullTextRetriever(_OnSampleKnowledge):
    @property
    def retriever_constructor(self) -> type[BaseRetriever]:
        return FullTextRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"conninfo": self.ctx.conninfo}


class TestVectorRetriever(_OnSampleKnowledge):
    @property
    def retriever_constructor(self) -> type[BaseRetriever]:
        return VectorRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"vectorstore": self.ctx.vectorstore(), "store_id": "store-x"}


class TestHybridRetriever(_OnSampleKnowledge):
    @property
    def retriever_constructor(self) -> type[BaseRetriever]:
        return HybridRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"retrievers": [VectorRetriever(vectorstore=self.ctx.vectorstore()),
                               FullTextRetriever(conninfo=self.ctx.conninfo)]}


def test_vector_search_is_served_by_the_collections_hnsw_index(migrated_url: str, pgvector: None) -> None:
    import psycopg
    from langchain_core.documents import Document
    from langchain_core.embeddings import DeterministicFakeEmbedding

    from persistence.vectorstore import vector_literal

    # enough rows that the planner prefers the index (on the 66-chunk sample a plain scan is cheaper)
    store = PgVectorStore(DeterministicFakeEmbedding(size=8), collection="plan-check:8", dimensions=8,
                          conninfo=migrated_url)
    store.add_documents([Document(page_content=f"passage {i}", metadata={"store_id": f"s{i % 7}"})
                         for i in range(3000)])
    params = {"q": vector_literal([0.1] * 8), "c": store.collection, "s": "s3", "k": 4}
    try:
        with psycopg.connect(migrated_url, autocommit=True) as conn:
            conn.execute("analyze kb_vectors")
            plan = "\n".join(r[0] for r in conn.execute(psycopg.sql.SQL("explain ") + store._search_sql(True), params))
        assert f"Index Scan using {store.index_name()}" in plan, plan
        assert len(store.similarity_search("passage 5", k=4, visible_to="s3")) == 4
    finally:
        store.drop_collection()


async def test_concurrent_first_writes_to_a_new_collection(migrated_url: str, pgvector: None) -> None:
    """Pages of one ingest run write at once: the collection's index is created once, not raced (a
    concurrent `create index if not exists` of one name fails in PostgreSQL)."""
    import asyncio

    from langchain_core.documents import Document
    from langchain_core.embeddings import DeterministicFakeEmbedding

    collection = f"race-{uuid.uuid4().hex[:8]}:8"
    stores = [PgVectorStore(DeterministicFakeEmbedding(size=8), collection=collection, dimensions=8,
                            conninfo=migrated_url) for _ in range(6)]
    await asyncio.gather(*(s.aadd_documents([Document(page_content=f"page {i}", id=f"p{i}")])
                           for i, s in enumerate(stores)))
    found = await stores[0].asimilarity_search("page 3", k=10)
    assert sorted(d.id for d in found if d.id) == [f"p{i}" for i in range(6)]
