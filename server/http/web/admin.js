// The operator page: a store's statistics with charts (plain SVG), its sessions found by text, and a
// session's transcript with usage, timings, sources, feedback and the LangSmith trace link; the sessions waiting
// for a person, with a reply box and the release; the store's settings, their change log and its webhook log.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const hashParams = () => new URLSearchParams(location.hash.slice(1));

// Who calls: an admin token or key pasted here (automation, the deployment's administrators), else the operator's
// sign-in cookie, whose writes carry the CSRF token the server set in a readable cookie.
function headers(method = "GET") {
  const token = sessionStorage.getItem("sixshop.admin") || "";
  if (token) return { Authorization: `Bearer ${token}` };
  const csrf = document.cookie.split("; ").find((c) => c.startsWith("sixshop_csrf="))?.slice(13);
  return method !== "GET" && csrf ? { "x-csrf-token": csrf } : {};
}

async function api(path, { method = "GET", body, base = "/api/admin" } = {}) {
  const r = await fetch(`${base}${path}`, {
    method, headers: body === undefined ? headers(method) : { ...headers(method), "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!r.ok) {
    let body = {};
    try { body = await r.json(); } catch (_) { /* not JSON */ }
    const err = new Error(`${body.code || r.status}: ${body.message || "request failed"}`);
    err.detail = body.detail || {};
    err.status = r.status;
    throw err;
  }
  return r.json();
}

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "muted";
}

const el = (tag, text, cls) => {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
};
const fmt = (v, digits = 0) => (v === null || v === undefined ? "–" : Number(v).toLocaleString(undefined,
  { maximumFractionDigits: digits, minimumFractionDigits: 0 }));
const pct = (v) => (v === null || v === undefined ? "–" : `${(v * 100).toFixed(1)}%`);
const isoDay = (d) => d.toISOString().slice(0, 10);

// -- charts: bars for counts, lines for rates and latencies; one or more series over the days -------

// 1, 2 or 5 times a power of ten, at least v: axis ticks at 0, half and the top read as round numbers
function niceCeiling(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  return [1, 2, 5, 10].map((m) => m * p).find((c) => c >= v);
}

function chart(svg, labels, series, { kind = "bar", max = null, digits = 0 } = {}) {
  svg.innerHTML = "";
  const W = svg.clientWidth || 320, H = svg.clientHeight || 150, pad = { l: 44, r: 8, t: 10, b: 22 };
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const values = series.flatMap((s) => s.values.filter((v) => v !== null && v !== undefined));
  const top = max ?? niceCeiling(Math.max(...values, 0));
  digits = Math.max(digits, top < 2 ? 2 : top < 20 ? 1 : 0);
  const x0 = pad.l, x1 = W - pad.r, y0 = H - pad.b, y1 = pad.t;
  const y = (v) => y0 - (v / top) * (y0 - y1);
  const add = (name, attrs, text) => {
    const n = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (text !== undefined) n.textContent = text;
    svg.appendChild(n);
    return n;
  };
  for (const f of [0, 0.5, 1]) {
    add("line", { x1: x0, x2: x1, y1: y(top * f), y2: y(top * f), stroke: "#e4e7ec" });
    add("text", { x: x0 - 4, y: y(top * f) + 4, "text-anchor": "end", "font-size": 10, fill: "#667085" },
        fmt(top * f, digits));
  }
  const n = Math.max(labels.length, 1), slot = (x1 - x0) / n;
  labels.forEach((label, i) => {
    if (n <= 10 || i % Math.ceil(n / 8) === 0) {
      add("text", { x: x0 + slot * (i + 0.5), y: H - 6, "text-anchor": "middle", "font-size": 10, fill: "#667085" },
          label.slice(5));
    }
  });
  series.forEach((s, si) => {
    if (kind === "bar") {
      const w = Math.max(2, (slot * 0.7) / series.length);
      s.values.forEach((v, i) => {
        if (v === null || v === undefined) return;
        const r = add("rect", { x: x0 + slot * i + slot * 0.15 + w * si, y: y(v), width: w,
                                height: Math.max(0, y0 - y(v)), fill: s.color, "data-value": v });
        const tip = document.createElementNS(SVG, "title");
        tip.textContent = `${labels[i]} ${s.name}: ${fmt(v, digits)}`;
        r.appendChild(tip);
      });
    } else {
      const pts = s.values.map((v, i) => (v === null || v === undefined ? null
        : `${x0 + slot * (i + 0.5)},${y(v)}`)).filter(Boolean);
      if (pts.length) add("polyline", { points: pts.join(" "), fill: "none", stroke: s.color, "stroke-width": 2 });
      s.values.forEach((v, i) => {
        if (v !== null && v !== undefined) {
          add("circle", { cx: x0 + slot * (i + 0.5), cy: y(v), r: 3, fill: s.color, "data-value": v });
        }
      });
    }
  });
  svg.setAttribute("aria-label", series.map((s) => `${s.name}: ${s.values.map((v) => fmt(v, digits)).join(", ")}`)
    .join("; "));
}

// -- statistics -----------------------------------------------------------------------------------

async function loadStats() {
  const store = $("store").value;
  if (!store) return;
  const from = $("from").value, to = $("to").value;
  const q = new URLSearchParams({ store_id: store });
  if (from) q.set("from", `${from}T00:00:00Z`);
  if (to) q.set("to", `${to}T23:59:59Z`);
  const s = await api(`/stats?${q}`);
  $("range").textContent = `(${s.tz})`;
  const figures = [
    ["turns", fmt(s.turn_count)], ["sessions", fmt(s.session_count)],
    ["tokens in / out", `${fmt(s.input_tokens)} / ${fmt(s.output_tokens)}`], ["cost", `$${fmt(s.cost_usd, 4)}`],
    ["latency p50", `${fmt(s.p50_latency_ms)} ms`], ["latency p95", `${fmt(s.p95_latency_ms)} ms`],
    ["error rate", pct(s.error_rate)],
    ["feedback", s.feedback_count ? `${fmt(s.avg_feedback_score, 2)} (${s.feedback_count})` : "–"],
    ["handoffs", fmt(s.handoff_count)],
    ["first reply p50 / p95", s.p50_first_reply_s === null ? "–"
      : `${fmt(s.p50_first_reply_s)} / ${fmt(s.p95_first_reply_s)} s`],
    ["operator messages", fmt(s.operator_message_count)],
  ];
  $("figures").replaceChildren(...figures.map(([k, v]) => {
    const box = el("div", null, "figure");
    box.dataset.figure = k;
    box.append(el("span", k, "muted"), el("b", v));
    return box;
  }));
  const days = s.daily.map((d) => d.date);
  const col = (k) => s.daily.map((d) => d[k]);
  chart($("chart-turns"), days, [{ name: "turns", values: col("turn_count"), color: "#2f6fed" }]);
  chart($("chart-tokens"), days, [{ name: "input", values: col("input_tokens"), color: "#7a5af8" },
                                  { name: "output", values: col("output_tokens"), color: "#12b76a" }]);
  chart($("chart-latency"), days, [{ name: "p50", values: col("p50_latency_ms"), color: "#2f6fed" },
                                   { name: "p95", values: col("p95_latency_ms"), color: "#f79009" }],
        { kind: "line" });
  chart($("chart-errors"), days, [{ name: "error rate", values: col("error_rate"), color: "#d92d20" }],
        { kind: "line", max: niceCeiling(Math.max(0.05, ...col("error_rate"))), digits: 2 });
  chart($("chart-feedback"), days, [{ name: "feedback", values: col("avg_feedback_score"), color: "#12b76a" }],
        { kind: "line", max: 1, digits: 1 });
  chart($("chart-cost"), days, [{ name: "cost", values: col("cost_usd"), color: "#667085" }], { digits: 4 });
  $("variants").tBodies[0].replaceChildren(...s.by_prompt_variant.map((v) => {
    const tr = el("tr");
    tr.append(el("td", v.prompt_variant), el("td", fmt(v.turn_count)), el("td", fmt(v.p50_latency_ms)),
              el("td", fmt(v.p95_latency_ms)), el("td", pct(v.error_rate)),
              el("td", v.feedback_count ? fmt(v.avg_feedback_score, 2) : "–"), el("td", `$${fmt(v.cost_usd, 4)}`));
    return tr;
  }));
}

// -- sessions and transcripts ---------------------------------------------------------------------

async function loadSessions() {
  const q = new URLSearchParams({ store_id: $("store").value, limit: "50" });
  if ($("q").value.trim()) q.set("q", $("q").value.trim());
  const page = await api(`/sessions?${q}`);
  $("sessions").tBodies[0].replaceChildren(...page.items.map((s) => {
    const tr = el("tr", null, "pick");
    tr.dataset.sessionId = s.session_id;
    tr.append(el("td", new Date(s.last_activity_at).toLocaleString()), el("td", s.user_id || "–"),
              el("td", s.message_count), el("td", s.first_message || ""));
    tr.addEventListener("click", () => { location.hash = `store=${encodeURIComponent($("store").value)}&session=${s.session_id}`; });
    return tr;
  }));
}

async function loadTranscript(id) {
  document.querySelectorAll("#sessions tr.pick").forEach((tr) => tr.classList.toggle("active",
    tr.dataset.sessionId === id));
  const t = await api(`/sessions/${id}/transcript`);
  const box = $("turns");
  box.className = "";
  const head = el("p", `${t.session.session_id} · store ${t.session.store_id} · user ${t.session.user_id || "–"} · `
    + `${t.session.message_count} messages · ${t.session.status}`, "muted");
  current = t.session;
  $("reply-form").hidden = t.session.status !== "handoff";
  box.replaceChildren(head, ...t.messages.map((m) => {
    const turn = el("div", null, `turn ${m.role}`);
    turn.dataset.messageId = m.message_id;
    const who = m.role === "operator" ? `operator ${m.author || ""}` : m.role;
    turn.append(el("div", `${who} · ${new Date(m.created_at).toLocaleString()} · ${m.status}`, "who"),
                el("div", m.content, "content"));
    const meta = el("div", null, "meta");
    if (m.role === "assistant") {
      meta.append(el("span", `model ${m.model || "–"}`), el("span", `variant ${m.prompt_variant || "–"}`),
                  el("span", `tokens ${m.input_tokens} in / ${m.output_tokens} out`),
                  el("span", `first token ${fmt(m.first_token_ms)} ms`), el("span", `total ${fmt(m.latency_ms)} ms`));
      if (m.error_code) meta.append(el("span", `error ${m.error_code}`, "error"));
      meta.append(el("span", m.feedback_score === null ? "no feedback"
        : `feedback ${m.feedback_score >= 0.5 ? "▲ up" : "▼ down"} ${fmt(m.feedback_score, 2)}${m.feedback_comment ? ` “${m.feedback_comment}”` : ""}`,
        "feedback"));
      if (m.trace_url) {
        const a = el("a", "LangSmith trace");
        a.href = m.trace_url; a.target = "_blank"; a.rel = "noopener noreferrer";
        meta.append(a);
      } else if (!t.tracing) {
        meta.append(el("span", "tracing off"));
      }
      for (const s of m.sources || []) {
        let url = null;
        try { url = ["http:", "https:"].includes(new URL(s.url).protocol) ? s.url : null; } catch (_) { /* none */ }
        const a = el(url ? "a" : "span", `source: ${s.title} (${fmt(s.score, 3)})`);
        if (url) { a.href = url; a.target = "_blank"; a.rel = "noopener noreferrer"; }
        meta.append(a);
      }
    }
    turn.append(meta);
    return turn;
  }));
}

// -- people behind the assistant: who waits, a reply, the release ----------------------------------

let current = null;  // the session whose transcript is open

const waited = (s) => (s < 90 ? `${Math.round(s)} s` : s < 5400 ? `${Math.round(s / 60)} min` : `${(s / 3600).toFixed(1)} h`);

async function loadHandoffs() {
  const page = await api(`/handoffs?store_id=${encodeURIComponent($("store").value)}`);
  $("handoffs").tBodies[0].replaceChildren(...page.items.map((h) => {
    const tr = el("tr", null, "pick");
    tr.dataset.sessionId = h.session_id;
    tr.append(el("td", waited(h.waiting_seconds)), el("td", h.user_id || "–"),
              el("td", h.first_reply_at ? `${h.reason} · answered` : h.reason), el("td", h.last_shopper_message || ""));
    tr.addEventListener("click", () => { location.hash = `store=${encodeURIComponent($("store").value)}&session=${h.session_id}`; });
    return tr;
  }));
}

$("reply-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const content = $("reply").value.trim();
  if (!content || !current) return;
  try {
    const name = $("operator-name").value.trim();
    await api(`/sessions/${current.session_id}/reply`, { method: "POST",
                                                         body: name ? { content, operator: name } : { content } });
    $("reply").value = "";
    await Promise.all([loadTranscript(current.session_id), loadHandoffs()]);
    status("reply sent");
  } catch (e) { status(e.message, true); }
});
$("release").addEventListener("click", async () => {
  if (!current) return;
  try {
    await api(`/sessions/${current.session_id}/release`, { method: "POST" });
    await Promise.all([loadTranscript(current.session_id), loadHandoffs()]);
    status("released to the assistant");
  } catch (e) { status(e.message, true); }
});

