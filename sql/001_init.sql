-- 001: sessions, messages, feedback and the turn functions.
-- A session is a LangGraph thread (thread_id = session_id); these tables are the business record
-- (billing, statistics, history, feedback); the conversation memory lives in the checkpoint tables.

create table chat_sessions (
    session_id            uuid primary key,
    store_id              text not null,
    user_id               text,
    status                text not null default 'active' check (status in ('active', 'expired')),
    metadata              jsonb not null default '{}'::jsonb,
    message_count         integer not null default 0,
    input_tokens          bigint not null default 0,
    output_tokens         bigint not null default 0,
    -- the turn that holds the session (assistant message id = run id); null when idle
    active_run_id         uuid,
    active_run_started_at timestamptz,
    created_at            timestamptz not null default now(),
    updated_at            timestamptz not null default now(),
    last_activity_at      timestamptz not null default now(),
    expired_at            timestamptz,
    deleted_at            timestamptz
);

-- listing: newest first, keyset pagination on (created_at, session_id), per store and per user
create index chat_sessions_list_idx on chat_sessions (created_at desc, session_id desc)
    where deleted_at is null;
create index chat_sessions_store_list_idx on chat_sessions (store_id, created_at desc, session_id desc)
    where deleted_at is null;
create index chat_sessions_store_user_list_idx
    on chat_sessions (store_id, user_id, created_at desc, session_id desc)
    where deleted_at is null;
-- the expiry job walks active sessions by inactivity
create index chat_sessions_activity_idx on chat_sessions (last_activity_at)
    where deleted_at is null and status = 'active';

create table chat_messages (
    message_id     uuid primary key,
    -- strict order inside a session: user and assistant rows of one turn share a transaction timestamp
    seq            bigint generated always as identity,
    session_id     uuid not null references chat_sessions (session_id) on delete cascade,
    store_id       text not null,
    role           text not null check (role in ('user', 'assistant')),
    content        text not null default '',
    status         text not null check (status in ('complete', 'streaming', 'error', 'cancelled')),
    model          text,
    prompt_variant text,
    input_tokens   integer not null default 0 check (input_tokens >= 0),
    output_tokens  integer not null default 0 check (output_tokens >= 0),
    latency_ms     integer,
    first_token_ms integer,
    sources        jsonb not null default '[]'::jsonb,
    run_id         uuid,
    error_code     text,
    metadata       jsonb not null default '{}'::jsonb,
    created_at     timestamptz not null default now(),
    updated_at     timestamptz not null default now(),
    completed_at   timestamptz,
    deleted_at     timestamptz
);

create index chat_messages_session_seq_idx on chat_messages (session_id, seq);
create index chat_messages_store_created_idx on chat_messages (store_id, created_at);
-- restart recovery looks for turns left streaming
create index chat_messages_streaming_idx on chat_messages (created_at) where status = 'streaming';

create table message_feedback (
    message_id uuid primary key references chat_messages (message_id) on delete cascade,
    store_id   text not null,
    score      real not null check (score >= 0 and score <= 1),
    comment    text,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);
create index message_feedback_store_idx on message_feedback (store_id, created_at);

-- updated_at on every update
create function touch_updated_at() returns trigger language plpgsql as $$
begin
    new.updated_at := now();
    return new;
end $$;

create trigger chat_sessions_touch before update on chat_sessions
    for each row execute function touch_updated_at();
create trigger chat_messages_touch before update on chat_messages
    for each row execute function touch_updated_at();
create trigger message_feedback_touch before update on message_feedback
    for each row execute function touch_updated_at();

-- The session's counters follow its messages, whatever code path writes them.
create function chat_messages_session_counters() returns trigger language plpgsql as $$
begin
    if tg_op = 'INSERT' then
        update chat_sessions
           set message_count    = message_count + 1,
               input_tokens     = input_tokens + new.input_tokens,
               output_tokens    = output_tokens + new.output_tokens,
               last_activity_at = greatest(last_activity_at, now())
         where session_id = new.session_id;
    elsif tg_op = 'UPDATE' then
        if new.input_tokens is distinct from old.input_tokens
           or new.output_tokens is distinct from old.output_tokens then
            update chat_sessions
               set input_tokens     = input_tokens + new.input_tokens - old.input_tokens,
                   output_tokens    = output_tokens + new.output_tokens - old.output_tokens,
                   last_activity_at = greatest(last_activity_at, now())
             where session_id = new.session_id;
        end if;
    elsif tg_op = 'DELETE' then
        update chat_sessions
           set message_count = message_count - 1,
               input_tokens  = input_tokens - old.input_tokens,
               output_tokens = output_tokens - old.output_tokens
         where session_id = old.session_id;
    end if;
    return null;
