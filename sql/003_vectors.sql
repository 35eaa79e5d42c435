-- 003: vectors for pgvector retrieval (when an embedding model is configured).
-- One table for every embedding model: a collection names the model and its dimensions
-- ("text-embedding-3-small:1536"), so vectors of different models never meet, and each collection
-- gets its own partial HNSW index on `embedding::vector(<dims>)`, created by PgVectorStore when it
-- first writes (pgvector can only index vectors of one dimension). The table is created only where
-- the `vector` extension is installed: full-text retrieval needs none of it.
do $$
begin
    if exists (select 1 from pg_available_extensions where name = 'vector') then
        create extension if not exists vector;
        execute $ddl$
            create table kb_vectors (
                collection text not null,
                id         text not null,
                store_id   text,
                content    text not null,
                metadata   jsonb not null default '{}'::jsonb,
                embedding  vector not null,
                updated_at timestamptz not null default now(),
                primary key (collection, id)
            )
        $ddl$;
        execute 'create index kb_vectors_scope_idx on kb_vectors (collection, store_id)';
    end if;
end
$$;
