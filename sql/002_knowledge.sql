-- 002: the knowledge base for PostgreSQL full-text retrieval.
-- Documents are shared (store_id null) or private to one store. search_text is the chunk's text plus
-- character bigrams of its Hangul runs (computed by the ingester), because PostgreSQL has no Korean
-- dictionary and Korean attaches particles to words ("배송비는" must match "배송비").

create table knowledge_documents (
    doc_id       text primary key,
    store_id     text,
    title        text not null,
    url          text,
    source       text not null,
    content_hash text not null,
    created_at   timestamptz not null default now(),
    updated_at   timestamptz not null default now()
);
create trigger knowledge_documents_touch before update on knowledge_documents
    for each row execute function touch_updated_at();

create table knowledge_chunks (
    chunk_id    text primary key,
    doc_id      text not null references knowledge_documents (doc_id) on delete cascade,
    store_id    text,
    chunk_index integer not null,
    title       text not null,
    url         text,
    content     text not null,
    search_text text not null,
    tsv         tsvector generated always as (
                    setweight(to_tsvector('english'::regconfig, title), 'A')
                    || to_tsvector('english'::regconfig, search_text)
                ) stored
);
create index knowledge_chunks_tsv_idx on knowledge_chunks using gin (tsv);
create index knowledge_chunks_doc_idx on knowledge_chunks (doc_id, chunk_index);
create index knowledge_chunks_store_idx on knowledge_chunks (store_id);

-- Any word of the question may match (OR), ranked by cover density; stop words fall out.
create function kb_tsquery(p_text text) returns tsquery
language sql immutable strict as $$
    select coalesce(
        to_tsquery('simple', string_agg(quote_literal(lexeme), ' | ')),
        ''::tsquery)
    from unnest(to_tsvector('english'::regconfig, p_text))
$$;

-- The passages a store's turn may see: the shared ones and its own.
create function kb_search(p_search_text text, p_store_id text, p_k integer)
returns table (chunk_id text, doc_id text, title text, url text, content text, score real)
language sql stable as $$
    select c.chunk_id, c.doc_id, c.title, c.url, c.content,
           ts_rank_cd(c.tsv, q.query, 1) as score
      from knowledge_chunks c, (select kb_tsquery(p_search_text) as query) q
     where c.tsv @@ q.query
       and (c.store_id is null or c.store_id = p_store_id)
     order by score desc, c.chunk_id
     limit p_k
$$;
