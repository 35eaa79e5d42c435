// The shopper chat: pick or create a session, stream answers over SSE (POST, so fetch + a reader, not
// EventSource), show sources as links, rate answers. The current session survives reloads (localStorage),
// and so does an answer being streamed: its id and the last event seen are kept, and after a network drop
// or a reload the page rejoins the answer (GET .../messages/{id}/stream, Last-Event-ID) where it was.
// The session's own event stream (GET .../sessions/{id}/events) brings what others write: an operator's replies
// while the session waits for a person, and the handoff and release themselves.
"use strict";

const API = "/api/session-chat";
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const state = { store: params.get("store") || localStorage.getItem("sixshop.store") || "demo-store", session: null };

function headers(json = true) {
  const h = json ? { "Content-Type": "application/json" } : {};
  const key = localStorage.getItem("sixshop.key");
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function api(path, options = {}) {
  const r = await fetch(API + path, { ...options, headers: { ...headers(options.body !== undefined),
                                                              ...(options.headers || {}) } });
  if (!r.ok) {
    let body = {};
    try { body = await r.json(); } catch (_) { /* not JSON */ }
    const err = new Error(body.message || `HTTP ${r.status}`);
    err.status = r.status; err.code = body.code;
    throw err;
  }
  return r.status === 204 ? null : r.json();
}

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "muted";
}

const sessionKey = () => `sixshop.session.${state.store}`;
const runningKey = () => `sixshop.running.${state.store}`;  // answers in flight (inFlight below)

// -- rendering ------------------------------------------------------------------------------------

function safeUrl(url) {
  try { const u = new URL(url, location.href); return ["http:", "https:"].includes(u.protocol) ? u.href : null; }
  catch (_) { return null; }
}

function bubble(role) {
  const el = document.createElement("div");
  el.className = `msg ${role}`;
  const text = document.createElement("div");
  text.className = "text";
  el.appendChild(text);
  $("messages").querySelector(".empty")?.remove();
  $("messages").appendChild(el);
  return el;
}

function showSources(el, sources) {
  el.querySelector(".sources")?.remove();
  const links = (sources || []).map((s) => [safeUrl(s.url), s.title]).filter(([u]) => u);
  if (!links.length) return;
  const box = document.createElement("div");
  box.className = "sources";
  box.append("Sources · 출처: ");
  for (const [url, title] of links) {
    const a = document.createElement("a");
    a.href = url; a.textContent = title; a.target = "_blank"; a.rel = "noopener noreferrer";
    box.appendChild(a);
  }
  el.appendChild(box);
}

function showFooter(el, message) {
  el.querySelector(".foot")?.remove();
  el.dataset.messageId = message.message_id;
  const foot = document.createElement("div");
  foot.className = "foot";
  const note = document.createElement("span");
  note.className = "muted";
  if (message.status === "complete") {
    for (const [label, score, name] of [["▲ 도움됨", 1, "helpful"], ["▼ 아쉬움", 0, "not helpful"]]) {
      const b = document.createElement("button");
      b.type = "button"; b.textContent = label; b.title = name; b.setAttribute("aria-label", name);
      b.dataset.score = String(score);
      b.addEventListener("click", () => rate(el, message.message_id, score, b));
      foot.appendChild(b);
    }
    note.textContent = [message.model, message.latency_ms != null ? `${message.latency_ms} ms` : null]
      .filter(Boolean).join(" · ");
  } else {
    note.textContent = message.status === "error" ? "The answer failed · 답변 실패" : message.status;
    note.className = message.status === "error" ? "error" : "muted";
  }
  foot.appendChild(note);
  el.appendChild(foot);
}

function renderMessage(message) {
  const el = bubble(message.role);
  el.querySelector(".text").textContent = message.content;
  if (message.message_id) el.dataset.messageId = message.message_id;
  if (message.role === "operator") {  // a person from the store, by name
    const who = document.createElement("div");
    who.className = "who muted";
    who.textContent = `${message.author || "operator"} · 상담원`;
    el.prepend(who);
  }
  if (message.role === "assistant") {
    el.dataset.status = message.status;
    showSources(el, message.sources);
    showFooter(el, message);
  }
  return el;
}

async function rate(el, messageId, score, button) {
  try {
    await api(`/messages/${messageId}/feedback`, { method: "POST", body: JSON.stringify({ score }) });
    el.querySelectorAll(".foot button").forEach((b) => b.classList.toggle("chosen", b === button));
    status("Thanks for the feedback · 감사합니다");
  } catch (e) { status(`Feedback failed: ${e.message}`, true); }
}

// While the session waits for a person: a banner saying so (and, outside the store's hours, from when).
function showHandoff(info) {
  let bar = $("handoff");
  if (!info) { bar?.remove(); return; }
  if (!bar) {
    bar = document.createElement("div");
    bar.id = "handoff"; bar.className = "handoff"; bar.setAttribute("role", "status");
    $("messages").before(bar);
  }
  const later = info.opens_at ? ` · ${new Date(info.opens_at).toLocaleString()}부터 답변 (replies from then)` : "";
  bar.textContent = `상담원 연결 중 · Waiting for a person${later}`;
}

