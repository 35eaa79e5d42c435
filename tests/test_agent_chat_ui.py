"""Agent Chat UI itself against the service (issue 18): LangChain's chat app for LangGraph servers — the Vite
template of create-agent-chat-app, unchanged, built with VITE_API_URL and VITE_ASSISTANT_ID=agent — served on
another loopback origin and driven in Chromium: a Korean question is answered, streaming; after a reload the thread
is in its history sidebar and opens with both messages; built without them, its settings form takes the service's
URL and a store key, and the thread it makes belongs to that store."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SHOTS, chromium_path, fetch_all
from tests.node import CACHE, agent_chat_ui
from tests.server_process import ServerProcess
from tests.test_auth import _new_key

pytestmark = pytest.mark.e2e
QUESTION = "배송비는 얼마인가요?"


PREPARED_DATABASE = True  # conftest.database_url: a copy of a database a keyless `serve` has prepared


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[ServerProcess]:
    with ServerProcess({"DATABASE_URL": database_url, "OFFLINE_CHUNK_DELAY_MS": "25", "KEYS_CACHE_SECONDS": "0",
                        "CAPACITY_SAMPLE_SECONDS": "0"}) as proc:
        yield proc


def _serve(directory: Path) -> tuple[ThreadingHTTPServer, str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(directory)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


@pytest.fixture(scope="module")
def ui(server: ServerProcess) -> Iterator[str]:
    chromium_path()  # skip early on a machine without a browser
    build = agent_chat_ui(CACHE / "agent-chat-ui" / "dist-env",
                          {"VITE_API_URL": server.base_url, "VITE_ASSISTANT_ID": "agent"})
    httpd, origin = _serve(build)
    yield origin
    httpd.shutdown()


def test_agent_chat_ui_chats_and_finds_its_threads(ui: str, server: ServerProcess, browser: Any,
                                                   database_url: str) -> None:
    errors: list[str] = []
    page = browser.new_page(viewport={"width": 1400, "height": 900}, locale="ko-KR")
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(ui)
    page.fill("textarea[placeholder='Type your message...']", QUESTION)
    page.evaluate("""() => {
      window.__lengths = [];
      new MutationObserver(() => window.__lengths.push(document.body.innerText.length))
        .observe(document.body, {subtree: true, childList: true, characterData: true});
    }""")
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.click("button[type='submit']")
    try:
        page.wait_for_function("() => document.body.innerText.includes('3,000')", timeout=30_000)
    except Exception as exc:  # say what the page and the server saw
        raise AssertionError((page.inner_text("body")[:2000], errors, console, server.output()[-3000:])) from exc
    page.wait_for_selector("button[type='submit']", timeout=30_000)  # the Cancel button is gone: the run ended
    lengths = page.evaluate("window.__lengths")
    assert len(set(lengths)) >= 5, lengths  # the answer grew on screen as it streamed
    thread_id = page.evaluate("new URLSearchParams(location.search).get('threadId')")
    assert thread_id
    rows = fetch_all(database_url, "select role, content from chat_messages where session_id = %s order by seq",
                     (thread_id,))
    assert [r["role"] for r in rows] == ["user", "assistant"] and rows[0]["content"] == QUESTION
    answer = rows[1]["content"]

    # reload, on the history view: the thread is listed (threads.search by graph_id) and opens with both messages.
    # (Agent Chat UI's history reads the server's URL and the assistant from the query string only, not from the
    # VITE_ variables its chat falls back to: a link to it carries them)
    page.goto(f"{ui}/?apiUrl={server.base_url}&assistantId=agent&chatHistoryOpen=true")
    item = page.locator("button:visible", has_text=thread_id).or_(
        page.locator("button:visible", has_text=QUESTION)).first
    try:
        item.wait_for(timeout=20_000)
    except Exception as exc:
        raise AssertionError((page.inner_text("body")[:2000], errors, console, server.output()[-2000:])) from exc
    item.click()
    page.wait_for_function(f"() => document.body.innerText.includes({QUESTION!r})", timeout=20_000)
    page.wait_for_function("() => document.body.innerText.includes('3,000')", timeout=20_000)
    assert answer.split()[0] in page.inner_text("body")
    page.screenshot(path=str(SHOTS / "agent-chat-ui.png"))
    assert not errors, errors


def test_agent_chat_ui_with_a_store_key(server: ServerProcess, browser: Any, database_url: str) -> None:
    """Built with no URL, the app asks for one, the assistant id and an API key (its form): with a store's key the
    thread is that store's."""
    build = agent_chat_ui(CACHE / "agent-chat-ui" / "dist-form", {})
    httpd, origin = _serve(build)
    try:
        key = _new_key(database_url, "--store", "store-chat-ui")
        page = browser.new_page(viewport={"width": 1400, "height": 900}, locale="ko-KR")
        page.goto(origin)
        page.fill("#apiUrl", server.base_url)
        page.fill("#assistantId", "agent")
        page.fill("#apiKey", key)
        page.click("form button[type='submit']")
        page.fill("textarea[placeholder='Type your message...']", "How long does delivery take?")
        page.click("button[type='submit']")
        page.wait_for_function("() => new URLSearchParams(location.search).get('threadId')", timeout=20_000)
        thread_id = page.evaluate("new URLSearchParams(location.search).get('threadId')")
        page.wait_for_selector("button[type='submit']", timeout=30_000)
        rows = fetch_all(database_url, "select store_id from chat_sessions where session_id = %s", (thread_id,))
        assert [r["store_id"] for r in rows] == ["store-chat-ui"]
        answered = fetch_all(database_url, "select status from chat_messages where session_id = %s and role = "
                                           "'assistant'", (thread_id,))
        assert [r["status"] for r in answered] == ["complete"]
    finally:
        httpd.shutdown()
