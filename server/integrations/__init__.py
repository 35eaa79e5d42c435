"""Clients of what is outside the request path: knowledge sources and indexes (local files, Notion,
pgvector, Pinecone), retrieval evaluation, LangSmith tracing, and Studio's entry point."""
