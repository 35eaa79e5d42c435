"""The widget on a store's own site, in Chromium: a plain page on another loopback origin holding only the one-line
snippet, under a strict Content-Security-Policy. A shopper asks in Korean and the answer streams in; nothing the page
holds or sends is a store key or an admin token; another shopper reaches none of it (404); on an origin the store
does not allow the widget says so (403 origin_not_allowed); a reload or a network cut mid-answer ends with the whole
stored answer; a verified shopper finds their earlier session from a second context and a forged identity goes on
anonymously; an operator's reply arrives live; axe-core finds no serious or critical violation in the open widget."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from server.http.pages import widget_script
from tests.conftest import ROOT, SHOTS, chromium_path, fetch_all
from tests.node import installed, prepared
from tests.server_process import ServerProcess
from tests.test_shoppers import ADMIN, IDENTITY_K1, _as, _key, server_env

pytestmark = pytest.mark.e2e
STORE = "shop-w"
QUESTION = "배송비는 얼마인가요?"


PREPARED_DATABASE = True  # conftest.database_url: a copy of a database a keyless `serve` has prepared


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[ServerProcess]:
    with ServerProcess(server_env(database_url, OFFLINE_CHUNK_DELAY_MS="40",
                                  CORS_ALLOW_ORIGINS="https://tools.example")) as proc:
        yield proc


class _StorePage(BaseHTTPRequestHandler):
    """A store's site: the one-line snippet (and, for a logged-in shopper, the identity its backend signed)."""

    server_url = ""
    key = ""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        identity = self.path.split("identity=", 1)[1] if "identity=" in self.path else ""
        attr = f' identity="{identity}"' if identity else ""
        body = (f'<!doctype html><html lang="ko"><head><meta charset="utf-8"><title>Shop W</title></head><body>'
                f'<h1>Shop W</h1><sixshop-chat store="{STORE}" key="{self.key}"{attr}></sixshop-chat>'
                f'<script src="{self.server_url}/widget.js"></script></body></html>').encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        # what the docs tell a store to add for the widget, and nothing else
        self.send_header("Content-Security-Policy", f"default-src 'none'; script-src {self.server_url}; "
                                                    f"connect-src {self.server_url}; img-src 'self'")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _site(server_url: str, key: str) -> tuple[ThreadingHTTPServer, str]:
    handler = type("Page", (_StorePage,), {"server_url": server_url, "key": key})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


@pytest.fixture(scope="module")
def sites(server: ServerProcess, database_url: str) -> Iterator[dict[str, str]]:
    chromium_path()
    pk = _key(database_url, "--store", STORE, "--publishable")
    allowed, allowed_origin = _site(server.base_url, pk)
    other, other_origin = _site(server.base_url, pk)
    r = httpx.put(f"{server.base_url}/api/admin/stores/{STORE}/settings", headers=_as(ADMIN), json={
        "allowed_origins": [allowed_origin], "display_name": "샵 W", "greeting": "무엇을 도와드릴까요?",
        "identity_secret": {"k1": IDENTITY_K1}})
    assert r.status_code == 200, r.text
    yield {"allowed": allowed_origin, "other": other_origin, "pk": pk}
    allowed.shutdown()
    other.shutdown()


def _shadow(page: Any, selector: str) -> str:
    return f"document.querySelector('sixshop-chat').shadowRoot.querySelector({json.dumps(selector)})"


def _open_and_ask(page: Any, text: str) -> None:
    page.click("sixshop-chat >> .launcher")
    page.wait_for_function(f"() => localStorage.getItem('sixshop.widget.{STORE}')", timeout=20_000)  # session open
    page.fill("sixshop-chat >> textarea", text)
    page.press("sixshop-chat >> textarea", "Enter")


def _wait_answered(page: Any, count: int = 1) -> None:
    page.wait_for_function(
        f"() => {_shadow(page, '.log')}?.querySelectorAll(\".msg.assistant .foot button[data-score='1']\").length "
        f">= {count}", timeout=40_000)


def _stored(database_url: str, session_id: str) -> list[dict[str, Any]]:
    return fetch_all(database_url, "select role, content, status from chat_messages where session_id = %s "
                                   "order by seq", (session_id,))