// -- the store's settings, their change log, the webhook log -----------------------------------------

const DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const PLAIN = ["display_name", "greeting", "language", "model", "instructions", "webhook_url"];
$("hours-days").replaceChildren(...DAYS.map((d) => {
  const label = el("label", null, "day");
  const box = document.createElement("input");
  box.type = "checkbox"; box.name = `day_${d}`;
  label.append(box, ` ${d}`);
  return label;
}));

let loaded = {};  // the settings as read: a PUT sends only what changed

async function loadSettings() {
  const store = encodeURIComponent($("store").value);
  const [s, changes, hooks] = await Promise.all([api(`/stores/${store}/settings`), api(`/stores/${store}/settings/changes`),
                                                 api(`/stores/${store}/webhooks`)]);
  loaded = s;
  const f = $("settings-form").elements;
  for (const k of PLAIN) f[k].value = s[k] ?? "";
  f.retrieval_k.value = s.retrieval_k ?? "";
  f.prompt_variants.value = s.prompt_variants ? JSON.stringify(s.prompt_variants) : "";
  f.webhook_secret.value = "";
  f.webhook_secret.placeholder = s.webhook_secret_set ? "set (unchanged)" : "not set";
  const h = s.handoff_hours || {};
  f.hours_timezone.value = h.timezone || ""; f.hours_from.value = h.from || ""; f.hours_to.value = h.to || "";
  for (const d of DAYS) f[`day_${d}`].checked = (h.days || []).includes(d);
  const show = (v) => (v === null || v === undefined ? "–" : typeof v === "string" ? v : JSON.stringify(v));
  $("changes").tBodies[0].replaceChildren(...changes.items.map((c) => {
    const tr = el("tr");
    tr.append(el("td", new Date(c.changed_at).toLocaleString()), el("td", c.changed_by || "–"), el("td", c.field),
              el("td", `${show(c.old_value)} → ${show(c.new_value)}`));
    return tr;
  }));
  $("webhooks").tBodies[0].replaceChildren(...hooks.items.map((d) => {
    const tr = el("tr");
    tr.dataset.deliveryId = d.delivery_id;
    tr.append(el("td", new Date(d.created_at).toLocaleString()), el("td", d.event), el("td", d.status),
              el("td", d.attempt_log.map((a) => a.status_code || a.error).join(", ") || "–"));
    return tr;
  }));
}

