"""/metrics on a real server process, read with prometheus-client's own parser."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fake_openai import FakeOpenAIServer
from tests.server_process import ServerProcess
from tests.test_e2e import new_session, stream_turn


@pytest.fixture(scope="module")
def server(database_url: str, fake_openai: FakeOpenAIServer) -> Iterator[ServerProcess]:
    with ServerProcess({"DATABASE_URL": database_url, "OPENAI_API_KEY": "sk-local-test",
                          "OPENAI_BASE_URL": fake_openai.base_url, "OPENAI_MAX_RETRIES": "0"}) as proc:
        yield proc


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_move_with_turns(server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as c:
        before = _samples((await c.get("/metrics")).text)
        session = await new_session(c)
        ok = await stream_turn(c, session["session_id"], "How much is shipping?")
        failed = await stream_turn(c, session["session_id"], "[[http500]]")
        missing = await c.post("/api/session-chat/sessions/00000000-0000-0000-0000-000000000000/chat",
                               json={"message": "hi"})
        response = await c.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    after = _samples(response.text)
    assert ok[-1][0] == "done" and failed[-1][0] == "error" and missing.status_code == 404

    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert delta("sixshop_chat_turns_total", outcome="complete") == 1
    assert delta("sixshop_chat_turns_total", outcome="model_error") == 1
    assert delta("sixshop_chat_turns_total", outcome="not_found") == 1
    stored = ok[-1][2]["message"]
    assert delta("sixshop_chat_tokens_total", direction="output", model=stored["model"]) == stored["output_tokens"]
    assert delta("sixshop_chat_tokens_total", direction="input", model=stored["model"]) == stored["input_tokens"]
    assert delta("sixshop_chat_first_token_seconds_count") == 1
    assert delta("sixshop_chat_turn_seconds_count", outcome="complete") == 1
    # HTTP requests by route template and status, with latency histograms
    route = "/api/session-chat/sessions/{session_id}/chat/stream"
    http = [(k, v) for k, v in after.items() if k[0] == "sixshop_requests_total" and ("path", route) in k[1]]
    assert http, sorted({k for k in after if k[0] == "sixshop_requests_total"})
    assert all(("status_code", "200") in k[1] for k, _ in http)
    assert any(k[0] == "sixshop_request_duration_seconds_bucket" for k in after)
    # the pool and LangSmith's queue are read at scrape time
    assert _value(after, "sixshop_db_pool_size") >= 1
    assert _value(after, "sixshop_db_pool_in_use") >= 0 and ("sixshop_db_pool_waiting", ()) in after
    assert ("sixshop_langsmith_queue_depth", ()) in after and ("sixshop_langsmith_send_errors_total", ()) in after
    assert delta("sixshop_db_connection_hold_seconds_count") > 0
