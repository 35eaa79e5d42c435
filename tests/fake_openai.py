"""A small OpenAI-compatible server on 127.0.0.1 for tests: POST /v1/chat/completions, /v1/embeddings.

It speaks the real wire format the official client parses: `chat.completion.chunk` objects as SSE
`data:` lines, `"usage": null` on every content chunk, then (with stream_options.include_usage)
one chunk with `"choices": []` and the request's usage, then `data: [DONE]`. Non-streaming
requests get a `chat.completion` object with usage.

Behaviour is chosen by markers in the last user message, so one server serves every test:
  [[fail]]   two content chunks, then the connection is cut (a model failing mid-stream)
  [[truncate]] two content chunks, then the body ends cleanly with no finish_reason nor [DONE]
  [[error_event]] two content chunks, then an `error` object as a `data:` line (how the API reports a failure
             after the stream began), then the body ends
  [[slow]]   60 chunks, 50 ms apart (for 409 and disconnect tests)
  [[http500]] an HTTP 500 error body before any stream starts
  [[stall]]  two content chunks, then nothing for 5 s before the rest (a model hanging mid-stream)
  [[human]]  when the request offers a `request_human` tool: a streamed call of it, no content (a model
             recognising a request for a person that the service's rule does not)
Every request body is recorded in `requests` (the tests read what the model was shown).

Embeddings (`embedding.create` wire format: float or base64 float32 data, usage) come from
`embed_text`: a hashed bag of words, Latin character trigrams and Hangul bigrams, L2-normalised.
It is lexical, not semantic: a deterministic stand-in that lets pgvector and hybrid retrieval run
end to end offline, not a claim about a real model's quality. An input containing [[embed500]]
makes the whole request fail with HTTP 500.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any

from tests.local_http import JsonHandler, LocalServer

MODEL_REPORTED = "gpt-4o-mini-2024-07-18"
DEFAULT_EMBEDDING_DIMENSIONS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072,
                                "text-embedding-ada-002": 1536}
_WORD = re.compile(r"[a-z0-9]+|[\uac00-\ud7a3]+")


def _features(text: str) -> dict[str, float]:
    feats: dict[str, float] = {}
    for word in _WORD.findall(text.lower()):
        if "\uac00" <= word[0] <= "\ud7a3":
            grams = [word] if len(word) == 1 else [word[i:i + 2] for i in range(len(word) - 1)]
            for g in grams:
                feats[f"h:{g}"] = feats.get(f"h:{g}", 0.0) + 1.0
            continue
        if len(word) < 2:
            continue
        feats[f"w:{word}"] = feats.get(f"w:{word}", 0.0) + 1.0
        padded = f"<{word}>"
        for i in range(len(padded) - 2):
            key = f"c:{padded[i:i + 3]}"
            feats[key] = feats.get(key, 0.0) + 0.4
    return feats


def embed_text(text: str, dimensions: int) -> list[float]:
    vec = [0.0] * dimensions
    for feat, count in _features(text).items():
        digest = hashlib.blake2b(feat.encode(), digest_size=8).digest()
        slot = int.from_bytes(digest[:4], "little") % dimensions
        sign = 1.0 if digest[4] & 1 else -1.0
        vec[slot] += sign * (1.0 + math.log(count)) if count >= 1 else sign * count
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]


CONDENSE_MARK = "You rewrite a shopper's last message"  # graph/prompts.py CONDENSE_PROMPT


def answer_for(messages: list[dict[str, Any]]) -> list[str]:
    """Deterministic answer pieces: how many user turns the model saw, and the last question. Asked to condense a
    follow-up (the service's CONDENSE_PROMPT), it answers the first shopper line of the transcript followed by
    the last message, as a model carrying the topic over would."""
    users = [m for m in messages if m.get("role") == "user"]
    last = str(users[-1]["content"]) if users else ""
    if any(m.get("role") == "system" and str(m.get("content", "")).startswith(CONDENSE_MARK) for m in messages):
        shopper = [line[len("Shopper: "):] for line in last.splitlines() if line.startswith("Shopper: ")]
        follow_up = last.rsplit("Last message: ", 1)[-1]
        return [f"{shopper[-1] if shopper else ''} ", follow_up]
    if "[[slow]]" in last:
        return [f"tok{i} " for i in range(60)]
    said = ["I ", "saw ", f"{len(users)} ", "user ", "messages; ", "last: ", last.replace("[[fail]]", "").strip()]
    # a person from the store wrote in this conversation (the service sends them as assistant messages named
    # "operator"): the answer says what it was given, so a test can see it on the page
    operators = [str(m.get("content")) for m in messages
                 if m.get("role") == "assistant" and m.get("name") == "operator"]
    return said + ([f"; the operator said: {operators[-1]}"] if operators else [])


def structured_answer(schema: dict[str, Any]) -> dict[str, Any]:
    """A value for each property of a JSON schema: what a model constrained by `response_format` returns."""
    values = {"string": "judged by the local fake", "boolean": True, "number": 1.0, "integer": 1}
    return {name: values.get(str(prop.get("type")), None) for name, prop in schema.get("properties", {}).items()}


def usage_for(messages: list[dict[str, Any]], pieces: list[str]) -> dict[str, Any]:
    # not a tokenizer: just distinct, checkable numbers the test compares with what was stored
    prompt = sum(len(str(m.get("content", ""))) for m in messages) // 3 + 7
    completion = len(pieces) * 2 + 1
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }


class _Handler(JsonHandler):
    server: FakeOpenAIServer

    def _embeddings(self, body: dict[str, Any]) -> None:
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
        if not texts or not all(isinstance(t, str) for t in texts):
            self._json(400, {"error": {"message": "input must be a string or a list of strings",
                                       "type": "invalid_request_error"}})
            return
        if any("[[embed500]]" in t for t in texts):
            self._json(500, {"error": {"message": "embedding backend exploded", "type": "server_error"}})
            return
        model = str(body.get("model"))
        dims = int(body.get("dimensions") or DEFAULT_EMBEDDING_DIMENSIONS.get(model, 1536))
        data = []
        for i, text in enumerate(texts):
            vec = embed_text(text, dims)
            encoded: Any = vec
            if body.get("encoding_format") == "base64":
                encoded = base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode()
            data.append({"object": "embedding", "index": i, "embedding": encoded})
        tokens = sum(len(t.split()) + 1 for t in texts)
        self.server.embedding_inputs.extend(texts)
        self._json(200, {"object": "list", "data": data, "model": model,
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    def do_POST(self) -> None:
        path = self.path.rstrip("/")
        if path not in ("/v1/chat/completions", "/chat/completions", "/v1/embeddings", "/embeddings"):
            self._json(404, {"error": {"message": "not found", "type": "invalid_request_error"}})
            return
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        self.server.requests.append({"body": body, "headers": dict(self.headers), "path": path,
                                     "peer": self.client_address[1]})  # the connection it came on
        if path.endswith("/embeddings"):
            self._embeddings(body)
            return
        messages = body.get("messages", [])
        last_user = next((str(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
        if "[[http500]]" in last_user:
            self._json(500, {"error": {"message": "upstream exploded", "type": "server_error"}})
            return
        pace = self.server.pace
        pieces = [f"tok{i} " for i in range(pace.tokens)] if pace else answer_for(messages)
        schema = ((body.get("response_format") or {}).get("json_schema") or {}).get("schema")
        if schema:  # structured output (an LLM-as-judge): a JSON object of the schema's shape, as the API returns
            pieces = [json.dumps(structured_answer(schema))]
        usage = usage_for(messages, pieces)
        self.server.usages.append(usage)
        cid = f"chatcmpl-{len(self.server.requests)}"
        created = int(time.time())
        if not body.get("stream"):
            self._json(200, {
                "id": cid, "object": "chat.completion", "created": created, "model": MODEL_REPORTED,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(pieces)},
                             "finish_reason": "stop", "logprobs": None}],
                "usage": usage,
            })
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")  # as the real API streams
        self.end_headers()

        def send(data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        def chunk(delta: dict[str, Any], finish: str | None) -> None:
            obj = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": MODEL_REPORTED,
                   "system_fingerprint": "fp_test", "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                                 "finish_reason": finish}], "usage": None}
            send(f"data: {json.dumps(obj)}\n\n".encode())

        start = time.monotonic()
        offered = {str((t.get("function") or {}).get("name")) for t in body.get("tools") or []}
        try:
            if "[[human]]" in last_user and "request_human" in offered:
                # a tool call streams as the API does: its id and name first, the arguments in pieces, then
                # finish_reason "tool_calls"
                chunk({"role": "assistant", "content": None, "tool_calls": [{
                    "index": 0, "id": f"call_{len(self.server.requests)}", "type": "function",
                    "function": {"name": "request_human", "arguments": ""}}]}, None)
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}, None)
                chunk({}, "tool_calls")
                if (body.get("stream_options") or {}).get("include_usage"):
                    final = {"id": cid, "object": "chat.completion.chunk", "created": created,
                             "model": MODEL_REPORTED, "choices": [], "usage": usage}
                    send(f"data: {json.dumps(final)}\n\n".encode())
                send(b"data: [DONE]\n\n")
                send(b"")
                return
            chunk({"role": "assistant", "content": ""}, None)
            for i, piece in enumerate(pieces):
                if "[[fail]]" in last_user and i == 2:
                    self.close_connection = True
                    self.connection.shutdown(2)  # cut mid-body: no closing zero-length chunk, no [DONE]
                    return
                if "[[stall]]" in last_user and i == 2:
                    time.sleep(5)
                if "[[error_event]]" in last_user and i == 2:
                    send(b'data: {"error": {"message": "The server had an error while processing your request.", '
                         b'"type": "server_error", "param": null, "code": null}}\n\n')
                    send(b"")
                    return
                if "[[truncate]]" in last_user and i == 2:
                    send(b"")  # a clean end of body, but no finish_reason, usage or [DONE]
                    return
                if "[[slow]]" in last_user:
                    time.sleep(0.05)
                if pace:  # a fixed first-token delay and token rate, on a schedule from the request (benchmarks)
                    due = start + pace.first_token_s + i * pace.token_interval_s
                    time.sleep(max(0.0, due - time.monotonic()))
                chunk({"content": piece}, None)
            chunk({}, "stop")
            if (body.get("stream_options") or {}).get("include_usage"):
                final = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": MODEL_REPORTED,
                         "system_fingerprint": "fp_test", "choices": [], "usage": usage}
                send(f"data: {json.dumps(final)}\n\n".encode())
            send(b"data: [DONE]\n\n")
            send(b"")
        except (BrokenPipeError, ConnectionResetError):
            self.server.client_disconnects += 1
            self.close_connection = True
        # otherwise the connection stays open for the client's next request, as the real API's does


@dataclass(frozen=True)
class Pace:
    """Every answer: `tokens` chunks, the first after `first_token_s`, then one per `token_interval_s`."""

    first_token_s: float
    token_interval_s: float
    tokens: int

    @property
    def streaming_s(self) -> float:
        return self.first_token_s + self.token_interval_s * (self.tokens - 1)


class FakeOpenAIServer(LocalServer):
    def __init__(self, pace: Pace | None = None) -> None:
        super().__init__(_Handler)
        self.requests: list[dict[str, Any]] = []
        self.usages: list[dict[str, Any]] = []
        self.embedding_inputs: list[str] = []
        self.pace = pace
        self.client_disconnects = 0

    @property
    def chat_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"].endswith("/chat/completions")]

    @property
    def answer_requests(self) -> list[dict[str, Any]]:
        """The chat requests that answer a shopper (not the short ones rewriting a follow-up for the search)."""
        return [r for r in self.chat_requests if not str(r["body"]["messages"][0].get("content", "")).startswith(
            CONDENSE_MARK)]

    @property
    def base_url(self) -> str:
        return f"{self.origin}/v1"



if __name__ == "__main__":  # run it by hand: python -m tests.fake_openai [first_token_ms token_ms tokens]
    import sys

    args = [float(a) for a in sys.argv[1:4]]
    with FakeOpenAIServer(Pace(args[0] / 1000, args[1] / 1000, int(args[2])) if len(args) == 3 else None) as srv:
        print(srv.base_url, flush=True)
        threading.Event().wait()
