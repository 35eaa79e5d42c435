-- 009: messages sent while a turn runs wait their turn (API.md, "Durable turns": on_busy=enqueue). The
-- shopper's message and its answer are stored at once as 'queued'; when the session is free and the message
-- is the oldest waiting, begin_queued_turn claims the session for it, as begin_turn does for a new one.
alter table chat_messages drop constraint chat_messages_status_check;
alter table chat_messages add constraint chat_messages_status_check
    check (status in ('complete', 'streaming', 'error', 'cancelled', 'queued'));
create index chat_messages_queued_idx on chat_messages (session_id, seq) where status = 'queued';

-- outcome: 'queued' (with the position: 1 = next) | 'not_found' | 'expired' | 'full'
create function enqueue_turn(
    p_session_id   uuid,
    p_user_msg_id  uuid,
    p_asst_msg_id  uuid,
    p_content      text,
    p_model        text,
    p_metadata     jsonb,
    p_max_queued   integer,
    p_expire_after interval
) returns table (outcome text, store_id text, user_id text, queue_position integer)
language plpgsql as $$
#variable_conflict use_column
declare
    v_session chat_sessions%rowtype;
    v_waiting integer;
begin
    -- the session row, locked: two messages queued at once get distinct positions
    select * into v_session from chat_sessions s where s.session_id = p_session_id for update;
    if not found or v_session.deleted_at is not null then
        return query select 'not_found'::text, null::text, null::text, 0;
        return;
    end if;
    if v_session.status = 'expired' or v_session.last_activity_at <= now() - p_expire_after then
        return query select 'expired'::text, v_session.store_id, v_session.user_id, 0;
        return;
    end if;
    select count(*) into v_waiting from chat_messages m
     where m.session_id = p_session_id and m.status = 'queued' and m.role = 'user';
    if v_waiting >= p_max_queued then
        return query select 'full'::text, v_session.store_id, v_session.user_id, v_waiting;
        return;
    end if;
    insert into chat_messages (message_id, session_id, store_id, role, content, status, metadata)
    values (p_user_msg_id, p_session_id, v_session.store_id, 'user', p_content, 'queued', p_metadata);
    insert into chat_messages (message_id, session_id, store_id, role, status, model, run_id)
    values (p_asst_msg_id, p_session_id, v_session.store_id, 'assistant', 'queued', p_model, p_asst_msg_id);
    return query select 'queued'::text, v_session.store_id, v_session.user_id, v_waiting + 1;
end $$;

-- outcome: 'ok' (the session is claimed, the rows are 'complete' / 'streaming') | 'wait' (a turn runs, or an
-- older message waits) | 'gone' (no longer queued: the session was deleted or the message given up)
create function begin_queued_turn(
    p_session_id     uuid,
    p_user_msg_id    uuid,
    p_asst_msg_id    uuid,
    p_prompt_variant text,
    p_stale_after    interval
) returns table (outcome text, store_id text, user_id text)
language plpgsql as $$
#variable_conflict use_column
declare
    v_session chat_sessions%rowtype;
    v_first   uuid;
begin
    select m.message_id into v_first from chat_messages m
     where m.session_id = p_session_id and m.status = 'queued' and m.role = 'user'
     order by m.seq limit 1;
    if v_first is null or not exists (select 1 from chat_messages m
                                       where m.message_id = p_user_msg_id and m.status = 'queued') then
        return query select 'gone'::text, null::text, null::text;
        return;
    end if;
    if v_first <> p_user_msg_id then
        return query select 'wait'::text, null::text, null::text;
        return;
    end if;
    update chat_sessions s
       set active_run_id = p_asst_msg_id,
           active_run_started_at = now()
     where s.session_id = p_session_id
       and s.deleted_at is null
       and (s.active_run_id is null or s.active_run_started_at < now() - p_stale_after)
    returning * into v_session;
    if not found then
        return query select 'wait'::text, null::text, null::text;
        return;
    end if;
    -- a claim taken over from a dead turn: its assistant row must not stay 'streaming' forever
    update chat_messages m
       set status = 'error', error_code = 'abandoned', completed_at = now()
     where m.session_id = p_session_id and m.status = 'streaming';
    update chat_messages m set status = 'complete' where m.message_id = p_user_msg_id;
    -- the answer starts now: its age (what recovery and followers go by) counts from here, not from the queue
    update chat_messages m set status = 'streaming', prompt_variant = p_prompt_variant, created_at = now()
     where m.message_id = p_asst_msg_id;
    return query select 'ok'::text, v_session.store_id, v_session.user_id;
end $$;

-- a queued turn that will not run (cancelled, or given up): the shopper's message stays, its answer is
-- closed, and the next waiting message may go
create function close_queued_turn(
    p_user_msg_id uuid,
    p_asst_msg_id uuid,
    p_status      text,
    p_error_code  text
) returns void
language plpgsql as $$
declare
    v_session uuid;
begin
    update chat_messages m set status = 'complete' where m.message_id = p_user_msg_id and m.status = 'queued';
    update chat_messages m set status = p_status, error_code = p_error_code, completed_at = now()
     where m.message_id = p_asst_msg_id and m.status = 'queued'
    returning m.session_id into v_session;
    if v_session is not null then
        perform pg_notify('sixshop_session_free', json_build_object('session', v_session)::text);
    end if;
end $$;