// -- the session's events: an operator's messages and the handoff's start and end, live ----------------

let watching = null;  // {session, controller}

async function watchSession(id) {
  watching?.controller.abort();
  const controller = new AbortController();
  watching = { session: id, controller };
  let last = 0;
  for (let attempt = 0; !controller.signal.aborted; attempt++) {
    try {
      const r = await fetch(`${API}/sessions/${id}/events`, { headers: { ...headers(false), "Last-Event-ID": String(last) },
                                                             signal: controller.signal });
      if (r.status === 404) return;
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      attempt = 0;
      for await (const [event, data, n] of sseEvents(r)) {
        last = n;
        if (event === "status") showHandoff(data.status === "handoff" ? (state.handoff || {}) : null);
        if (event === "message" && data.message.role === "operator"
            && !document.querySelector(`.msg[data-message-id="${data.message.message_id}"]`)) {
          renderMessage(data.message);
          $("messages").scrollTop = $("messages").scrollHeight;
        }
      }
    } catch (e) {
      if (controller.signal.aborted) return;
    }
    await sleep(Math.min(500 * 2 ** attempt, 5000));
  }
}

// -- sessions -------------------------------------------------------------------------------------

async function loadSessionList() {
  const select = $("sessions");
  select.innerHTML = "";
  let page = { items: [] };
  try { page = await api(`/sessions?store_id=${encodeURIComponent(state.store)}&limit=20`); }
  catch (e) { status(e.message, true); }
  for (const s of page.items) {
    const o = document.createElement("option");
    o.value = s.session_id;
    o.textContent = `${new Date(s.created_at).toLocaleString()} · ${s.message_count} msgs`;
    select.appendChild(o);
  }
  if (state.session && ![...select.options].some((o) => o.value === state.session)) {
    const o = document.createElement("option");
    o.value = state.session; o.textContent = "current";
    select.prepend(o);
  }
  if (state.session) select.value = state.session;
}

async function openSession(id) {
  $("messages").innerHTML = "";
  state.session = id;
  localStorage.setItem(sessionKey(), id);
  const page = await api(`/sessions/${id}/messages?limit=200`);
  if (!page.items.length && state.greeting) {  // the store's greeting, as the session opens (not stored)
    const el = bubble("assistant");
    el.querySelector(".text").textContent = state.greeting;
    el.classList.add("greeting");
  } else if (!page.items.length) {
    const empty = document.createElement("div");
    empty.className = "empty";
    empty.textContent = "Ask a question about the store · 궁금한 점을 물어보세요";
    $("messages").appendChild(empty);
  }
  state.greeting = null;
  page.items.forEach(renderMessage);
  $("messages").scrollTop = $("messages").scrollHeight;
  resumeRunning(id);
  showHandoff(null);
  watchSession(id);
}

async function newSession() {
  const s = await api("/sessions", { method: "POST", body: JSON.stringify({ store_id: state.store,
                                                                             metadata: { channel: "web" } }) });
  state.greeting = s.greeting || null;
  await openSession(s.session_id);
  await loadSessionList();
}

async function start() {
  $("store").value = state.store;
  $("api-key").value = localStorage.getItem("sixshop.key") || "";
  const saved = localStorage.getItem(sessionKey());
  try {
    if (saved) {
      try { await openSession(saved); }
      catch (e) { if (e.status === 404 || e.status === 410) await newSession(); else throw e; }
    } else {
      await newSession();
    }
    await loadSessionList();
    status("");
  } catch (e) { status(e.message, true); }
}

// -- a turn: POST .../chat/stream, read the SSE frames as they arrive -------------------------------

const sseEvents = window.SixshopChat.sseEvents;  // widget.js's reader: SSE frames as [event, data, id]

// One answer's events onto its bubble; true once it has ended (done or error).
function apply(el, event, data) {
  const textEl = el.querySelector(".text");
  if (event === "handoff") {  // the answer hands the shopper to a person (its text says so)
    state.handoff = data;
    showHandoff(data);
  } else if (event === "queued") {
    el.classList.add("queued");
    showFooter(el, { message_id: el.dataset.messageId || "", status: `queued · 대기 중 (${data.position})` });
  } else if (event === "restart") {  // the server running it died: it is answered again from the start
    textEl.textContent = "";
    el.querySelector(".sources")?.remove();
    showFooter(el, { message_id: el.dataset.messageId || "", status: `restarted · 다시 답변 중 (${data.attempt})` });
  } else if (event === "token") {
    if (el.classList.contains("queued") || el.querySelector(".foot")) {
      el.classList.remove("queued"); el.querySelector(".foot")?.remove();
    }
    textEl.textContent += data.delta;
    $("messages").scrollTop = $("messages").scrollHeight;
  } else if (event === "done") {
    el.classList.remove("queued");
    textEl.textContent = data.message.content;
    showSources(el, data.message.sources);
    showFooter(el, data.message);
    loadSessionList();  // its message count changed
    return true;
  } else if (event === "error") {
    el.classList.remove("queued");
    showFooter(el, { message_id: data.message_id || "", status: data.code === "cancelled" ? "cancelled" : "error" });
    return true;
  }
  return false;
}

