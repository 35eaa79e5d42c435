-- 010: a dead replica's turn is re-run (API.md, "Durable turns"). A running answer holds a lease that its
-- replica renews for all its turns in one statement every TURN_LEASE_SECONDS/3 (a turn younger than that
-- has never been renewed: its lease runs from created_at). A lease that ran out means the replica died;
-- another replica's sweep (reclaim_turns) takes the turn and re-runs it once, from the checkpoint taken
-- before it, under a new run_id; a second death ends it error/abandoned. finish_turn now stores an answer
-- only for the run that holds it, so a run that lost its lease (a replica that was only slow) cannot
-- overwrite the re-run's answer.
alter table chat_messages add column lease_until timestamptz;
alter table chat_messages add column attempt smallint not null default 1;
-- the sweep reads the few answers streaming right now through chat_messages_streaming_idx (sql/001)

drop function finish_turn(uuid, text, text, text, integer, integer, integer, integer, jsonb, text, jsonb);

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
    p_error_code     text,
    p_stream_index   jsonb,
    p_run_id         uuid
) returns setof chat_messages
language plpgsql as $$
#variable_conflict use_column
declare
    v_msg   chat_messages%rowtype;
    v_mine  boolean;
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
           stream_index = p_stream_index,
           lease_until = null,
           completed_at = now()
     where m.message_id = p_asst_msg_id and m.status = 'streaming' and m.run_id = p_run_id
    returning * into v_msg;
    v_mine := found;

    if not v_mine then
        -- already finished (a stale claim was taken over), or re-run elsewhere: leave it, report what is stored
        select * into v_msg from chat_messages m where m.message_id = p_asst_msg_id;
    end if;

    -- the claim is released by the run that ends the answer, never by a run that lost it to a re-run
    if v_mine or v_msg.status <> 'streaming' then
        update chat_sessions s
           set active_run_id = null, active_run_started_at = null
         where s.session_id = v_msg.session_id and s.active_run_id = p_asst_msg_id;
    end if;

    if exists (select 1 from chat_messages m where m.session_id = v_msg.session_id and m.status = 'queued') then
        perform pg_notify('sixshop_session_free', json_build_object('session', v_msg.session_id)::text);
    end if;

    return next v_msg;
end $$;

-- The sweep: answers streaming past their lease, locked so that one replica takes each. Those on their last
-- attempt are closed error/abandoned (their session freed); the others get attempt + 1, a new run_id and a
-- fresh lease, and are returned with what re-running them needs.
create function reclaim_turns(
    p_lease        interval,
    p_max_attempts integer,
    p_limit        integer
) returns table (message_id uuid, session_id uuid, store_id text, user_id text, user_message_id uuid,
                 content text, model text, prompt_variant text, attempt integer, run_id uuid)
language plpgsql as $$
#variable_conflict use_column
declare
    v record;
begin
    -- PostgreSQL itself was down until less than a lease ago: nobody could renew a lease meanwhile, and the
    -- sweep may have been queued (by a pooler) behind the outage; give the live replicas a lease to renew first
    if now() - pg_postmaster_start_time() < p_lease then
        return;
    end if;
    for v in
        select m.message_id, m.session_id, m.attempt, m.seq,
               (s.active_run_id = m.message_id and s.deleted_at is null) as claimed
          from chat_messages m join chat_sessions s using (session_id)
         where m.status = 'streaming' and coalesce(m.lease_until, m.created_at + p_lease) < now()
         order by m.created_at
         limit p_limit
           for update of m skip locked
    loop
        if v.attempt >= p_max_attempts or not v.claimed then
            update chat_messages m
               set status = 'error', error_code = 'abandoned', lease_until = null, completed_at = now()
             where m.message_id = v.message_id;
            update chat_sessions s
               set active_run_id = null, active_run_started_at = null
             where s.session_id = v.session_id and s.active_run_id = v.message_id;
            if exists (select 1 from chat_messages m where m.session_id = v.session_id and m.status = 'queued') then
                perform pg_notify('sixshop_session_free', json_build_object('session', v.session_id)::text);
            end if;
            continue;
        end if;
        -- the re-run starts now: its age (the TURN_TIMEOUT_SECONDS takeover, followers' patience) counts from here
        update chat_messages m
           set attempt = m.attempt + 1, run_id = gen_random_uuid(), lease_until = now() + p_lease,
               created_at = now()
         where m.message_id = v.message_id;
        update chat_sessions s set active_run_started_at = now() where s.session_id = v.session_id;
        return query
            select m.message_id, m.session_id, m.store_id, s.user_id, u.message_id, u.content, m.model,
                   m.prompt_variant, m.attempt::integer, m.run_id
              from chat_messages m
              join chat_sessions s using (session_id)
              join lateral (select q.message_id, q.content from chat_messages q
                             where q.session_id = m.session_id and q.role = 'user' and q.seq < m.seq
                             order by q.seq desc limit 1) u on true
             where m.message_id = v.message_id;
    end loop;
end $$;
