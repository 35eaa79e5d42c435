"""PostgreSQL: pool, embedded server, migrations, repositories and the LangGraph checkpointer."""
