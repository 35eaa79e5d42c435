"""The shopper page (/) and the operator page (/admin) in headless Chromium (Debian's `chromium`, driven
by Playwright through `executable_path`; `.ci/run` installs it). Screenshots of both pages go to a temporary
folder, or with UPDATE_SCREENSHOTS=1 to docs/screenshots/, which the docs show (a test run does not
rewrite tracked files)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import SHOTS, fetch_all
from tests.server_process import ServerProcess

pytestmark = pytest.mark.e2e
ADMIN_TOKEN = "web-admin-token-1"
STORE = "web-store"
QUESTION = "배송비는 얼마인가요?"


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[ServerProcess]:
    # offline model with a pause between chunks, so the page visibly receives the answer piece by piece
    with ServerProcess({"DATABASE_URL": database_url, "OPENAI_API_KEY": "", "OFFLINE_CHUNK_DELAY_MS": "25",
                        "ADMIN_TOKEN": ADMIN_TOKEN, "CAPACITY_SAMPLE_SECONDS": "0"}) as proc:
        yield proc


# records, in the page, the streaming answer's text at every DOM change (to see tokens arrive)
WATCH = """() => {
  window.__seen = [];
  new MutationObserver(() => {
    const el = document.querySelector('.msg.assistant.streaming .text');
    if (el) window.__seen.push([performance.now(), el.textContent.length]);
  }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
}"""


HANGUL_HAS_GLYPHS = """() => {
  const c = document.createElement('canvas'); c.width = 48; c.height = 48;
  const g = c.getContext('2d');
  g.font = '32px ' + getComputedStyle(document.body).fontFamily;
  const draw = (t) => {
    g.clearRect(0, 0, 48, 48); g.fillText(t, 4, 38); return g.getImageData(0, 0, 48, 48).data.join();
  };
  return draw('배') !== draw(String.fromCodePoint(0x10FFFD));
}"""


def test_chat_then_operator_page(server: ServerProcess, browser: Any, database_url: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1100, "height": 760}, locale="ko-KR")
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{server.base_url}/chat?store={STORE}")
    page.wait_for_selector("#sessions option", state="attached")
    session_id = page.evaluate("localStorage.getItem('sixshop.session.web-store')")
    assert session_id

    # chat: the answer streams in, token by token
    page.evaluate(WATCH)
    page.fill("#input", QUESTION)
    page.press("#input", "Enter")
    page.wait_for_selector(".msg.assistant .foot button[data-score='1']", timeout=30_000)
    seen = page.evaluate("window.__seen")
    lengths = [n for _, n in seen]
    assert len(set(lengths)) >= 5, seen  # many partial answers were on screen before the end
    assert lengths == sorted(lengths) and seen[-1][0] - seen[0][0] > 100  # growing, over time
    answer = page.inner_text(".msg.assistant .text")
    stored = fetch_all(database_url, "select content from chat_messages where session_id = %s and role = "
                                     "'assistant'", (session_id,))
    assert stored and answer.strip() == stored[0]["content"].strip()  # what streamed is what was stored
    assert any("\uac00" <= ch <= "\ud7a3" for ch in answer)  # a Korean answer to a Korean question
    assert page.inner_text(".msg.user .text") == QUESTION
    links = page.eval_on_selector_all(".msg.assistant .sources a", "els => els.map(a => [a.href, a.textContent])")
    assert links and all(href.startswith("https://") for href, _ in links)
    # Korean renders with real glyphs: in the page's fonts a Hangul syllable does not draw like a
    # character no font has (the "tofu" box it would be without a Korean font)
    assert page.evaluate("document.characterSet") == "UTF-8"
    assert page.evaluate(HANGUL_HAS_GLYPHS)

    # feedback: thumbs up is stored
    page.click(".msg.assistant .foot button[data-score='1']")
    page.wait_for_selector(".msg.assistant .foot button.chosen")
    rows = fetch_all(database_url, "select f.score from message_feedback f join chat_messages m using (message_id) "
                                   "where m.session_id = %s", (session_id,))
    assert [r["score"] for r in rows] == [1.0]
    page.screenshot(path=str(SHOTS / "chat.png"))

    # reload: the same session, its history on screen
    page.reload()
    page.wait_for_selector(".msg.assistant .text")
    assert page.evaluate("localStorage.getItem('sixshop.session.web-store')") == session_id
    assert page.inner_text(".msg.user .text") == QUESTION
    assert page.inner_text(".msg.assistant .text").strip() == answer.strip()

    # the operator page: the admin token is required, then the turn is in the charts and the transcript
    admin = browser.new_page(viewport={"width": 1400, "height": 1000})
    admin.on("pageerror", lambda exc: errors.append(str(exc)))
    admin.goto(f"{server.base_url}/admin#store={STORE}")
    admin.wait_for_selector("#signin:not([hidden])")  # no credential yet: the sign-in form (or a token)
    admin.fill("#token", ADMIN_TOKEN)
    admin.dispatch_event("#token", "change")
    admin.wait_for_selector("#chart-turns rect[data-value='1']")
    assert admin.input_value("#store") == STORE
    assert admin.inner_text(".figure[data-figure='turns'] b") == "1"
    assert admin.inner_text(".figure[data-figure='feedback'] b").startswith("1")
    assert admin.locator("#chart-latency circle").count() >= 2  # p50 and p95 of the day
    assert admin.inner_text("#variants tbody").strip()  # the turn's prompt variant row
    admin.click(f"#sessions tr[data-session-id='{session_id}']")
    admin.wait_for_selector("#turns .turn.assistant")
    transcript = admin.inner_text("#turns")
    assert QUESTION in transcript and "feedback ▲ up" in transcript and "tokens" in transcript
    assert "tracing off" in transcript  # no LangSmith here; with tracing on the link is a trace URL
    admin.fill("#q", "배송비")  # search by message text
    admin.press("#q", "Enter")
    admin.wait_for_function("document.querySelectorAll('#sessions tbody tr').length === 1")
    admin.screenshot(path=str(SHOTS / "admin.png"), full_page=True)
    assert not errors, errors


@pytest.fixture(scope="module")
def slow_server(database_url: str) -> Iterator[ServerProcess]:
    """Answers that stream for several seconds (80 ms between chunks), to leave them midway."""
    with ServerProcess({"DATABASE_URL": database_url, "OPENAI_API_KEY": "", "OFFLINE_CHUNK_DELAY_MS": "80",
                        "CAPACITY_SAMPLE_SECONDS": "0"}) as proc:
        yield proc


def _ask_and_wait_for_tokens(page: Any, base_url: str, store: str, text: str) -> str:
    page.goto(f"{base_url}/chat?store={store}")
    page.wait_for_selector("#sessions option", state="attached")
    session_id = str(page.evaluate(f"localStorage.getItem('sixshop.session.{store}')"))
    page.fill("#input", text)
    page.press("#input", "Enter")
    page.wait_for_function("() => (document.querySelector('.msg.assistant.streaming .text')?.textContent || '')"
                           ".length > 10", timeout=20_000)
    return session_id


def _stored_answer(database_url: str, session_id: str) -> dict[str, Any]:
    rows = fetch_all(database_url, "select status, content from chat_messages where session_id = %s and "
                                   "role = 'assistant' order by seq", (session_id,))
    assert len(rows) == 1
    return rows[0]


def test_the_answer_survives_a_network_drop(slow_server: ServerProcess, browser: Any, database_url: str) -> None:
    """Mid-answer the connection dies and the phone is offline for a moment (a tunnel): the page keeps the
    partial answer, reconnects once online, and the answer completes in place."""
    from tests.tcp_proxy import DroppingProxy

    context = browser.new_context(locale="ko-KR")
    page = context.new_page()
    with DroppingProxy(slow_server.port) as proxy:
        session_id = _ask_and_wait_for_tokens(page, proxy.base_url, "web-offline", QUESTION)
        context.set_offline(True)
        assert proxy.drop() >= 1  # the answer's stream was cut mid-way
        page.wait_for_function("() => document.getElementById('status').textContent.startsWith('Offline')",
                               timeout=10_000)
        partial = page.inner_text(".msg.assistant .text")
        page.wait_for_timeout(1000)
        context.set_offline(False)
        page.wait_for_selector(".msg.assistant .foot button[data-score='1']", timeout=30_000)
        final = page.inner_text(".msg.assistant .text")
    stored = _stored_answer(database_url, session_id)
    assert stored["status"] == "complete"
    assert final.strip() == stored["content"].strip() and final.startswith(partial)  # completed in place
    assert page.locator(".msg.assistant").count() == 1
    context.close()


def test_the_answer_goes_on_after_a_reload(slow_server: ServerProcess, browser: Any, database_url: str) -> None:
    context = browser.new_context(locale="ko-KR")
    page = context.new_page()
    session_id = _ask_and_wait_for_tokens(page, slow_server.base_url, "web-reload", QUESTION)
    page.reload()
    page.wait_for_selector(".msg.assistant.streaming", timeout=10_000)  # picked up where it was, still running
    page.wait_for_selector(".msg.assistant .foot button[data-score='1']", timeout=30_000)
    stored = _stored_answer(database_url, session_id)
    assert stored["status"] == "complete"
    assert page.inner_text(".msg.assistant .text").strip() == stored["content"].strip()
    assert page.evaluate("JSON.parse(localStorage.getItem('sixshop.running.web-reload'))") == {}  # none in flight
    context.close()


def test_a_message_sent_while_answering_is_queued_then_answered(slow_server: ServerProcess, browser: Any,
                                                                database_url: str) -> None:
    context = browser.new_context(locale="ko-KR")
    page = context.new_page()
    session_id = _ask_and_wait_for_tokens(page, slow_server.base_url, "web-queue", QUESTION)
    page.fill("#input", "반품은 어떻게 하나요?")  # sent while the first answer streams
    page.press("#input", "Enter")
    page.wait_for_selector(".msg.assistant.queued", timeout=10_000)
    assert "queued" in page.inner_text(".msg.assistant.queued .foot")
    page.wait_for_function("() => document.querySelectorAll(\".msg.assistant .foot button[data-score='1']\")"
                           ".length === 2", timeout=60_000)
    rows = fetch_all(database_url, "select role, status, content from chat_messages where session_id = %s "
                                   "order by seq", (session_id,))
    assert [(r["role"], r["status"]) for r in rows] == [("user", "complete"), ("assistant", "complete")] * 2
    shown = page.eval_on_selector_all(".msg.assistant .text", "els => els.map(e => e.textContent.trim())")
    assert shown == [r["content"].strip() for r in rows if r["role"] == "assistant"]  # both, in order
    assert page.locator(".msg.assistant.queued").count() == 0
    context.close()


@pytest.fixture(scope="module")
def model_server(database_url: str, fake_openai: Any) -> Iterator[ServerProcess]:
    """A replica answering with the fake OpenAI model, which says in its answer what an operator wrote."""
    with ServerProcess({"DATABASE_URL": database_url, "OPENAI_API_KEY": "sk-local-test",
                        "OPENAI_BASE_URL": fake_openai.base_url, "OPENAI_MAX_RETRIES": "0",
                        "ADMIN_TOKEN": ADMIN_TOKEN, "CAPACITY_SAMPLE_SECONDS": "0"}) as proc:
        yield proc


def test_an_operator_reply_reaches_the_shoppers_open_page(model_server: ServerProcess, browser: Any,
                                                          fake_openai: Any) -> None:
    store, reply = "web-handoff", "안녕하세요, 상담원 김하늘입니다. 교환 접수해 드렸어요."
    errors: list[str] = []
    shopper = browser.new_page(viewport={"width": 900, "height": 700}, locale="ko-KR")
    shopper.on("pageerror", lambda exc: errors.append(str(exc)))
    shopper.goto(f"{model_server.base_url}/chat?store={store}")
    shopper.wait_for_selector("#sessions option", state="attached")
    session_id = shopper.evaluate(f"localStorage.getItem('sixshop.session.{store}')")
    shopper.fill("#input", "상담원 연결해 주세요")
    shopper.press("#input", "Enter")
    shopper.wait_for_selector("#handoff", timeout=20_000)  # the banner: waiting for a person
    assert "상담원" in shopper.inner_text(".msg.assistant .text")
    shopper.evaluate("window.__notReloaded = true")

    admin = browser.new_page(viewport={"width": 1400, "height": 1000})
    admin.on("pageerror", lambda exc: errors.append(str(exc)))
    admin.goto(f"{model_server.base_url}/admin#store={store}")
    admin.fill("#token", ADMIN_TOKEN)
    admin.dispatch_event("#token", "change")
    admin.click(f"#handoffs tr[data-session-id='{session_id}']", timeout=20_000)  # waiting for a person
    admin.wait_for_selector("#reply-form:not([hidden])")
    admin.fill("#reply", reply)
    admin.fill("#operator-name", "김하늘")
    admin.click("#reply-form button[type='submit']")

    # on the shopper's page, live: no reload, the operator's message under its name
    shopper.wait_for_selector(".msg.operator", timeout=10_000)
    assert reply in shopper.inner_text(".msg.operator .text")
    assert "김하늘" in shopper.inner_text(".msg.operator")
    assert shopper.evaluate("window.__notReloaded") is True
    admin.wait_for_selector("#turns .turn.operator")

    # the store's settings through the form: saved, recorded in the change log, a bad value refused by name
    admin.fill("#settings-form [name='display_name']", "하늘 상점")
    admin.fill("#settings-form [name='greeting']", "어서 오세요!")
    admin.click("#settings-form button[type='submit']")
    admin.wait_for_function("() => document.getElementById('settings-status').textContent.startsWith('saved')")
    admin.wait_for_selector("#changes tbody tr")
    logged = admin.inner_text("#changes tbody")
    assert "display_name" in logged and "하늘 상점" in logged and "admin-token" in logged
    admin.fill("#settings-form [name='retrieval_k']", "99")
    admin.click("#settings-form button[type='submit']")
    admin.wait_for_function("() => document.getElementById('settings-status').textContent.includes('retrieval_k')")
    assert admin.get_attribute("#settings-status", "class") == "error"
    admin.screenshot(path=str(SHOTS / "admin-handoff.png"), full_page=True)

    admin.click("#release")
    shopper.wait_for_selector("#handoff", state="detached", timeout=10_000)  # released: the banner goes
    shopper.fill("#input", "교환은 언제 도착하나요?")
    shopper.press("#input", "Enter")
    shopper.wait_for_function("() => document.querySelectorAll('.msg.assistant .foot button').length >= 4",
                              timeout=20_000)  # the notice's footer, then the new answer's
    answer = shopper.locator(".msg.assistant .text").last.inner_text()
    # the model was given the whole conversation, the operator's message included, and says so
    assert f"the operator said: {reply}" in answer
    shopper.screenshot(path=str(SHOTS / "chat-handoff.png"))
    assert not errors, errors
