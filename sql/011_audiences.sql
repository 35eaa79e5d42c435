-- 011: who a page is written for (issue "answers a Korean shopper can trust"): `shopper`, `seller` or `all`,
-- from a document's front matter or its Notion property. A session's audience (metadata.audience, default
-- shopper) sees its own pages and those for all: a shopper is never answered from the seller guide.
alter table knowledge_documents add column audience text not null default 'all'
    check (audience in ('shopper', 'seller', 'all'));
alter table knowledge_chunks add column audience text not null default 'all'
    check (audience in ('shopper', 'seller', 'all'));

drop function kb_search(text, text, integer);

-- The passages a store's turn may see: the shared ones and its own, written for its audience or for all
-- (p_audience null: every audience, as Studio and the retrieval benchmark search).
create function kb_search(p_search_text text, p_store_id text, p_k integer, p_audience text)
returns table (chunk_id text, doc_id text, title text, url text, content text, score real)
language sql stable as $$
    select c.chunk_id, c.doc_id, c.title, c.url, c.content,
           ts_rank_cd(c.tsv, q.query, 1) as score
      from knowledge_chunks c, (select kb_tsquery(p_search_text) as query) q
     where c.tsv @@ q.query
       and (c.store_id is null or c.store_id = p_store_id)
       and (p_audience is null or c.audience in ('all', p_audience))
     order by score desc, c.chunk_id
     limit p_k
$$;

-- vectors in pgvector carry it too (their metadata has it; a column, so the search filters before ranking)
do $$
begin
    if to_regclass('kb_vectors') is not null then
        alter table kb_vectors add column audience text not null default 'all';
    end if;
end
$$;
