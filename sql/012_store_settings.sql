-- 012: each store's own assistant (issue "each store's own assistant"): settings per store, every change
-- recorded. A change tells every replica at once (NOTIFY sixshop_store_settings), which drop their cached copy.
create table store_settings (
    store_id   text primary key,
    settings   jsonb not null default '{}'::jsonb,
    updated_at timestamptz not null default now(),
    updated_by text
);

create table store_settings_changes (
    id         bigint generated always as identity primary key,
    store_id   text not null,
    changed_at timestamptz not null default now(),
    changed_by text,
    field      text not null,
    old_value  jsonb,  -- a secret's change records only that it was set, never the value
    new_value  jsonb
);
create index store_settings_changes_store_idx on store_settings_changes (store_id, changed_at desc);