function settingsPatch() {
  const f = $("settings-form").elements;
  const patch = {};
  for (const k of PLAIN) {
    const v = f[k].value.trim() || null;
    if (v !== (loaded[k] ?? null)) patch[k] = v;
  }
  const k = f.retrieval_k.value ? Number(f.retrieval_k.value) : null;
  if (k !== (loaded.retrieval_k ?? null)) patch.retrieval_k = k;
  const variants = f.prompt_variants.value.trim();
  if (variants !== (loaded.prompt_variants ? JSON.stringify(loaded.prompt_variants) : "")) {
    try { patch.prompt_variants = variants ? JSON.parse(variants) : null; }
    catch (_) { patch.prompt_variants = variants; }  // the service says what is wrong with it
  }
  const days = DAYS.filter((d) => f[`day_${d}`].checked);
  const hours = f.hours_timezone.value.trim() || days.length || f.hours_from.value || f.hours_to.value
    ? { timezone: f.hours_timezone.value.trim(), days, from: f.hours_from.value, to: f.hours_to.value } : null;
  if (JSON.stringify(hours) !== JSON.stringify(loaded.handoff_hours ?? null)) patch.handoff_hours = hours;
  if (f.webhook_secret.value) patch.webhook_secret = f.webhook_secret.value;
  return patch;
}

