// LangGraph's JS SDK (@langchain/langgraph-sdk, pinned in package.json) against the service, calling what Agent
// Chat UI and useStream call, the way they call it. Run by tests/test_js_clients.py:
//   node tests/js/agent_protocol.mjs <api url> <store key>
// Prints one JSON object of what it saw; exits 1 on the first failed expectation.
import assert from "node:assert/strict";
import { Client } from "@langchain/langgraph-sdk";

const [apiUrl, apiKey] = process.argv.slice(2);
const client = new Client({ apiUrl, apiKey });
const seen = {};

// Agent Chat UI's first call: is the server there (with the key)
const info = await fetch(`${apiUrl}/info`, { headers: { "X-Api-Key": apiKey } });
assert.equal(info.status, 200);

// assistants.search, as Agent Chat UI resolves its graph
const assistants = await client.assistants.search({ graphId: "agent", limit: 10 });
assert.equal(assistants[0].graph_id, "agent");

// useStream: a thread, then runs.stream with the modes it sends (values, updates, messages-tuple; custom because
// Agent Chat UI gives onCustomEvent), resumable and going on when the client leaves (reconnectOnMount)
const thread = await client.threads.create({ metadata: { graph_id: "agent" } });
let runId = null;
const events = [];
let text = "";
let custom = null;
let stopAfter = 5;
const first = client.runs.stream(thread.thread_id, "agent", {
  input: { messages: [{ type: "human", content: "배송비는 얼마인가요?" }] },
  streamMode: ["values", "updates", "messages-tuple", "custom"],
  streamResumable: true,
  onDisconnect: "continue",
  onRunCreated: (meta) => { runId = meta.run_id; },
});
let lastEventId = null;
for await (const part of first) {
  events.push(part.event);
  if (part.id) lastEventId = part.id;
  if (part.event === "custom") custom = part.data;
  if (part.event === "messages" && part.data[0].content) {
    text += part.data[0].content;
    if (--stopAfter === 0) break;  // the page is reloaded mid-answer
  }
  if (part.event === "error") throw new Error(JSON.stringify(part.data));
}
assert.ok(runId, "the run id comes with the stream (Content-Location)");
assert.equal(events[0], "metadata");
assert.ok(events.includes("values") && events.includes("updates"), events.join(","));
assert.equal(custom?.type, "sources");
assert.ok(custom.sources.length > 0);
seen.first_part = text;

// after the reload: joinStream from the last event seen, to the end
for await (const part of client.runs.joinStream(thread.thread_id, runId, {
  lastEventId, streamMode: ["values", "updates", "messages-tuple", "custom"],
})) {
  if (part.event === "messages" && part.data[0].content) text += part.data[0].content;
  if (part.event === "error") throw new Error(JSON.stringify(part.data));
}
const state = await client.threads.getState(thread.thread_id);
const answer = state.values.messages.at(-1);
assert.equal(answer.type, "ai");
assert.equal(text, answer.content, "the two parts of the stream are the stored answer");
seen.answer = answer.content;

// useStream's history: getHistory(limit 1000); its head's checkpoint is sent with the next message
const history = await client.threads.getHistory(thread.thread_id, { limit: 1000 });
assert.ok(history.length >= 1 && history[0].values.messages.length === 2);
let second = "";
for await (const part of client.runs.stream(thread.thread_id, "agent", {
  input: { messages: [{ type: "human", content: "그럼 제주도는요?" }] },
  streamMode: ["values", "messages-tuple", "custom"],
  checkpoint: history[0].checkpoint,
})) {
  if (part.event === "messages" && part.data[0].content) second += part.data[0].content;
  if (part.event === "error") throw new Error(JSON.stringify(part.data));
}
assert.ok(second.length > 0);

// Agent Chat UI's sidebar: threads.search by the graph id in metadata
const found = await client.threads.search({ metadata: { graph_id: "agent" }, limit: 100 });
assert.ok(found.some((t) => t.thread_id === thread.thread_id));

// modes useStream adds only for callbacks Agent Chat UI does not give: refused by name
for (const mode of ["tasks", "checkpoints", "debug", "events"]) {
  await assert.rejects(async () => {
    for await (const part of client.runs.stream(thread.thread_id, "agent", {
      input: { messages: [{ type: "human", content: "hi" }] }, streamMode: ["values", mode],
    })) { void part; }
  }, (err) => String(err?.message ?? err).includes(mode));
}
seen.thread_id = thread.thread_id;
seen.events = [...new Set(events)];
console.log(JSON.stringify(seen));
