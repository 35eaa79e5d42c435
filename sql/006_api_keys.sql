-- 006: API keys (stored as SHA-256 of the key, never the key) and per-key turn rate windows.
create table api_keys (
    key_id           uuid primary key,
    store_id         text,                -- null: an admin key, for every store
    name             text,
    prefix           text not null,       -- the key's first characters, to recognise it in a list
    key_hash         text not null unique,
    turns_per_minute integer check (turns_per_minute is null or turns_per_minute >= 0),
    created_at       timestamptz not null default now(),
    revoked_at       timestamptz,
    last_used_at     timestamptz
);

-- fixed one-minute windows; the lifecycle job need not touch them: old windows are deleted on the way
create table api_rate_windows (
    key_id       uuid not null references api_keys (key_id) on delete cascade,
    window_start timestamptz not null,
    turns        integer not null,
    primary key (key_id, window_start)
);