$("settings-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const patch = settingsPatch();
  $("settings-status").className = "muted";
  if (!Object.keys(patch).length) { $("settings-status").textContent = "nothing changed"; return; }
  try {
    await api(`/stores/${encodeURIComponent($("store").value)}/settings`, { method: "PUT", body: patch });
    $("settings-status").textContent = `saved: ${Object.keys(patch).join(", ")}`;
    await loadSettings();
  } catch (e) {
    $("settings-status").textContent = e.message;
    $("settings-status").className = "error";
  }
});

// -- wiring ---------------------------------------------------------------------------------------

// Signed in (or holding a token)? Else the sign-in form, and nothing else is asked for.
async function signedIn() {
  try {
    const me = await api("/me", { base: "/admin" });
    $("signin").hidden = true;
    $("who").textContent = me.signed_in ? `${me.name} · ${me.stores.join(", ")}` : me.name;
    $("signout").hidden = !me.signed_in;
    return true;
  } catch (e) {
    if (e.status !== 401) throw e;
    $("signin").hidden = false;
    $("who").textContent = "";
    $("signout").hidden = true;
    status("Sign in to see your stores");
    return false;
  }
}

$("signin").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try {
    await api("/login", { method: "POST", base: "/admin",
                          body: { email: $("signin-email").value, password: $("signin-password").value } });
    $("signin-password").value = "";
    refresh();
  } catch (e) { status(e.message, true); }
});
$("signout").addEventListener("click", async () => {
  try { await api("/logout", { method: "POST", base: "/admin" }); } catch (_) { /* ended already */ }
  refresh();
});

