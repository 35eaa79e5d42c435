-- 014: shoppers in the browser (API.md, "Shoppers in the browser"). A publishable key (kind 'publishable', always
-- bound to a store) may be public: it only picks the store. New sessions opened with one are counted per client
-- address and store in hourly windows, in the database so that every replica counts together. server_secrets
-- holds what the service generates for itself outside production (the session tokens' signing secret), so that
-- every replica and a restart agree on it; production takes SESSION_TOKEN_SECRET from its environment.
alter table api_keys add column kind text not null default 'secret'
    check (kind in ('secret', 'publishable'));
alter table api_keys add constraint api_keys_publishable_store check (kind = 'secret' or store_id is not null);

create table session_rate_windows (
    store_id     text not null,
    client       text not null,
    window_start timestamptz not null,
    sessions     integer not null,
    primary key (store_id, client, window_start)
);

create table server_secrets (
    name       text primary key,
    value      text not null,
    created_at timestamptz not null default now()
);
