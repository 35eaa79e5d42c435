"""Our LangChain classes against the standard tests `langchain-tests` ships for their kinds."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from langchain_core.vectorstores import VectorStore
from langchain_tests.integration_tests import VectorStoreIntegrationTests

from persistence.vectorstore import PgVectorStore
from tests.conftest import execute


class TestPgVectorStore(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self, migrated_url: str) -> Iterator[VectorStore]:  # type: ignore[override]
        collection = f"standard-{uuid.uuid4().hex[:8]}:6"
        store = PgVectorStore(self.get_embeddings(), collection=collection, dimensions=6, conninfo=migrated_url)
        try:
            yield store
        finally:
            execute(migrated_url, "delete from kb_vectors where collection = %s", (collection,))