def _saved(page: Any) -> dict[str, Any]:
    return dict(json.loads(page.evaluate(f"localStorage.getItem('sixshop.widget.{STORE}')")))


def test_a_shopper_chats_on_the_stores_site(server: ServerProcess, sites: dict[str, str], browser: Any,
                                            database_url: str) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 860}, locale="ko-KR")
    page = context.new_page()
    sent: list[tuple[str, str, dict[str, str]]] = []
    page.on("request", lambda r: sent.append((r.method, r.url, r.headers)))
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(sites["allowed"])
    page.wait_for_selector("sixshop-chat >> .launcher:has-text('샵 W')")  # the store's name, from its settings
    page.evaluate("""() => { window.__lengths = [];
      const log = document.querySelector('sixshop-chat').shadowRoot.querySelector('.log');
      new MutationObserver(() => window.__lengths.push(log.textContent.length))
        .observe(log, {subtree: true, childList: true, characterData: true}); }""")
    _open_and_ask(page, QUESTION)
    _wait_answered(page)
    assert len(set(page.evaluate("window.__lengths"))) >= 5  # the answer grew as it streamed
    answer = page.inner_text("sixshop-chat >> .msg.assistant .text")
    assert "3,000" in answer
    links = page.eval_on_selector_all("sixshop-chat >> .sources a", "els => els.map(a => a.href)")
    assert links and all(h.startswith("http") for h in links)
    page.click("sixshop-chat >> .msg.assistant .foot button[data-score='1']")
    page.wait_for_selector("sixshop-chat >> .foot button.chosen")
    saved = _saved(page)
    session_id = saved["session"]
    assert [r["role"] for r in _stored(database_url, session_id)] == ["user", "assistant"]
    page.screenshot(path=str(SHOTS / "widget.png"))

    # what the page holds and sends: a publishable key and the session's own token, nothing else
    source = page.content() + json.dumps(page.evaluate("() => ({...localStorage})"))
    for _, url, headers in sent:
        auth = headers.get("authorization", "")
        assert not auth or auth.startswith(("Bearer pk-sixshop-", "Bearer eyJ")), auth
        assert "token" not in url.split("?", 1)[-1] and "pk-sixshop" not in url and "eyJ" not in url
        source += auth
    assert "sk-sixshop-" not in source and ADMIN not in source
    assert not [c for c in console if "Content Security Policy" in c], console  # the strict CSP is kept
    assert not errors, errors

    # another shopper (another context): their own session; the first one's answers 404 and is not listed
    other = browser.new_context(locale="ko-KR").new_page()
    other.goto(sites["allowed"])
    other.click("sixshop-chat >> .launcher")
    other.wait_for_selector("sixshop-chat >> .msg.greeting", timeout=20_000)
    theirs = _saved(other)
    assert theirs["session"] != session_id
    seen = other.evaluate("""async ([api, sid, token]) => {
        const h = {Authorization: `Bearer ${token}`};
        const one = await fetch(`${api}/api/session-chat/sessions/${sid}/messages`, {headers: h});
        const list = await (await fetch(`${api}/api/session-chat/sessions`, {headers: h})).json();
        return [one.status, (await one.json()).code, list.items.map(s => s.session_id)]; }""",
                          [server.base_url, session_id, theirs["token"]])
    assert seen == [404, "session_not_found", [theirs["session"]]]

    # the same snippet on a page the store does not allow: the widget says so, the server said 403
    refused: list[tuple[int, str]] = []
    blocked = browser.new_context(locale="ko-KR").new_page()
    blocked.on("response", lambda r: refused.append((r.status, r.url)) if "/api/widget/" in r.url else None)
    blocked.goto(sites["other"])
    blocked.click("sixshop-chat >> .launcher")
    blocked.wait_for_selector("sixshop-chat >> .status.error", timeout=20_000)
    assert "열 수 없습니다" in blocked.inner_text("sixshop-chat >> .status")
    assert refused and refused[0][0] == 403
    assert not blocked.is_visible("sixshop-chat >> form")
    code = blocked.evaluate("""async ([api, store, key]) => (await (await fetch(`${api}/api/widget/${store}/config`,
        {headers: {Authorization: `Bearer ${key}`}})).json()).code""", [server.base_url, STORE, sites["pk"]])
    assert code == "origin_not_allowed"
    for ctx in (context, other.context, blocked.context):
        ctx.close()