// Answers in flight, by message id: {session, message_id, last} (the last event id seen), kept for reloads.
function inFlight() { return JSON.parse(localStorage.getItem(runningKey()) || "{}"); }
function remember(running, done = false) {
  const all = inFlight();
  if (done) delete all[running.message_id]; else all[running.message_id] = running;
  localStorage.setItem(runningKey(), JSON.stringify(all));
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Rejoin an answer after `running.last` until it ends, again and again through network drops.
async function follow(el, running) {
  el.classList.add("streaming");
  try {
    for (let attempt = 0; ; attempt++) {
      if (!navigator.onLine) {
        status("Offline: the answer goes on, and continues here once you are back · 오프라인");
        await new Promise((resolve) => window.addEventListener("online", resolve, { once: true }));
      }
      try {
        const r = await fetch(`${API}/sessions/${running.session}/messages/${running.message_id}/stream`,
                              { headers: { ...headers(false), "Last-Event-ID": String(running.last) } });
        if (r.status === 404) { remember(running, true); return; }
        if (!r.ok) throw new Error(`HTTP ${r.status}`);
        status("");
        for await (const [event, data, id] of sseEvents(r)) {
          running.last = id; remember(running);
          if (apply(el, event, data)) { remember(running, true); return; }
        }
      } catch (e) {
        status("Reconnecting… · 다시 연결하는 중…");
      }
      await sleep(Math.min(500 * 2 ** attempt, 5000));
    }
  } finally {
    el.classList.remove("streaming");
  }
}

// A message may be sent while an answer streams: it is queued by the service and answered after it.
async function send(text) {
  if (!text.trim()) return;
  renderMessage({ role: "user", content: text });
  const el = bubble("assistant");
  el.classList.add("streaming");
  let running = null;
  try {
    const r = await fetch(`${API}/sessions/${state.session}/chat/stream`, {
      method: "POST", headers: headers(), body: JSON.stringify({ message: text }),
    });
    if (!r.ok) {
      let body = {};
      try { body = await r.json(); } catch (_) { /* not JSON */ }
      throw new Error(body.message || `HTTP ${r.status}`);
    }
    for await (const [event, data, id] of sseEvents(r)) {
      if (event === "metadata" && !data.message_id) {  // kept for the person the session waits for: no answer
        el.remove();
        continue;
      }
      if (event === "metadata") {
        el.dataset.messageId = data.message_id;
        running = { session: state.session, message_id: data.message_id, last: id };
      } else if (running) {
        running.last = id;
      }
      if (running) remember(running);
      if (apply(el, event, data)) { remember(running, true); running = null; }
    }
    if (running) throw new Error("the stream ended early");
  } catch (e) {
    if (running) {  // the answer goes on without us: rejoin it where we were
      el.classList.remove("streaming");
      follow(el, running);
      return;
    }
    status(e.message, true);
    el.remove();
  } finally {
    if (!running) {
      el.classList.remove("streaming");
      $("messages").scrollTop = $("messages").scrollHeight;
    }
  }
}

// After a reload: the answers that were streaming (or waiting) in this session, if still unfinished, are
// rejoined from their start (their stored text is empty until they end).
function resumeRunning(sessionId) {
  for (const running of Object.values(inFlight())) {
    if (running.session !== sessionId) continue;
    const el = [...document.querySelectorAll(".msg.assistant")].find((e) => e.dataset.messageId === running.message_id);
    if (!el || !["streaming", "queued"].includes(el.dataset.status)) { remember(running, true); continue; }
    el.querySelector(".foot")?.remove();
    el.querySelector(".text").textContent = "";
    follow(el, { ...running, last: 0 });
  }
}

$("composer").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("input").value;
  $("input").value = "";
  send(text);
});
$("input").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); $("composer").requestSubmit(); }
});
$("new-chat").addEventListener("click", () => newSession().catch((e) => status(e.message, true)));
$("sessions").addEventListener("change", (ev) => openSession(ev.target.value).catch((e) => status(e.message, true)));
$("store").addEventListener("change", (ev) => {
  state.store = ev.target.value.trim() || "demo-store";
  localStorage.setItem("sixshop.store", state.store);
  state.session = null;
  start();
});
$("api-key").addEventListener("change", (ev) => {
  const key = ev.target.value.trim();
  if (key) localStorage.setItem("sixshop.key", key); else localStorage.removeItem("sixshop.key");
  start();
});
start();