end $$;

create trigger chat_messages_counters after insert or update or delete on chat_messages
    for each row execute function chat_messages_session_counters();

-- One round trip starts a turn: claim the session (or say why not) and write both rows.
-- outcome: 'ok' | 'not_found' | 'expired' | 'busy'
create function begin_turn(
    p_session_id     uuid,
    p_user_msg_id    uuid,
    p_asst_msg_id    uuid,
    p_content        text,
    p_model          text,
    p_prompt_variant text,
    p_metadata       jsonb,
    p_stale_after    interval,
    p_expire_after   interval
) returns table (outcome text, store_id text, user_id text)
language plpgsql as $$
#variable_conflict use_column
declare
    v_session chat_sessions%rowtype;
    v_stale   uuid;
begin
    update chat_sessions s
       set active_run_id = p_asst_msg_id,
           active_run_started_at = now()
     where s.session_id = p_session_id
       and s.deleted_at is null
       and s.status = 'active'
       and s.last_activity_at > now() - p_expire_after
       and (s.active_run_id is null or s.active_run_started_at < now() - p_stale_after)
    returning * into v_session;

    if not found then
        select * into v_session from chat_sessions s where s.session_id = p_session_id;
        if not found or v_session.deleted_at is not null then
            return query select 'not_found'::text, null::text, null::text;
        elsif v_session.status = 'expired' or v_session.last_activity_at <= now() - p_expire_after then
            update chat_sessions s
               set status = 'expired', expired_at = coalesce(s.expired_at, now())
             where s.session_id = p_session_id and s.status = 'active';
            return query select 'expired'::text, v_session.store_id, v_session.user_id;
        else
            return query select 'busy'::text, v_session.store_id, v_session.user_id;
        end if;
        return;
    end if;

    -- a claim taken over from a dead turn: its assistant row must not stay 'streaming' forever
    update chat_messages m
       set status = 'error', error_code = 'abandoned', completed_at = now()
     where m.session_id = p_session_id and m.status = 'streaming';

    insert into chat_messages (message_id, session_id, store_id, role, content, status, metadata)
    values (p_user_msg_id, p_session_id, v_session.store_id, 'user', p_content, 'complete', p_metadata);
    insert into chat_messages (message_id, session_id, store_id, role, status, model, prompt_variant, run_id)
    values (p_asst_msg_id, p_session_id, v_session.store_id, 'assistant', 'streaming', p_model,
            p_prompt_variant, p_asst_msg_id);

    return query select 'ok'::text, v_session.store_id, v_session.user_id;
end $$;

-- One round trip ends a turn: the assistant row gets its final state and the claim is released.
create function finish_turn(
    p_asst_msg_id    uuid,
    p_status         text,
    p_content        text,
    p_model          text,
    p_input_tokens   integer,
    p_output_tokens  integer,
    p_latency_ms     integer,
    p_first_token_ms integer,
    p_sources        jsonb,
    p_error_code     text
) returns setof chat_messages
language plpgsql as $$
#variable_conflict use_column
declare
    v_msg chat_messages%rowtype;
begin
    update chat_messages m
       set status = p_status,
           content = p_content,
           model = coalesce(p_model, m.model),
           input_tokens = p_input_tokens,
           output_tokens = p_output_tokens,
           latency_ms = p_latency_ms,
           first_token_ms = p_first_token_ms,
           sources = p_sources,
           error_code = p_error_code,
           completed_at = now()
     where m.message_id = p_asst_msg_id and m.status = 'streaming'
    returning * into v_msg;

    if not found then
        -- already finished (e.g. a stale claim was taken over): leave it, report what is stored
        select * into v_msg from chat_messages m where m.message_id = p_asst_msg_id;
    end if;

    update chat_sessions s
       set active_run_id = null, active_run_started_at = null
     where s.session_id = v_msg.session_id and s.active_run_id = p_asst_msg_id;

    return next v_msg;
end $$;