def test_a_reload_and_a_network_cut_mid_answer_end_with_the_whole_answer(server: ServerProcess,
                                                                          sites: dict[str, str], browser: Any,
                                                                          database_url: str) -> None:
    context = browser.new_context(locale="ko-KR")
    page = context.new_page()
    page.goto(sites["allowed"])
    _open_and_ask(page, "반품은 어떻게 하나요?")
    page.wait_for_function(f"() => ({_shadow(page, '.msg.assistant.streaming .text')}?.textContent || '')"
                           ".length > 10", timeout=20_000)
    page.reload()  # mid-answer
    page.click("sixshop-chat >> .launcher")
    _wait_answered(page)
    session_id = _saved(page)["session"]
    stored = _stored(database_url, session_id)
    assert page.inner_text("sixshop-chat >> .msg.assistant .text").strip() == stored[-1]["content"].strip()

    page.fill("sixshop-chat >> textarea", "배송은 얼마나 걸리나요?")  # an answer of several sentences
    page.press("sixshop-chat >> textarea", "Enter")
    page.wait_for_function(f"() => ({_shadow(page, '.msg.assistant.streaming .text')}?.textContent || '')"
                           ".length > 5", timeout=20_000)
    context.set_offline(True)  # the network goes away mid-answer, and comes back
    time.sleep(1.0)
    context.set_offline(False)
    _wait_answered(page, 2)
    stored = _stored(database_url, session_id)
    shown = page.eval_on_selector_all("sixshop-chat >> .msg.assistant .text", "els => els.map(e => e.textContent)")
    assert [s.strip() for s in shown] == [r["content"].strip() for r in stored if r["role"] == "assistant"]
    assert stored[-1]["status"] == "complete"
    context.close()


def _identity(sub: str, secret: str = IDENTITY_K1) -> str:
    now = int(time.time())
    return jwt.encode({"sub": sub, "iat": now, "exp": now + 300}, secret, algorithm="HS256", headers={"kid": "k1"})


def test_a_verified_shopper_finds_their_session_and_a_forged_one_goes_on_anonymously(
        server: ServerProcess, sites: dict[str, str], browser: Any, database_url: str) -> None:
    first = browser.new_context(locale="ko-KR").new_page()
    first.goto(f"{sites['allowed']}/?identity={_identity('member-9')}")
    _open_and_ask(first, QUESTION)
    _wait_answered(first)
    session_id = _saved(first)["session"]
    assert fetch_all(database_url, "select user_id from chat_sessions where session_id = %s", (session_id,)) \
        == [{"user_id": "member-9"}]

    second = browser.new_context(locale="ko-KR").new_page()  # another device, logged in as the same member
    second.goto(f"{sites['allowed']}/?identity={_identity('member-9')}")
    second.click("sixshop-chat >> .launcher")
    second.wait_for_selector("sixshop-chat >> .msg.assistant .text", timeout=20_000)
    assert second.inner_text("sixshop-chat >> .msg.user .text") == QUESTION
    assert _saved(second)["session"] == session_id

    forged = browser.new_context(locale="ko-KR").new_page()
    forged.goto(f"{sites['allowed']}/?identity={_identity('member-9', 'forged-secret-0123456789abcdef-xyz')}")
    forged.click("sixshop-chat >> .launcher")
    forged.wait_for_selector("sixshop-chat >> .msg.greeting", timeout=20_000)  # a new, anonymous session
    saved = _saved(forged)
    assert saved["session"] != session_id and "user" not in saved
    assert forged.locator("sixshop-chat >> .msg.user").count() == 0
    for page in (first, second, forged):
        page.context.close()


