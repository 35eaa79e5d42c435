-- 007: background jobs that run once per interval across every replica (lifecycle, capacity samples).
-- A replica runs a job when one statement claims its row: the last run started at least an interval ago
-- and has finished (or its runner died: the lease ran out). One statement in one transaction, so it works
-- through a transaction-mode pooler (PgBouncer, RDS Proxy), where session advisory locks do not.
create table if not exists background_jobs (
    name        text primary key,
    started_at  timestamptz not null,
    finished_at timestamptz,
    runs        bigint not null default 1,
    owner       text not null
);
