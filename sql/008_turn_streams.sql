-- 008: what the stream of a finished turn is rebuilt from when a client rejoins it (API.md, "Durable
-- turns"): the ids its events had, and where each token delta ended in the stored content. Written by
-- finish_turn in the same statement as the rest of the turn's end: no extra round trip. finish_turn also
-- tells the replicas when a session with waiting (queued, sql/009) messages becomes free: nothing is sent
-- otherwise, so the normal path costs no notification.
alter table chat_messages add column stream_index jsonb;

drop function finish_turn(uuid, text, text, text, integer, integer, integer, integer, jsonb, text);

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
    p_stream_index   jsonb
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
           stream_index = p_stream_index,
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

    if exists (select 1 from chat_messages m where m.session_id = v_msg.session_id and m.status = 'queued') then
        perform pg_notify('sixshop_session_free', json_build_object('session', v_msg.session_id)::text);
    end if;

    return next v_msg;
end $$;