def test_an_operator_signs_in_takes_the_handoff_and_the_shopper_sees_the_reply(
        server: ServerProcess, sites: dict[str, str], browser: Any, database_url: str) -> None:
    from tests.test_operators import operator

    password = operator(database_url, "seoyeon@shop-w.example", STORE)
    page = browser.new_context(locale="ko-KR").new_page()
    page.goto(sites["allowed"])
    _open_and_ask(page, "상담원 연결해 주세요")
    page.wait_for_selector("sixshop-chat >> .banner:not([hidden])", timeout=30_000)
    session_id = _saved(page)["session"]

    admin = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    admin.goto(f"{server.base_url}/admin")
    admin.wait_for_selector("#signin:not([hidden])")
    admin.fill("#signin-email", "seoyeon@shop-w.example")
    admin.fill("#signin-password", password)
    admin.click("#signin button[type='submit']")
    admin.wait_for_function("() => document.getElementById('who').textContent.includes('seoyeon')")
    assert admin.evaluate("document.cookie").count("sixshop_operator") == 0  # HttpOnly: no script reads it
    # a write without the CSRF token, from the signed-in page's own origin: refused
    refused = admin.evaluate("""async (sid) => { const r = await fetch(`/api/admin/sessions/${sid}/reply`, {
        method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify({content: 'x'})});
        return [r.status, (await r.json()).code]; }""", session_id)
    assert refused == [403, "forbidden"]
    reply = "안녕하세요, 상담원 이서연입니다. 무엇을 도와드릴까요?"
    admin.click(f"#handoffs tr[data-session-id='{session_id}']", timeout=20_000)
    admin.wait_for_selector("#reply-form:not([hidden])")
    admin.fill("#reply", reply)
    admin.click("#reply-form button[type='submit']")
    page.wait_for_selector("sixshop-chat >> .msg.operator", timeout=15_000)  # live, on the store's site
    assert reply in page.inner_text("sixshop-chat >> .msg.operator .text")
    shown = page.inner_text("sixshop-chat >> .msg.operator")
    assert "seoyeon" in shown and "@" not in shown  # the operator's name, not their email address
    admin.screenshot(path=str(SHOTS / "admin-signed-in.png"), full_page=True)
    admin.click("#signout")
    admin.wait_for_selector("#signin:not([hidden])")
    for ctx in (page.context, admin.context):
        ctx.close()


def test_the_open_widget_has_no_serious_accessibility_violation(server: ServerProcess, sites: dict[str, str],
                                                                browser: Any) -> None:
    axe = prepared("axe-core", installed, ROOT / "tests" / "axe") / "node_modules" / "axe-core" / "axe.min.js"
    context = browser.new_context(locale="ko-KR", bypass_csp=True)  # axe is injected by the test, not the page
    page = context.new_page()
    page.goto(sites["allowed"])
    page.click("sixshop-chat >> .launcher")
    page.wait_for_selector("sixshop-chat >> .msg.greeting", timeout=20_000)
    page.keyboard.press("Escape")  # keyboard: the panel closes and the launcher has the focus back
    assert page.evaluate(f"() => {_shadow(page, '.panel')}.hidden")
    page.keyboard.press("Enter")
    assert not page.evaluate(f"() => {_shadow(page, '.panel')}.hidden")
    page.add_script_tag(content=Path(axe).read_text())
    result = page.evaluate("async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
                           ".map(v => [v.id, v.impact, v.nodes.length])")
    serious = [v for v in result if v[1] in ("serious", "critical")]
    assert serious == [], serious
    page.set_viewport_size({"width": 400, "height": 800})  # a phone: the panel takes the whole screen
    box = page.evaluate(f"() => {{ const r = {_shadow(page, '.panel')}.getBoundingClientRect(); "
                        "return [r.width, r.height]; }")
    assert box == [400, 800]
    context.close()


def test_the_widget_script_is_versioned_cacheable_and_its_integrity_documented(server: ServerProcess) -> None:
    body, version, integrity = widget_script()
    latest = httpx.get(f"{server.base_url}/widget.js")
    assert latest.content == body and latest.headers["x-widget-version"] == version
    assert "max-age" in latest.headers["cache-control"] and latest.headers["access-control-allow-origin"] == "*"
    pinned = httpx.get(f"{server.base_url}/widget/{version}.js")
    assert pinned.content == body and "immutable" in pinned.headers["cache-control"]
    assert httpx.get(f"{server.base_url}/widget/000000000000.js").status_code == 404
    page = (ROOT / "docs" / "concepts" / "your-store.md").read_text(encoding="utf-8")
    assert f"/widget/{version}.js" in page and integrity in page, (version, integrity)
    assert not [banned for banned in ("innerHTML", "outerHTML", "insertAdjacentHTML", "eval(", "new Function")
                if banned in body.decode()]  # content goes in as text; nothing a strict CSP refuses
