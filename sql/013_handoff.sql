-- 013: a person behind the assistant (issue "each store's own assistant"; API.md, "Store settings and handoff").
-- A session handed to a person has status 'handoff' until an operator releases it: a shopper's message is then
-- stored and no bot turn runs. Operators' messages are role 'operator', with who wrote them. Each handoff is a
-- row (statistics: how many, time to the first operator reply). A session's events (operator messages,
-- finished turns, handoff and release) are appended to session_events by triggers and announced with NOTIFY,
-- so a shopper's page follows them on any replica and resumes after Last-Event-ID. On handoff, a store with a
-- webhook gets a delivery queued in the same transaction; replicas deliver it in the background.
alter table chat_sessions drop constraint chat_sessions_status_check;
alter table chat_sessions add constraint chat_sessions_status_check
    check (status in ('active', 'expired', 'handoff'));
alter table chat_messages drop constraint chat_messages_role_check;
alter table chat_messages add constraint chat_messages_role_check
    check (role in ('user', 'assistant', 'operator'));
alter table chat_messages add column author text;  -- an operator message's operator (name or key), else null

create table handoffs (
    handoff_id     bigint generated always as identity primary key,
    session_id     uuid not null references chat_sessions (session_id) on delete cascade,
    store_id       text not null,
    reason         text not null,  -- asked | model | unanswered
    after_seq      bigint not null,  -- the answer that handed over: what the shopper and operators write after it
    started_at     timestamptz not null default now(),
    first_reply_at timestamptz,
    released_at    timestamptz,
    released_by    text
);
create unique index handoffs_open_idx on handoffs (session_id) where released_at is null;
create index handoffs_waiting_idx on handoffs (store_id, started_at) where released_at is null;
create index handoffs_store_idx on handoffs (store_id, started_at);

-- a shopper's message to a session in handoff: stored, no answer; 'handoff' (with the handoff's start)
create or replace function begin_turn(
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
        elsif v_session.status = 'handoff' then
            insert into chat_messages (message_id, session_id, store_id, role, content, status, metadata)
            values (p_user_msg_id, p_session_id, v_session.store_id, 'user', p_content, 'complete', p_metadata);
            return query select 'handoff'::text, v_session.store_id, v_session.user_id;
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

-- a message queued behind the turn that handed the session over: the shopper's message stays (operators see
-- it), its answer is closed cancelled/handoff, and the messages after it are woken to do the same
create function close_queued_for_handoff() returns trigger language plpgsql as $$
begin
    update chat_messages m set status = 'complete'
     where m.session_id = new.session_id and m.status = 'queued' and m.role = 'user';
    update chat_messages m set status = 'cancelled', error_code = 'handoff', completed_at = now()
     where m.session_id = new.session_id and m.status = 'queued' and m.role = 'assistant';
    if found then
        perform pg_notify('sixshop_session_free', json_build_object('session', new.session_id)::text);
    end if;
    return null;
end $$;
create trigger chat_sessions_handoff_closes_queue after update of status on chat_sessions
    for each row when (new.status = 'handoff' and old.status is distinct from 'handoff')
    execute function close_queued_for_handoff();

-- and a message queued in the moment between: born closed the same way
create function queued_in_handoff() returns trigger language plpgsql as $$
begin
    if exists (select 1 from chat_sessions s where s.session_id = new.session_id and s.status = 'handoff') then
        if new.role = 'user' then
            new.status := 'complete';
        else
            new.status := 'cancelled';
            new.error_code := 'handoff';
            new.completed_at := now();
        end if;
    end if;
    return new;
end $$;
create trigger chat_messages_queued_in_handoff before insert on chat_messages
    for each row when (new.status = 'queued') execute function queued_in_handoff();