async function refresh() {
  status("loading…");
  try {
    if (!(await signedIn())) return;
    const stores = await api("/stores");
    const wanted = hashParams().get("store") || $("store").value || stores.items[0]?.store_id || "";
    $("store").replaceChildren(...stores.items.map((s) => {
      const o = el("option", `${s.store_id} (${s.session_count})`);
      o.value = s.store_id;
      return o;
    }));
    if (wanted) $("store").value = wanted;
    await Promise.all([loadStats(), loadSessions(), loadHandoffs(), loadSettings()]);
    const session = hashParams().get("session");
    if (session) await loadTranscript(session);
    status(`updated ${new Date().toLocaleTimeString()}`);
  } catch (e) { status(e.message, true); }
}

const today = new Date();
$("to").value = isoDay(today);
$("from").value = isoDay(new Date(today.getTime() - 29 * 86400000));
$("token").value = sessionStorage.getItem("sixshop.admin") || "";
$("token").addEventListener("change", (ev) => { sessionStorage.setItem("sixshop.admin", ev.target.value.trim()); refresh(); });
$("refresh").addEventListener("click", refresh);
$("store").addEventListener("change", () => { location.hash = `store=${encodeURIComponent($("store").value)}`; });
$("from").addEventListener("change", () => loadStats().catch((e) => status(e.message, true)));
$("to").addEventListener("change", () => loadStats().catch((e) => status(e.message, true)));
$("search-form").addEventListener("submit", (ev) => { ev.preventDefault(); loadSessions().catch((e) => status(e.message, true)); });
window.addEventListener("hashchange", refresh);
// who waits, and the open transcript while it waits for a person, are looked at again every few seconds
setInterval(() => {
  if (document.hidden || !$("store").value) return;
  loadHandoffs().catch(() => {});
  if (current && current.status === "handoff") loadTranscript(current.session_id).catch(() => {});
}, 3000);
refresh();
