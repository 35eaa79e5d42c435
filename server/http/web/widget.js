// The shopper's chat on a store's own site: <sixshop-chat store="…" key="pk-…"></sixshop-chat>, or
// SixshopChat.boot({store, key, identity?, locale?}) / SixshopChat.shutdown(). A launcher button opens a panel in a
// shadow root (the store's CSS cannot reach it). The page holds only a publishable key: it opens a session and gets
// a session token that reaches that session alone (Authorization header, never a URL). A store backend's signed
// identity makes it a verified session (the shopper's sessions follow them across devices). Answers stream over
// SSE (fetch + a reader: POST), rejoin after a drop or a reload with Last-Event-ID, messages sent while answering
// are queued, and a person's replies arrive live on the session's event stream. Content is only ever text nodes,
// and there is no inline script or style (constructed stylesheets), so it runs under a strict Content-Security-Policy.
(() => {
  "use strict";
  if (window.SixshopChat) return;
  const SCRIPT = document.currentScript;
  const BASE = SCRIPT ? new URL(SCRIPT.src, location.href).origin : location.origin;
  const API = `${BASE}/api/session-chat`;
  const TEXT = {
    ko: { open: "상담 채팅 열기", close: "닫기", title: "상담", send: "보내기", placeholder: "궁금한 점을 물어보세요",
          sources: "출처", helpful: "도움됨", unhelpful: "아쉬움", queued: "대기 중", failed: "답변 실패",
          cancelled: "취소됨", waiting: "상담원 연결 중", reconnecting: "다시 연결하는 중…", offline: "오프라인",
          notAllowed: "이 사이트에서는 상담 채팅을 열 수 없습니다.", error: "문제가 생겼습니다", operator: "상담원",
          thanks: "감사합니다", restarted: "다시 답변 중" },
    en: { open: "Open chat", close: "Close", title: "Help", send: "Send", placeholder: "Ask a question",
          sources: "Sources", helpful: "Helpful", unhelpful: "Not helpful", queued: "queued", failed: "The answer failed",
          cancelled: "cancelled", waiting: "Waiting for a person", reconnecting: "Reconnecting…", offline: "Offline",
          notAllowed: "This chat is not enabled on this site.", error: "Something went wrong", operator: "operator",
          thanks: "Thanks", restarted: "answering again" },
  };
  const CSS = `
    :host { all: initial; font: 15px/1.45 system-ui, "Noto Sans KR", sans-serif; color: #1d2433; }
    * { box-sizing: border-box; }
    .launcher { position: fixed; right: 20px; bottom: 20px; z-index: 2147483000; border: 0; border-radius: 28px;
      padding: 14px 20px; background: #2457d6; color: #fff; font: inherit; font-weight: 600; cursor: pointer;
      box-shadow: 0 4px 14px rgba(0,0,0,.25); }
    .launcher:focus-visible, button:focus-visible, textarea:focus-visible, a:focus-visible {
      outline: 3px solid #f5b700; outline-offset: 2px; }
    .panel { position: fixed; right: 20px; bottom: 84px; z-index: 2147483000; width: 380px; height: min(600px, 80vh);
      display: flex; flex-direction: column; background: #fff; border-radius: 14px; overflow: hidden;
      box-shadow: 0 8px 30px rgba(0,0,0,.3); }
    .panel[hidden] { display: none; }
    header { display: flex; align-items: center; gap: 8px; padding: 12px 14px; background: #2457d6; color: #fff; }
    header h2 { flex: 1; margin: 0; font-size: 16px; }
    header button { border: 0; background: transparent; color: #fff; font: inherit; font-size: 20px; cursor: pointer; }
    .log { flex: 1; overflow-y: auto; padding: 12px; display: flex; flex-direction: column; gap: 10px; }
    .msg { max-width: 88%; padding: 9px 12px; border-radius: 12px; white-space: pre-wrap; word-break: break-word; }
    .msg.user { align-self: flex-end; background: #2457d6; color: #fff; }
    .msg.assistant, .msg.greeting { align-self: flex-start; background: #eef1f7; }
    .msg.operator { align-self: flex-start; background: #fff4d6; border: 1px solid #f0d58a; }
    .msg .who { font-size: 12px; color: #6b4e00; }
    .msg.queued { opacity: .65; }
    .sources { margin-top: 6px; font-size: 13px; }
    .sources a { color: #1b45a8; margin-right: 8px; }
    .foot { margin-top: 6px; display: flex; gap: 6px; align-items: center; font-size: 12px; color: #5a6375; }
    .foot button { border: 1px solid #c3cad8; background: #fff; border-radius: 8px; padding: 2px 8px; font: inherit;
      cursor: pointer; }
    .foot button.chosen { background: #2457d6; color: #fff; border-color: #2457d6; }
    .banner { padding: 8px 12px; background: #fff4d6; font-size: 13px; }
    .banner[hidden], .status[hidden], form[hidden] { display: none; }
    .status { padding: 6px 12px; font-size: 13px; color: #5a6375; }
    .status.error { color: #b00020; }
    form { display: flex; gap: 8px; padding: 10px; border-top: 1px solid #e3e7ef; }
    textarea { flex: 1; resize: none; height: 44px; padding: 10px; border: 1px solid #c3cad8; border-radius: 10px;
      font: inherit; }
    form button { border: 0; border-radius: 10px; padding: 0 14px; background: #2457d6; color: #fff; font: inherit;
      font-weight: 600; cursor: pointer; }
    @media (max-width: 640px) {
      .panel { inset: 0; width: 100%; height: 100%; border-radius: 0; }
    }`;

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props)) {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("aria-") || k === "role" || k === "for") node.setAttribute(k, v);
      else node[k] = v;
    }
    node.append(...children);
    return node;
  }

  function safeUrl(url) {
    try { const u = new URL(url, location.href); return ["http:", "https:"].includes(u.protocol) ? u.href : null; }
    catch (_) { return null; }
  }

  async function* sseEvents(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const frame = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let event = "message", data = "", id = 0;
        for (const line of frame.split("\n")) {
          if (line.startsWith("event:")) event = line.slice(6).trim();
          else if (line.startsWith("id:")) id = Number(line.slice(3).trim());
          else if (line.startsWith("data:")) data += line.slice(5).trim();
        }
        if (data) yield [event, JSON.parse(data), id];
      }
    }
  }

  class ApiError extends Error {
    constructor(status, body) { super(body.message || `HTTP ${status}`); this.status = status; this.code = body.code; }
  }

  class Chat {
    constructor(host, { store, key, identity, locale }) {
      this.store = store; this.key = key || null; this.identity = identity || null;
      this.localeGiven = Boolean(locale);
      this.t = TEXT[(locale || document.documentElement.lang || "ko").slice(0, 2)] || TEXT.ko;
      this.saved = `sixshop.widget.${store}`;
      this.root = host.attachShadow({ mode: "open" });
      const sheet = new CSSStyleSheet();
      sheet.replaceSync(CSS);
      this.root.adoptedStyleSheets = [sheet];
      this.build();
      this.stopped = new AbortController();
      this.ready = this.start();
    }

    build() {
      const t = this.t;
      // its name is its visible text (the store's name): a different aria-label would hide what a shopper sees
      this.launcher = el("button", { class: "launcher", type: "button", text: t.title, title: t.open,
                                     "aria-expanded": "false", "aria-haspopup": "dialog" });
      this.titleEl = el("h2", { id: "sixshop-title", text: t.title });
      this.closeBtn = el("button", { type: "button", text: "×", "aria-label": t.close });
      this.banner = el("div", { class: "banner", role: "status", hidden: true });
      this.status = el("div", { class: "status", role: "status", hidden: true });
      this.log = el("div", { class: "log", role: "log", "aria-live": "polite", "aria-label": t.title });
      this.input = el("textarea", { placeholder: t.placeholder, "aria-label": t.placeholder, rows: 1 });
      this.sendBtn = el("button", { type: "submit", text: t.send });
      this.form = el("form", {}, this.input, this.sendBtn);
      this.panel = el("section", { class: "panel", role: "dialog", "aria-labelledby": "sixshop-title", hidden: true },
                      el("header", {}, this.titleEl, this.closeBtn), this.banner, this.log, this.status, this.form);
      this.root.append(this.launcher, this.panel);
      this.launcher.addEventListener("click", () => this.toggle(this.panel.hidden));
      this.closeBtn.addEventListener("click", () => this.toggle(false));
      this.panel.addEventListener("keydown", (ev) => { if (ev.key === "Escape") this.toggle(false); });
      this.form.addEventListener("submit", (ev) => {
        ev.preventDefault();
        const text = this.input.value;
        this.input.value = "";
        this.send(text);
      });
      this.input.addEventListener("keydown", (ev) => {  // Enter sends, except while a Korean IME composes
        if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing && ev.keyCode !== 229) {
          ev.preventDefault();
          this.form.requestSubmit();
        }
      });
    }

    toggle(open) {
      this.panel.hidden = !open;
      this.launcher.setAttribute("aria-expanded", String(open));
      if (open) this.input.focus(); else this.launcher.focus();
    }

    say(text, isError = false) {
      this.status.hidden = !text;
      this.status.textContent = text || "";
      this.status.className = isError ? "status error" : "status";
    }

    headers(json = false, credential = this.token) {
      const h = json ? { "Content-Type": "application/json" } : {};
      if (credential) h.Authorization = `Bearer ${credential}`;
      return h;
    }

    async api(path, options = {}, credential = this.token) {
      const r = await fetch(path.startsWith("http") ? path : API + path, {
        ...options, headers: { ...this.headers(options.body !== undefined, credential), ...(options.headers || {}) },
        signal: this.stopped.signal });
      if (!r.ok) {
        let body = {};
        try { body = await r.json(); } catch (_) { /* not JSON */ }
        throw new ApiError(r.status, body);
      }
      return r.status === 204 ? null : r.json();
    }

    remembered() { try { return JSON.parse(localStorage.getItem(this.saved) || "null"); } catch (_) { return null; } }
    remember(value) { if (value) localStorage.setItem(this.saved, JSON.stringify(value)); else localStorage.removeItem(this.saved); }

    async start() {
      try {
        const config = await this.api(`${BASE}/api/widget/${encodeURIComponent(this.store)}/config`, {}, this.key);
        if (config.display_name) this.titleEl.textContent = config.display_name;
        this.launcher.textContent = config.display_name || this.t.title;
        this.greeting = config.greeting;
        if (!this.localeGiven && TEXT[config.language] && TEXT[config.language] !== this.t) {
          this.t = TEXT[config.language];  // the store's language
          this.input.placeholder = this.t.placeholder; this.input.setAttribute("aria-label", this.t.placeholder);
          this.sendBtn.textContent = this.t.send; this.closeBtn.setAttribute("aria-label", this.t.close);
          this.launcher.title = this.t.open;
        }
      } catch (e) {
        if (e.code === "origin_not_allowed") {
          this.form.hidden = true;
          this.say(this.t.notAllowed, true);
          return;
        }
        if (e.name === "AbortError") return;
        this.say(`${this.t.error}: ${e.message}`, true);
        return;
      }
      await this.openSession();
    }

    async openSession() {
      let saved = this.remembered();
      if (this.identity) {
        try {
          const who = await this.api("/identify", { method: "POST", body: JSON.stringify(
            { store_id: this.store, identity: this.identity }) }, this.key);
          saved = { session: who.session_id, token: who.session_token, user: who.user_id };
        } catch (e) {
          if (e.code !== "invalid_identity") throw e;
          if (saved && saved.user) saved = null;  // not this shopper any more: on anonymously
        }
      }
      if (saved) {
        this.token = saved.token; this.session = saved.session;
        try { await this.load(); this.remember(saved); return; }
        catch (e) { if (![401, 404, 410].includes(e.status)) throw e; }
      }
      const s = await this.api("/sessions", { method: "POST", body: JSON.stringify(
        { store_id: this.store, metadata: { channel: "widget", page: location.pathname.slice(0, 200) } }) },
        this.key);
      this.token = s.session_token; this.session = s.session_id;
      this.remember({ session: s.session_id, token: s.session_token });
      await this.load();
    }

    async load() {
      const page = await this.api(`/sessions/${this.session}/messages?limit=200`);
      this.log.replaceChildren();
      if (!page.items.length && this.greeting) this.log.append(el("div", { class: "msg greeting", text: this.greeting }));
      page.items.forEach((m) => this.render(m));
      this.resumeRunning(page.items);
      this.watch();
      this.scroll();
    }

    scroll() { this.log.scrollTop = this.log.scrollHeight; }

    bubble(role) {
      const node = el("div", { class: `msg ${role}` }, el("div", { class: "text" }));
      this.log.append(node);
      return node;
    }

    render(m) {
      const node = this.bubble(m.role);
      node.querySelector(".text").textContent = m.content;
      if (m.message_id) node.dataset.messageId = m.message_id;
      if (m.role === "operator") node.prepend(el("div", { class: "who", text: `${m.author || this.t.operator} · ${this.t.operator}` }));
      if (m.role === "assistant") { node.dataset.status = m.status; this.sources(node, m.sources); this.foot(node, m); }
      return node;
    }

    sources(node, sources) {
      node.querySelector(".sources")?.remove();
      const links = (sources || []).map((s) => [safeUrl(s.url), s.title]).filter(([u]) => u);
      if (!links.length) return;
      const box = el("div", { class: "sources", text: `${this.t.sources}: ` });
      for (const [href, title] of links) box.append(el("a", { href, text: title, target: "_blank", rel: "noopener noreferrer" }));
      node.append(box);
    }

    foot(node, m) {
      node.querySelector(".foot")?.remove();
      const foot = el("div", { class: "foot" });
      if (m.status === "complete") {
        for (const [label, score] of [[`▲ ${this.t.helpful}`, 1], [`▼ ${this.t.unhelpful}`, 0]]) {
          const b = el("button", { type: "button", text: label });
          b.dataset.score = String(score);
          b.addEventListener("click", () => this.rate(node, m.message_id, score, b));
          foot.append(b);
        }
      } else {
        foot.append(el("span", { text: { error: this.t.failed, cancelled: this.t.cancelled }[m.status] || m.status }));
      }
      node.append(foot);
    }

    async rate(node, messageId, score, button) {
      try {
        await this.api(`/messages/${messageId}/feedback`, { method: "POST", body: JSON.stringify({ score }) });
        node.querySelectorAll(".foot button").forEach((b) => b.classList.toggle("chosen", b === button));
        this.say(this.t.thanks);
      } catch (e) { this.say(e.message, true); }
    }

    handoff(waiting) {
      this.banner.hidden = !waiting;
      this.banner.textContent = waiting ? this.t.waiting : "";
    }

    // The session's events: a person's replies, and the handoff's start and end, live (resumable).
    async watch() {
      this.watching?.abort();
      const controller = new AbortController();
      this.watching = controller;
      this.stopped.signal.addEventListener("abort", () => controller.abort());
      let last = 0;
      for (let attempt = 0; !controller.signal.aborted; attempt++) {
        try {
          const r = await fetch(`${API}/sessions/${this.session}/events`, {
            headers: { ...this.headers(), "Last-Event-ID": String(last) }, signal: controller.signal });
          if (r.status === 404 || r.status === 401) return;
          if (!r.ok) throw new Error(`HTTP ${r.status}`);
          attempt = 0;
          for await (const [event, data, n] of sseEvents(r)) {
            last = n;
            if (event === "status") this.handoff(data.status === "handoff");
            if (event === "message" && data.message.role === "operator"
                && !this.log.querySelector(`[data-message-id="${data.message.message_id}"]`)) {
              this.render(data.message);
              this.scroll();
            }
          }
        } catch (_) {
          if (controller.signal.aborted) return;
        }
        await sleep(Math.min(500 * 2 ** attempt, 5000));
      }
    }

    // One answer's events onto its bubble; true once it has ended.
    apply(node, event, data) {
      const text = node.querySelector(".text");
      if (event === "handoff") this.handoff(true);
      else if (event === "queued") { node.classList.add("queued"); this.foot(node, { status: `${this.t.queued} (${data.position})` }); }
      else if (event === "restart") { text.textContent = ""; node.querySelector(".sources")?.remove(); this.foot(node, { status: this.t.restarted }); }
      else if (event === "token") {
        if (node.classList.contains("queued") || node.querySelector(".foot")) { node.classList.remove("queued"); node.querySelector(".foot")?.remove(); }
        text.textContent += data.delta;
        this.scroll();
      } else if (event === "done") {
        node.classList.remove("queued", "streaming");
        node.dataset.status = data.message.status;
        text.textContent = data.message.content;
        this.sources(node, data.message.sources);
        this.foot(node, data.message);
        this.scroll();
        return true;
      } else if (event === "error") {
        node.classList.remove("queued", "streaming");
        this.foot(node, { status: data.code === "cancelled" ? "cancelled" : "error" });
        return true;
      }
      return false;
    }

    inFlight() { try { return JSON.parse(localStorage.getItem(`${this.saved}.running`) || "{}"); } catch (_) { return {}; } }
    track(running, done = false) {
      const all = this.inFlight();
      if (done) delete all[running.message_id]; else all[running.message_id] = running;
      localStorage.setItem(`${this.saved}.running`, JSON.stringify(all));
    }

    // Rejoin an answer after `running.last`, through network drops, until it ends.
    async follow(node, running) {
      node.classList.add("streaming");
      for (let attempt = 0; !this.stopped.signal.aborted; attempt++) {
        if (!navigator.onLine) {
          this.say(this.t.offline);
          await new Promise((resolve) => window.addEventListener("online", resolve, { once: true }));
        }
        try {
          const r = await fetch(`${API}/sessions/${running.session}/messages/${running.message_id}/stream`, {
            headers: { ...this.headers(), "Last-Event-ID": String(running.last) }, signal: this.stopped.signal });
          if (r.status === 404) { this.track(running, true); return; }
          if (!r.ok) throw new Error(`HTTP ${r.status}`);
          this.say("");
          for await (const [event, data, id] of sseEvents(r)) {
            running.last = id; this.track(running);
            if (this.apply(node, event, data)) { this.track(running, true); return; }
          }
        } catch (_) {
          if (this.stopped.signal.aborted) return;
          this.say(this.t.reconnecting);
        }
        await sleep(Math.min(500 * 2 ** attempt, 5000));
      }
    }

    async send(message) {
      if (!message.trim() || !this.session) return;
      this.render({ role: "user", content: message });
      const node = this.bubble("assistant");
      node.classList.add("streaming");
      this.scroll();
      let running = null;
      try {
        const r = await fetch(`${API}/sessions/${this.session}/chat/stream`, {
          method: "POST", headers: this.headers(true), body: JSON.stringify({ message }), signal: this.stopped.signal });
        if (!r.ok) { let body = {}; try { body = await r.json(); } catch (_) { /* */ } throw new ApiError(r.status, body); }
        for await (const [event, data, id] of sseEvents(r)) {
          if (event === "metadata" && !data.message_id) { node.remove(); continue; }  // kept for a person
          if (event === "metadata") {
            node.dataset.messageId = data.message_id;
            running = { session: this.session, message_id: data.message_id, last: id };
          } else if (running) running.last = id;
          if (running) this.track(running);
          if (this.apply(node, event, data)) { this.track(running, true); running = null; }
        }
        if (running) throw new Error("the stream ended early");
      } catch (e) {
        if (running) { node.classList.remove("streaming"); this.follow(node, running); return; }
        if (e.name !== "AbortError") { this.say(e.message, true); node.remove(); }
      }
    }

    // After a reload: answers that were streaming or queued in this session are rejoined from their start.
    resumeRunning(items) {
      for (const running of Object.values(this.inFlight())) {
        if (running.session !== this.session) continue;
        const node = [...this.log.querySelectorAll(".msg.assistant")].find((n) => n.dataset.messageId === running.message_id);
        const stored = items.find((m) => m.message_id === running.message_id);
        if (!node || !stored || !["streaming", "queued"].includes(stored.status)) { this.track(running, true); continue; }
        node.querySelector(".foot")?.remove();
        node.querySelector(".text").textContent = "";
        this.follow(node, { ...running, last: 0 });
      }
    }

    stop() { this.stopped.abort(); this.watching?.abort(); }
  }

  class SixshopChatElement extends HTMLElement {
    connectedCallback() {
      if (this.chat) return;
      this.chat = new Chat(this, { store: this.getAttribute("store"), key: this.getAttribute("key"),
                                   identity: this.getAttribute("identity"), locale: this.getAttribute("locale") });
    }
    disconnectedCallback() { this.chat?.stop(); }
  }
  customElements.define("sixshop-chat", SixshopChatElement);

  let booted = null;
  window.SixshopChat = {
    boot({ store, key, identity, locale } = {}) {
      this.shutdown();
      booted = document.createElement("sixshop-chat");
      for (const [name, value] of Object.entries({ store, key, identity, locale })) if (value) booted.setAttribute(name, value);
      document.body.append(booted);
      return booted.chat.ready;
    },
    shutdown() { booted?.remove(); booted = null; },
    sseEvents,  // the SSE reader, for the full-page chat (/chat) too
  };
})();