-- the answer `p_answer_id` handed the session to a person: 'handoff' with the handoff's start, or 'not_active'
-- (expired or deleted meanwhile, or already in handoff: then the open handoff's start)
create function start_handoff(p_session_id uuid, p_answer_id uuid, p_reason text)
returns table (outcome text, started_at timestamptz)
language plpgsql as $$
#variable_conflict use_column
declare
    v_session chat_sessions%rowtype;
    v_seq     bigint;
    v_started timestamptz;
begin
    update chat_sessions s set status = 'handoff'
     where s.session_id = p_session_id and s.status = 'active' and s.deleted_at is null
    returning * into v_session;
    if not found then
        return query select 'not_active'::text,
                            (select h.started_at from handoffs h where h.session_id = p_session_id
                                and h.released_at is null);
        return;
    end if;
    select m.seq into v_seq from chat_messages m where m.message_id = p_answer_id;
    insert into handoffs (session_id, store_id, reason, after_seq)
    values (p_session_id, v_session.store_id, p_reason,
            coalesce(v_seq, (select max(m.seq) from chat_messages m where m.session_id = p_session_id), 0))
    returning handoffs.started_at into v_started;
    -- the store's webhook (store_settings, sql/012) is told, in the background (persistence/webhooks.py)
    insert into webhook_deliveries (store_id, session_id, event, payload)
    select v_session.store_id, p_session_id, 'handoff.started',
           jsonb_build_object('type', 'handoff.started', 'store_id', v_session.store_id,
                              'session_id', p_session_id, 'user_id', v_session.user_id, 'reason', p_reason,
                              'started_at', v_started)
      from store_settings st
     where st.store_id = v_session.store_id and st.settings ? 'webhook_url';
    if found then
        perform pg_notify('sixshop_webhooks', json_build_object('store', v_session.store_id)::text);
    end if;
    return query select 'handoff'::text, v_started;
end $$;

-- a session's events as they happen, for its event stream (API.md): ids increase (the stream's Last-Event-ID)
create table session_events (
    event_id   bigint generated always as identity primary key,
    session_id uuid not null references chat_sessions (session_id) on delete cascade,
    kind       text not null check (kind in ('message', 'status')),
    message_id uuid,
    status     text,
    created_at timestamptz not null default now()
);
create index session_events_session_idx on session_events (session_id, event_id);

create function session_event(p_session_id uuid, p_kind text, p_message_id uuid, p_status text)
returns void language plpgsql as $$
declare
    v_id bigint;
begin
    insert into session_events (session_id, kind, message_id, status)
    values (p_session_id, p_kind, p_message_id, p_status)
    returning event_id into v_id;
    perform pg_notify('sixshop_session_events', json_build_object('session', p_session_id, 'id', v_id)::text);
end $$;

-- operator messages, shoppers' messages to a session in handoff, and finished answers
create function chat_messages_session_events() returns trigger language plpgsql as $$
begin
    if tg_op = 'INSERT' then
        if new.role = 'operator' or (new.role = 'user' and new.status = 'complete'
                                     and exists (select 1 from chat_sessions s where s.session_id = new.session_id
                                                    and s.status = 'handoff')) then
            perform session_event(new.session_id, 'message', new.message_id, null);
        end if;
    elsif new.role = 'assistant' and old.status in ('streaming', 'queued')
          and new.status in ('complete', 'error', 'cancelled') then
        perform session_event(new.session_id, 'message', new.message_id, null);
    end if;
    return null;
end $$;
create trigger chat_messages_events_insert after insert on chat_messages
    for each row when (new.role <> 'assistant') execute function chat_messages_session_events();
create trigger chat_messages_events_update after update of status on chat_messages
    for each row when (new.role = 'assistant' and old.status is distinct from new.status)
    execute function chat_messages_session_events();

create function chat_sessions_status_event() returns trigger language plpgsql as $$
begin
    perform session_event(new.session_id, 'status', null, new.status);
    return null;
end $$;
create trigger chat_sessions_status_events after update of status on chat_sessions
    for each row when (old.status is distinct from new.status)
    execute function chat_sessions_status_event();

-- handoff notifications to a store's webhook: one row per event, every attempt logged
create table webhook_deliveries (
    delivery_id     uuid primary key default gen_random_uuid(),
    store_id        text not null,
    session_id      uuid,
    event           text not null,
    payload         jsonb not null,
    status          text not null default 'pending' check (status in ('pending', 'delivered', 'failed')),
    attempts        integer not null default 0,
    created_at      timestamptz not null default now(),
    next_attempt_at timestamptz not null default now(),
    locked_until    timestamptz,
    finished_at     timestamptz
);
create index webhook_deliveries_due_idx on webhook_deliveries (next_attempt_at) where status = 'pending';
create index webhook_deliveries_store_idx on webhook_deliveries (store_id, created_at desc);

create table webhook_attempts (
    attempt_id   bigint generated always as identity primary key,
    delivery_id  uuid not null references webhook_deliveries (delivery_id) on delete cascade,
    attempt      integer not null,
    attempted_at timestamptz not null default now(),
    status_code  integer,  -- null: no answer (refused, timed out)
    error        text,
    duration_ms  integer not null
);
create index webhook_attempts_delivery_idx on webhook_attempts (delivery_id, attempt);
