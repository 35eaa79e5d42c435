-- 015: operators sign in (README, "Operators sign in"). Each operator has an account for one or more stores, a
-- password hashed with argon2 (never the password), and server-side sign-in sessions: the browser holds only a
-- random token in an HttpOnly cookie, the database its SHA-256. Failed sign-ins are counted per account and per
-- address in short windows, here, so that every replica refuses together.
create table operators (
    operator_id   uuid primary key,
    email         text not null,
    stores        text[] not null check (cardinality(stores) > 0),
    password_hash text not null,
    created_at    timestamptz not null default now(),
    disabled_at   timestamptz
);
create unique index operators_email_idx on operators (lower(email));

create table operator_sessions (
    token_hash  text primary key,
    operator_id uuid not null references operators (operator_id) on delete cascade,
    created_at  timestamptz not null default now(),
    expires_at  timestamptz not null
);
create index operator_sessions_expiry_idx on operator_sessions (expires_at);

create table sign_in_failures (
    kind         text not null check (kind in ('account', 'address')),
    key          text not null,
    window_start timestamptz not null,
    failures     integer not null,
    primary key (kind, key, window_start)
);
