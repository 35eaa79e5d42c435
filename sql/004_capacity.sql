-- 004: samples for the capacity report (GET /api/admin/capacity, `sixshop-agent capacity`).
-- Each server process records, every CAPACITY_SAMPLE_SECONDS, the server's client connections and
-- its own pool's database latency, so the report can give 30-day peaks whichever process answers.
create table capacity_samples (
    sampled_at      timestamptz not null default now(),
    process         text not null,
    connections     integer not null,
    max_connections integer not null,
    pool_size       integer not null,
    pool_in_use     integer not null,
    db_p50_ms       real,
    db_p95_ms       real,
    db_samples      integer not null default 0
);
create index capacity_samples_time_idx on capacity_samples (sampled_at);
